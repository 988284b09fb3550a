"""A bus's connection to Redis: publish, subscribe, wait, dead letters, leases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventbus._errors import (
    TransportClosedError,
    TransportError,
)
from eventbus.transports._contract import GroupStats, Message, StoredDeadLetter

from ._dead_letters import DeadLetterStreams
from ._groups import GroupAdmin
from ._idle import IdleReaders
from ._retention import Retention
from ._state import RedisState, Settings, logger, wrapped
from ._subscription import RedisSubscription
from ._writer import StreamWriter

__all__ = ["RedisConnection"]

_IDLE_POLL = 0.02  # seconds between looks while waiting for the groups to finish


class RedisConnection:
    """One bus's link to Redis: its own client (connection pool) and consumer name.

    Offers, beside the required ``Connection``: ``BatchPublishing`` (``publish_many``),
    ``DeadLetterStore``, ``IdleWaiting`` (``wait_idle``), ``Inspection`` (``inspect``),
    ``GroupListing`` (``groups``)
    and ``Serving`` (``serve`` keeps the leases of held entries and trims the streams
    read).
    """

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.state = RedisState(settings, consumer)
        self._writer = StreamWriter(self.state)
        self._dead = DeadLetterStreams(self.state)
        self._idle_readers = IdleReaders(self.state)
        self._subs: list[RedisSubscription] = []
        self._closed = False

    # -- publishing ----------------------------------------------------------------

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """XADD the message to the topic's stream; return the entry id (see
        ``StreamWriter.publish`` for the errors)."""
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
        return await self._writer.publish(topic, message, timeout=timeout)

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """XADD every message in one round trip per server (see
        ``StreamWriter.publish_many`` for the errors)."""
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
        return await self._writer.publish_many(items, timeout=timeout)

    # -- subscribing ---------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> RedisSubscription:
        """Create the group (from the stream's start) when missing and join it."""
        if self._closed:
            raise TransportClosedError("subscribe on a closed connection")
        sub = RedisSubscription(self.state, topic, group, self._idle_readers)
        async with wrapped("creating a consumer group"):
            await self.state.join(topic, group)
        self._subs.append(sub)
        return sub

    # -- background work -----------------------------------------------------------

    async def serve(self) -> None:
        """Keep the leases of held entries (XCLAIM them to ourselves every third of the
        claim timeout), list the groups whose listing in ``prefix:groups`` Redis refused,
        and, unless ``retention`` is None, trim the streams read (see ``Retention``); a
        bus without subscriptions trims nothing."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._renew_leases)
            if self.state.settings.retention is not None:
                retention = Retention(self.state, self.state.settings.retention)
                tasks.start_soon(retention.run, self._topics)

    def _topics(self) -> list[str]:
        return [sub.topic for sub in self._subs]

    async def _renew_leases(self) -> None:
        while not self._closed:
            await anyio.sleep(self.state.settings.claim_timeout / 3)
            for sub in list(self._subs):
                try:
                    await self.state.renew(sub.held_entries(), sub.group)
                except (RedisError, OSError) as exc:
                    logger.warning("could not renew the leases of %s: %s", sub.group, exc)
            try:
                await self.state.list_unlisted()
            except (RedisError, OSError) as exc:
                logger.warning("could not list the groups: %s", exc)

    # -- groups (GroupManagement) ---------------------------------------------------

    async def declare_group(self, topic: str, group: str, start: str = "earliest") -> None:
        """Create ``group`` on ``topic`` when missing, at the stream's first entry
        (``"earliest"``, logging how many it will handle) or after its last."""
        await GroupAdmin(self.state).declare(topic, group, start)

    async def delete_group(self, group: str, topic: str | None = None) -> int:
        """Destroy the group with its redeliver stream, retries and dead letters."""
        return await GroupAdmin(self.state).delete(group, topic)

    async def reset_group(self, group: str, to: str, topic: str | None = None) -> int:
        """Drop what the group has not handled, then move it to ``to``."""
        return await GroupAdmin(self.state).reset(group, to, topic)

    # -- waiting and dead letters ----------------------------------------------------

    async def wait_idle(self) -> None:
        """Poll until every known group has no unread, pending or scheduled entry.

        Rides out connection failures (with backoff); other Redis errors raise
        ``TransportError``.
        """
        backoff = self.state.backoff()
        while True:
            try:
                async with wrapped("waiting for the groups to finish"):
                    if await self._idle():
                        return
                backoff.reset()
                await anyio.sleep(_IDLE_POLL)  # Redis has no idle notification: poll
            except TransportError as exc:
                if not isinstance(exc.__cause__, self.state.connection_errors):
                    raise
                await self.state.back_off(backoff, "waiting for the groups to finish")

    async def _idle(self) -> bool:
        """Send every subscription's acks, then look at each group (one script each).
        Not idle while a subscription of this connection still holds an entry: one
        whose entry left the stream and the pending list is being settled from what the
        worker holds, which Redis no longer shows."""
        for sub in self._subs:
            await sub.flush_acks()
            if sub.holding:
                return False
        for topic, group in await self.state.groups():
            keys = self.state.keys(topic, group)
            idle = await self.state.scripts.idle(
                keys=[keys.stream, keys.redeliver, keys.retry], args=[group]
            )
            if not idle:
                return False
        return True

    async def inspect(self) -> list[GroupStats]:
        """Every group listed in ``prefix:groups``, counted by one script each (the acks
        this connection queued are sent first)."""
        async with wrapped("inspecting the groups"):
            for sub in self._subs:
                await sub.flush_acks()
            return [await self._stats(topic, group) for topic, group in await self.state.groups()]

    async def groups(self) -> list[tuple[str, str]]:
        """``(topic, group)`` of every group listed in ``prefix:groups`` (one SMEMBERS)."""
        async with wrapped("listing the groups"):
            return await self.state.groups()

    async def _stats(self, topic: str, group: str) -> GroupStats:
        keys = self.state.keys(topic, group)
        (
            waiting,
            in_flight,
            scheduled,
            dead,
            length,
            consumers,
            oldest,
        ) = await self.state.scripts.stats(
            keys=[keys.stream, keys.redeliver, keys.retry, keys.dead], args=[group]
        )
        age = None if int(oldest) < 0 else int(oldest) / 1000
        counts = (int(waiting), int(in_flight), int(scheduled), int(dead))
        pairs = zip(consumers[::2], consumers[1::2], strict=True)
        idle = tuple((name.decode(), int(ms) / 1000) for name, ms in pairs)
        return GroupStats(topic, group, *counts, int(length), len(idle), age, idle)

    async def dead_letters(self, group: str | None = None) -> list[StoredDeadLetter]:
        """Every dead letter of ``group`` (all groups when None), oldest first."""
        async with wrapped("listing dead letters"):
            return await self._dead.listed(group)

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Move dead letters back to their group's redeliver stream as attempt 1."""
        async with wrapped("replaying dead letters"):
            return await self._dead.replay(group, ids)

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """XDEL the chosen dead letters."""
        async with wrapped("purging dead letters"):
            return await self._dead.purge(group, ids)

    # -- opening and closing -----------------------------------------------------------

    async def check_server(self) -> None:
        """Warn when Redis may evict streams or keeps nothing on disk, and when ``maxlen``
        may drop entries that a group has not read."""
        client = self.state.client
        await client.ping()  # raises when Redis is unreachable or refuses the login
        if self.state.settings.maxlen is not None:
            logger.warning(
                "maxlen=%d caps each stream and may drop entries that a slow group has not "
                "read; retention= trims only entries that every group acknowledged",
                self.state.settings.maxlen,
            )
        try:
            policy, aof, save = [
                _first(await client.config_get(name))
                for name in ("maxmemory-policy", "appendonly", "save")
            ]
        except ResponseError:  # CONFIG not allowed for this user: nothing to check
            return
        _warn_about(policy, aof, save)

    async def aclose(self) -> None:
        """Close the subscriptions (handing back held entries), then the client."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                self._idle_readers.close()
                for sub in self._subs:
                    await _closed_quietly(sub)
            finally:
                self._subs.clear()
                await self.state.aclose()


async def _closed_quietly(sub: RedisSubscription) -> None:
    try:
        await sub.aclose()
    except Exception:  # one subscription's failure must not keep the others open
        logger.exception("closing the Redis subscription of %s failed", sub.group)


def _warn_about(policy: str, aof: str, save: str) -> None:
    """Warn when Redis may evict streams or keeps nothing on disk."""
    if policy and policy != "noeviction":
        logger.warning("Redis maxmemory-policy is %s: it may evict streams; use noeviction", policy)
    if aof != "yes" and not save:
        logger.warning("Redis persists nothing (appendonly no, no save): a restart loses events")


def _first(reply: Mapping[Any, Any]) -> str:
    for value in reply.values():
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""
