"""Suspects: entries a consumer takes that were delivered before, one of which may have
killed its worker."""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Container, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio

from eventbus.transports._contract import FailureNotes

from ._entries import Fields, text
from ._state import RedisState, logger

__all__ = ["Outstanding", "Slot", "Suspects", "transport_notes"]

Slot = tuple[str, str]
"""Where an entry is held: (stream key, entry id); ids repeat across streams."""


def transport_notes(reason: str, message: str) -> FailureNotes:
    """Dead-letter notes for a reason the transport itself decided."""
    now = datetime.now(UTC).isoformat()
    return FailureNotes(reason, error_message=message, first_failed_at=now, last_failed_at=now)


class Suspects:
    """The suspects of one consumer of a group, in the order they are handed out.

    Suspects are this consumer name's own pending entries after a restart, or after a
    read whose reply was lost (listed then)
    and entries idle past the claim timeout (their consumer died; looked for every
    quarter of it). They are found without raising their delivery count; ``take``
    counts one more delivery just before the entry is handed out alone, so that a crash
    counts against the entry that caused it only, and only while this consumer still
    holds the entry (or it idled past the claim timeout): one holder at a time. Entries
    deleted from the stream while pending are recorded as dead letters with the reason
    ``deleted``. Consumers that hold nothing and were idle for the claim timeout (those
    of dead workers; a live one is created again by its next read that gets entries) are
    deleted from the group.
    """

    def __init__(
        self, state: RedisState, topic: str, group: str, outstanding: Container[Slot]
    ) -> None:
        self._state = state
        self._topic = topic
        self._group = group
        self._keys = state.keys(topic, group)
        self._held = outstanding  # never taken as suspects
        self._queue: deque[Slot] = deque()
        self._own_listed = False
        self._last_look = float("-inf")
        self._interval = state.settings.claim_timeout / 4
        self.out: Slot | None = None
        """The suspect being handled; nothing else is handed out meanwhile."""
        self.done = anyio.Event()
        """Set once ``out`` is settled (or the subscription closes)."""

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._queue)

    def clear(self) -> None:
        """Forget the suspects not taken yet (the group takes them over)."""
        self._queue.clear()

    @property
    def next_look(self) -> float:
        """When ``look`` takes over the entries of dead consumers next: a quarter of the
        claim timeout after the last, less up to a fifth (subscriptions started together
        spread out)."""
        return self._last_look + self._interval

    def relist(self) -> None:
        """List this consumer's own pending entries again at the next ``look``: a read
        whose reply was lost (the connection failed after Redis ran it) left entries
        pending to this consumer that it never received; they come back as suspects
        at once instead of after the claim timeout."""
        self._own_listed = False

    def due(self, now: float) -> bool:
        """Whether ``look`` has something to do now."""
        return not self._own_listed or now >= self.next_look

    async def look(self, now: float) -> None:
        """List this consumer's own pending entries (at the start, and after
        ``relist``); about every quarter of the claim timeout take over the entries of
        dead consumers, then delete the consumers that hold nothing and were idle for the
        claim timeout."""
        if not self._own_listed:
            await self._list_own()
        if now >= self.next_look:
            self._last_look = now
            self._interval = self._state.settings.claim_timeout / 4 * random.uniform(0.8, 1.0)
            for key in (self._keys.stream, self._keys.redeliver):
                await self._claim_stale(key)
                await self._prune(key)

    async def _list_own(self) -> None:
        """What this consumer name held before a restart (without re-reading it)."""
        for key in (self._keys.stream, self._keys.redeliver):
            rows = await self._state.client.xpending_range(
                key, self._group, min="-", max="+", count=10_000, consumername=self._state.consumer
            )
            self._add(key, [text(r["message_id"]) for r in rows])
        self._own_listed = True

    async def _claim_stale(self, key: str) -> None:
        """Take over entries of ``key`` idle past the claim timeout, a page at a time."""
        cursor = "0-0"
        while True:
            cursor, ids, deleted = await self._claim_page(key, cursor)
            if deleted:
                await self._lost(key, deleted)
            self._add(key, ids)
            if cursor == "0-0" or len(self._queue) >= self._state.settings.prefetch:
                return

    async def _prune(self, key: str) -> None:
        """Delete the consumers of dead workers that hold nothing (one atomic script)."""
        state = self._state
        idle_ms = int(state.settings.claim_timeout * 1000)
        args: list[Any] = [self._group, idle_ms, state.consumer]
        removed = await state.scripts.prune_consumers(keys=[key], args=args)
        if removed:
            logger.debug(
                "removed %d consumers of %s in group %s that held nothing, idle %.1f s",
                removed,
                key,
                self._group,
                state.settings.claim_timeout,
            )

    async def _claim_page(self, key: str, cursor: str) -> tuple[str, list[str], list[str]]:
        """XAUTOCLAIM ... JUSTID: the next cursor, the ids taken, the ids deleted."""
        state, settings = self._state, self._state.settings
        idle_ms = int(settings.claim_timeout * 1000)
        args: list[Any] = [self._group, state.consumer, idle_ms, cursor, settings.prefetch]
        reply = await state.scripts.claim_ids(keys=[key], args=args)
        deleted = reply[2] if len(reply) > 2 else []
        return text(reply[0]), [text(i) for i in reply[1]], [text(i) for i in deleted]

    def _add(self, key: str, ids: list[str]) -> None:
        known = set(self._queue)
        for slot in ((key, i) for i in ids):
            if slot not in known and slot not in self._held:
                self._queue.append(slot)

    async def take(self) -> tuple[str, str, Fields, int] | None:
        """Take the next suspect, counting one more delivery: (stream key, entry id,
        fields, deliveries). None when it was settled meanwhile, deleted from the stream
        (recorded), or taken over by another consumer.

        One script checks and claims at once (``TAKE``): the entry is taken only while
        this consumer holds it or it has been idle past the claim timeout, so that a
        consumer restarted under its old name and another that took over its entries
        never both run it, nor both raise its delivery count.
        """
        key, entry_id = self._queue.popleft()
        state = self._state
        idle_ms = int(state.settings.claim_timeout * 1000)
        args: list[Any] = [self._group, state.consumer, idle_ms, entry_id]
        reply = await state.scripts.take(keys=[key], args=args)
        if int(reply[0]) == 1:
            return key, entry_id, reply[1], int(reply[2])
        await self._not_taken(key, entry_id, int(reply[0]))
        return None

    async def _not_taken(self, key: str, entry_id: str, status: int) -> None:
        """Record an entry gone from the stream (-2); say that another consumer holds
        one (-1); nothing for one settled meanwhile (0)."""
        if status == -2:
            await self._lost(key, [entry_id])
        elif status == -1:
            logger.info(
                "entry %s of %s in group %s was taken over by another consumer; left to it",
                entry_id,
                key,
                self._group,
            )

    def hand_out(self, slot: Slot) -> None:
        """``slot`` is handed out: nothing else until it is settled."""
        self.out = slot
        self.done = anyio.Event()

    def settled(self, slot: Slot) -> None:
        """A delivery was settled; when it was the suspect out, the next may go."""
        if self.out == slot:
            self.out = None
            self.done.set()

    async def _lost(self, key: str, ids: list[str]) -> None:
        """Record pending entries whose content is gone as dead letters (the script acks
        them too)."""
        logger.error(
            "%d pending entries of %s in group %s were deleted before they were handled",
            len(ids),
            key,
            self._group,
            extra={"group": self._group, "entry_ids": ids},
        )
        notes = transport_notes("deleted", "the entry was deleted from the stream while pending")
        packed = json.dumps(notes.as_dict())
        for entry_id in ids:
            args: list[Any] = [self._group, entry_id, "0", self._topic, "1", packed, entry_id, "1"]
            await self._state.scripts.dead_letter(keys=[key, self._keys.dead], args=args)


class Outstanding:
    """The entries a consumer has not settled with Redis: held, or acked with the XACK
    not yet confirmed (``AckQueue``); never taken as suspects."""

    def __init__(self, held: Container[Slot], acks: Container[Slot]) -> None:
        self._held = held
        self._acks = acks

    def __contains__(self, slot: object) -> bool:
        """Whether ``(stream key, entry id)`` is held or has its ack on the way."""
        return slot in self._held or slot in self._acks
