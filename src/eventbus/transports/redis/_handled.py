"""The handled records of an idempotent subscriber's group on Redis.

A record is one key per event id and group, ``prefix:{name}:handled:group:<event id>``,
with the TTL ``idempotency_ttl``. It is written by the script that sends the batched
acks (``record_and_ack``), ahead of them: an idempotent subscriber's success costs no
round trip of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from redis.exceptions import ResponseError

from ._commands import resp_arg, resp_command
from ._links import ensure_connected, round_trip
from ._scripts import RECORD_AND_ACK, Keys
from ._state import RedisState

__all__ = ["HandledRecords", "record_and_ack"]

_RECENT = 4096  # keys this consumer recorded that it answers for without asking Redis
_EVAL_HEAD = resp_arg(b"EVAL") + resp_arg(RECORD_AND_ACK.encode())


def record_and_ack(
    keys: Keys, group: str, batch: Mapping[str, Sequence[str]], ttl_ms: int
) -> bytes:
    """One EVAL of ``RECORD_AND_ACK``: the records of the event ids under ``keys.handled``
    in ``batch`` (SET, PX ``ttl_ms``), then the XACK of the entry ids of each stream (and
    the XDEL of the redelivered copies). Redis takes all of it or, refusing, none."""
    records = [(keys.handled + key).encode() for key in batch.get(keys.handled, ())]
    stream_ids = [i.encode() for i in batch.get(keys.stream, ())]
    redeliver_ids = [i.encode() for i in batch.get(keys.redeliver, ())]
    args = [
        b"%d" % (2 + len(records)), keys.stream.encode(), keys.redeliver.encode(), *records,
        group.encode(), b"%d" % ttl_ms, b"%d" % len(stream_ids), *stream_ids, *redeliver_ids,
    ]  # fmt: skip
    return b"*%d\r\n%b%b" % (len(args) + 2, _EVAL_HEAD, b"".join(map(resp_arg, args)))


class HandledRecords:
    """Answers ``handled(key)`` (``HandledRecord``) for one consumer of a group.

    A key this consumer recorded (one of the last few thousand, within the TTL) is
    answered at once: its record is in Redis, or queued ahead of any ack that follows.
    Otherwise one ``MGET`` reads its record. ``closed`` tells when to stop trying again
    while Redis cannot be reached.
    """

    def __init__(self, state: RedisState, keys: Keys, closed: Callable[[], bool]) -> None:
        self._state = state
        self._prefix = keys.handled
        self._closed = closed
        self._ttl = state.settings.idempotency_ttl
        self._recent: dict[str, float] = {}  # key: when this consumer's memory of it ends

    def recorded(self, key: str) -> None:
        """Note that this consumer queued the record of ``key`` (with its ack)."""
        recent = self._recent
        recent.pop(key, None)
        recent[key] = anyio.current_time() + self._ttl
        if len(recent) > _RECENT:
            del recent[next(iter(recent))]

    async def handled(self, key: str) -> bool:
        """Whether the group recorded ``key``: from this consumer's memory, or from
        Redis (tried again with backoff while Redis cannot be reached; raises
        ``ResponseError`` when Redis refuses it)."""
        if self._recorded_here(key):
            return True
        (value,) = await self._ask(resp_command([b"MGET", (self._prefix + key).encode()]))
        return value is not None

    def _recorded_here(self, key: str) -> bool:
        until = self._recent.get(key)
        if until is None:
            return False
        if until > anyio.current_time():
            return True
        del self._recent[key]
        return False

    async def _ask(self, command: bytes) -> Any:
        backoff = self._state.settle_backoff()
        while True:
            try:
                return await self._round_trip(command)
            except self._state.connection_errors:
                if self._closed():
                    raise
                await self._state.back_off(backoff, "reading handled records")

    async def _round_trip(self, command: bytes) -> Any:
        links = self._state.links
        link = links.take()
        try:
            await ensure_connected(link)  # fails before anything is sent
            try:
                (reply,) = await round_trip(link, command, 1)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await link.disconnect(nowait=True)  # a late reply must not reach the next
                raise
        finally:
            await links.give_back(link)
        if isinstance(reply, ResponseError):
            raise reply
        return reply
