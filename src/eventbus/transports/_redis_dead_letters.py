"""The dead-letter streams of the Redis transport: listed, replayed, purged."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ._protocol import StoredDeadLetter
from ._redis_entries import entry_message
from ._redis_scripts import DL_ATTEMPT, DL_NOTES, DL_ORIGIN, Keys

__all__ = ["DeadLetterStore"]

Groups = Callable[[str | None], Awaitable[list[tuple[str, str]]]]


class DeadLetterStore:
    """The dead letters of the groups that ``groups`` lists, as (topic, group) pairs.

    A dead letter's id is ``<entry id>@<topic>@<group>``: unique across groups.
    """

    def __init__(self, client: Any, prefix: str, replay_script: Any, groups: Groups) -> None:
        self._client = client
        self._prefix = prefix
        self._replay_script = replay_script
        self._groups = groups

    async def listed(self, group: str | None) -> list[StoredDeadLetter]:
        """Every dead letter of ``group`` (all groups when None), oldest first."""
        out: list[StoredDeadLetter] = []
        for topic, g in await self._groups(group):
            key = Keys.of(self._prefix, topic, g).dead
            for entry_id, fields in await self._client.xrange(key):
                out.append(_stored(topic, g, entry_id.decode(), fields))
        return sorted(out, key=_entry_order)

    async def replay(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Move the chosen dead letters to their group's redeliver stream as attempt 1."""
        count = 0
        for dead in await self._chosen(group, ids):
            keys = Keys.of(self._prefix, dead.topic, dead.group)
            entry = dead.id.split("@")[0]
            count += int(await self._replay_script(keys=[keys.dead, keys.redeliver], args=[entry]))
        return count

    async def purge(self, group: str | None, ids: Sequence[str] | None) -> int:
        """XDEL the chosen dead letters."""
        count = 0
        for dead in await self._chosen(group, ids):
            key = Keys.of(self._prefix, dead.topic, dead.group).dead
            count += int(await self._client.xdel(key, dead.id.split("@")[0]))
        return count

    async def _chosen(self, group: str | None, ids: Sequence[str] | None) -> list[StoredDeadLetter]:
        wanted = None if ids is None else set(ids)
        return [d for d in await self.listed(group) if wanted is None or d.id in wanted]


def _entry_order(dead: StoredDeadLetter) -> tuple[int, int]:
    """Oldest first: stream ids ``ms-seq`` compared as numbers."""
    ms, _, seq = dead.id.split("@")[0].partition("-")
    return int(ms), int(seq or 0)


def _stored(
    topic: str, group: str, entry_id: str, fields: Mapping[bytes, bytes]
) -> StoredDeadLetter:
    message, meta = entry_message(fields)
    try:
        notes = json.loads(meta.get(DL_NOTES, "{}"))
    except ValueError:
        notes = {}
    attempt = meta.get(DL_ATTEMPT, "1")
    return StoredDeadLetter(
        id=f"{entry_id}@{topic}@{group}",
        message_id=meta.get(DL_ORIGIN, entry_id),
        group=group,
        topic=topic,
        message=message,
        attempt=int(attempt) if attempt.isdigit() else 1,
        notes=notes if isinstance(notes, dict) else {},
    )
