"""The acks of one Redis consumer: queued, sent in batches, kept until Redis takes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from redis.exceptions import ResponseError

from ._commands import ack_commands
from ._handled import record_and_ack
from ._links import Links, ensure_connected, round_trip
from ._scripts import Keys

__all__ = ["AckQueue"]

Batch = dict[str, list[str]]
"""Entry ids by stream key; and, under the group's handled prefix (``Keys.handled``),
the event ids whose handled records go ahead of the acks."""


class AckQueue:
    """Entry ids handled and waiting for their XACK (and XDEL, for redelivered copies),
    and the handled records of an idempotent subscriber that must land before them.

    A batch is *taken* before it travels and *put back* when it may not have arrived, so
    acks queued meanwhile wait for the next batch and none is lost; XACK, XDEL and the
    records' SET repeat harmlessly. A batch with records travels as one script that
    writes the records, then acks, or nothing when refused: never an ack without its
    record. Acks that Redis refused (an ACL, a read-only replica) are kept, records
    included, and mark the queue ``refused`` until a flush gets through.
    ``record_ttl`` is the records' TTL in seconds.
    """

    def __init__(self, keys: Keys, group: str, record_ttl: float = 86_400.0) -> None:
        self._keys = keys
        self._group = group
        self._record_ttl_ms = max(1, int(record_ttl * 1000))
        self._queued: Batch = self._empty()
        self.sending: Batch = {}
        """The batch on its way with the read that waits now."""
        self._flushing: list[Batch] = []  # the batches ``flush`` sends now
        self.refused = False

    def _empty(self) -> Batch:
        return {self._keys.stream: [], self._keys.redeliver: [], self._keys.handled: []}

    def add(self, stream: str, entry_id: str) -> None:
        """Queue the ack of an entry of ``stream`` (the stream or the redeliver stream)."""
        self._queued[stream].append(entry_id)

    def record(self, key: str) -> None:
        """Queue the handled record of ``key`` (an event id); it is written ahead of every
        ack of its batch, so the entry's ack is queued after it."""
        self._queued[self._keys.handled].append(key)

    def __bool__(self) -> bool:
        """Whether acks or records are queued."""
        return any(self._queued.values())

    def __contains__(self, slot: object) -> bool:
        """Whether the ack of ``(stream key, entry id)`` is queued or on its way (with a
        read, or in a ``flush``)."""
        if not isinstance(slot, tuple) or len(slot) != 2:
            return False
        key, entry_id = slot
        batches = (self._queued, self.sending, *self._flushing)
        return any(entry_id in batch.get(key, ()) for batch in batches)

    def ids(self) -> Batch:
        """Every entry id not yet acknowledged for sure: queued or on its way."""
        out: Batch = {self._keys.stream: [], self._keys.redeliver: []}
        for batch in (self._queued, self.sending, *self._flushing):
            for key, ids in batch.items():
                if key in out:
                    out[key].extend(ids)
        return out

    def take(self) -> Batch:
        """The queued acks, now leaving the queue ({} when there are none)."""
        batch = {key: ids for key, ids in self._queued.items() if ids}
        if batch:
            self._queued = self._empty()
        return batch

    def put_back(self, batch: Mapping[str, list[str]]) -> None:
        """Queue again a batch that may not have arrived."""
        for key, ids in batch.items():
            self._queued[key][:0] = ids

    def commands(self, batch: Mapping[str, list[str]]) -> list[bytes]:
        """The batch as packed commands, to send ahead of another: one script when it
        holds records (``record_and_ack``), else XACK and XDEL."""
        keys = self._keys
        if batch.get(keys.handled):
            return [record_and_ack(keys, self._group, batch, self._record_ttl_ms)]
        return ack_commands(self._group, batch, keys.redeliver)

    def check(self, batch: Batch, replies: list[Any]) -> ResponseError | None:
        """The first error among the replies to ``commands(batch)``; the batch is then
        kept (put back) and the queue marked refused."""
        refused = [reply for reply in replies if isinstance(reply, ResponseError)]
        if not refused:
            return None
        self.put_back(batch)
        self.refused = True
        return refused[0]

    async def flush(self, links: Links, key: str) -> None:
        """Send the queued acks in one round trip on a connection of ``links`` to the
        server of ``key`` (the stream); raises when Redis refuses them (they are kept) or
        cannot be reached (they are put back).
        """
        if not self:
            self.refused = False
            return
        link = links.take(key)
        batch: Batch = {}
        try:
            await ensure_connected(link)  # fails before anything is sent
            batch = self.take()
            self._flushing.append(batch)
            replies = await self._send(link, batch) if batch else []  # another took it
        finally:
            if batch in self._flushing:
                self._flushing.remove(batch)
            await links.give_back(link)
        error = self.check(batch, replies)
        if error is not None:
            raise error
        self.refused = False

    async def _send(self, link: Any, batch: Batch) -> list[Any]:
        commands = self.commands(batch)
        try:
            return await round_trip(link, b"".join(commands), len(commands))
        except BaseException:
            self.put_back(batch)  # it may not have arrived: XACK and XDEL repeat harmlessly
            with anyio.CancelScope(shield=True):
                await link.disconnect(nowait=True)  # a late reply must not reach the next
            raise
