"""The dead-letter streams of the Redis transport: listed, replayed, purged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventbus.transports._contract import FailureNotes, StoredDeadLetter

from ._entries import entry_message, read_notes
from ._scripts import DL_ATTEMPT, DL_NOTES, DL_ORIGIN
from ._state import RedisState

__all__ = ["DeadLetterStreams"]


class DeadLetterStreams:
    """The dead letters of every registered group, one stream per group.

    A dead letter's id is ``<entry id>@<topic>@<group>``: unique across groups.
    """

    def __init__(self, state: RedisState) -> None:
        self._state = state

    async def listed(self, group: str | None) -> list[StoredDeadLetter]:
        """Every dead letter of ``group`` (all groups when None), oldest first."""
        out: list[StoredDeadLetter] = []
        for topic, g in await self._state.groups(group):
            key = self._state.keys(topic, g).dead
            for entry_id, fields in await self._state.client.xrange(key):
                out.append(_stored(topic, g, entry_id.decode(), fields))
        return sorted(out, key=_entry_order)

    async def replay(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Move the chosen dead letters to their group's redeliver stream as attempt 1."""
        count = 0
        for dead in await self._chosen(group, ids):
            keys = self._state.keys(dead.topic, dead.group)
            entry = dead.id.split("@")[0]
            replay = self._state.scripts.replay
            count += int(await replay(keys=[keys.dead, keys.redeliver], args=[entry]))
        return count

    async def purge(self, group: str | None, ids: Sequence[str] | None) -> int:
        """XDEL the chosen dead letters."""
        count = 0
        for dead in await self._chosen(group, ids):
            key = self._state.keys(dead.topic, dead.group).dead
            count += int(await self._state.client.xdel(key, dead.id.split("@")[0]))
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
    notes = read_notes(meta.get(DL_NOTES, "")) or FailureNotes("")
    attempt = meta.get(DL_ATTEMPT, "1")
    return StoredDeadLetter(
        id=f"{entry_id}@{topic}@{group}",
        message_id=meta.get(DL_ORIGIN, entry_id),
        group=group,
        topic=topic,
        message=message,
        attempt=int(attempt) if attempt.isdigit() else 1,
        notes=notes,
    )
