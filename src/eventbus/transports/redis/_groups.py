"""Groups apart from subscribing: declared by publishers, deleted and reset by operators."""

from __future__ import annotations

import re

from redis.exceptions import RedisError

from eventbus._options import check_start

from ._scripts import Keys
from ._state import RedisState, logger, unlist_member, wrapped

__all__ = ["GroupAdmin", "Unread"]

_PENDING_BATCH = 1_000


class GroupAdmin:
    """``GroupManagement`` for one Redis connection."""

    def __init__(self, state: RedisState) -> None:
        self._state = state

    async def declare(self, topic: str, group: str, start: str) -> None:
        """Create the group when missing (at the stream's first entry, or after its last)."""
        start = check_start(start)
        async with wrapped(f"declaring group {group} of {topic}"):
            await self._state.join(topic, group, start)

    async def delete(self, group: str, topic: str | None) -> int:
        """Destroy the group on each of its streams, with its redeliver stream, retry
        schedule, dead letters and handled records, and unlist it."""
        found = await self._found(group, topic)
        async with wrapped(f"deleting group {group}"):
            for name in found:
                keys = self._state.keys(name, group)
                await self._destroy(keys.stream, group)
                await self._state.client.delete(keys.redeliver, keys.retry, keys.dead)
                await self._forget_handled(keys)
                await self._state.client.srem(*unlist_member(self._state, name, group))
                logger.warning("deleted group %s of %s", group, name)
        return len(found)

    async def reset(self, group: str, to: str, topic: str | None) -> int:
        """Drop what the group has not handled (pending, redeliveries, retries) and its
        handled records, then move it to the stream's last entry (``"latest"``) or
        before its first."""
        to = check_start(to, "to")
        found = await self._found(group, topic)
        async with wrapped(f"resetting group {group}"):
            for name in found:
                keys = self._state.keys(name, group)
                client = self._state.client
                if await client.exists(keys.stream):
                    await self._ack_pending(keys, group)
                    await client.xgroup_setid(keys.stream, group, "$" if to == "latest" else "0")
                await client.delete(keys.redeliver, keys.retry)
                await client.xgroup_create(keys.redeliver, group, id="0", mkstream=True)
                await self._forget_handled(keys)
                logger.warning("reset group %s of %s to %s", group, name, to)
        return len(found)

    async def _found(self, group: str, topic: str | None) -> list[str]:
        """The topics on which ``group`` is listed (``topic`` only, when given)."""
        async with wrapped(f"listing group {group}"):
            pairs = await self._state.groups(group)
        return [t for t, _ in pairs if topic is None or t == topic]

    async def _destroy(self, key: str, group: str) -> None:
        """XGROUP DESTROY, when the stream still exists."""
        if await self._state.client.exists(key):
            await self._state.client.xgroup_destroy(key, group)

    async def _forget_handled(self, keys: Keys) -> None:
        """UNLINK the group's handled records (SCAN for their prefix)."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", keys.handled) + "*"
        client, found = self._state.client, []
        async for key in client.scan_iter(match=pattern, count=1_000):
            found.append(key)
            if len(found) >= _PENDING_BATCH:
                await client.unlink(*found)
                found = []
        if found:
            await client.unlink(*found)

    async def _ack_pending(self, keys: Keys, group: str) -> None:
        """XACK every entry the group holds pending on its stream."""
        client = self._state.client
        while True:
            rows = await client.xpending_range(keys.stream, group, "-", "+", _PENDING_BATCH)
            if not rows:
                return
            await client.xack(keys.stream, group, *[row["message_id"] for row in rows])


class Unread:
    """Warns once per event name published to a stream that no group reads."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._checked: set[str] = set()

    def unchecked(self, topic: str) -> bool:
        """Whether ``topic`` was not looked at yet (a set lookup: the publish hot path)."""
        return topic not in self._checked

    async def check(self, topic: str) -> None:
        """Look once whether the stream of ``topic`` has a group; warn when it has none.
        A failure to look is ignored: the publish itself succeeded."""
        self._checked.add(topic)
        try:
            groups = await self._state.client.xinfo_groups(self._state.stream(topic))
        except (RedisError, OSError):
            return
        if not groups:
            logger.warning(
                "no group reads %s yet: its events wait in %s for groups created later "
                "(is a worker missing, or the event's name misspelled?)",
                topic,
                self._state.stream(topic),
            )
