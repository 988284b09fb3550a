"""The handled records of an idempotent subscriber's group on Redis.

A record is one key per event id and group, ``prefix:{name}:handled:group:<event id>``,
with the TTL ``idempotency_ttl``. It is written by the script that sends the batched
acks (``record_and_ack``), ahead of them, and read a whole batch of deliveries at a time
(``HandledRecords``): an idempotent subscriber costs one round trip per batch, not two
per delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from redis.exceptions import ResponseError

from ._cluster import REDIRECTS
from ._commands import resp_arg, resp_command
from ._entries import RedisDelivery
from ._links import ensure_connected, round_trip
from ._scripts import RECORD_AND_ACK, Keys
from ._state import RedisState, logger

__all__ = ["HandledRecords", "record_and_ack"]

_RECENT = 1024  # at least this many keys recorded here are answered without asking Redis
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

    - A key this consumer recorded (one of the last 1,024, or 4 x ``prefetch`` when more,
      within the TTL) is answered at once: its record is in Redis, or queued ahead of any
      ack that follows. That is more than its ack queue holds between two reads, so a
      record not yet sent is never forgotten here.
    - Otherwise one ``MGET`` reads the record of ``key`` and those of the event ids of
      every delivery the consumer holds (its prefetched batch); the other answers are
      kept for their turn, until their delivery is settled (``forget``). An answer is as
      old as that look: a record another consumer writes after it is not seen.

    ``held`` is the consumer's map of the deliveries it holds; ``closed`` tells when
    to stop trying again while Redis cannot be reached or refuses the look. Safe for
    concurrent tasks.
    """

    def __init__(
        self,
        state: RedisState,
        keys: Keys,
        held: Mapping[Any, RedisDelivery],
        closed: Callable[[], bool],
    ) -> None:
        self._state = state
        self._prefix = keys.handled
        self._held = held
        self._closed = closed
        self._ttl = state.settings.idempotency_ttl
        self._answers: dict[str, bool] = {}
        self._recent: dict[str, float] = {}  # key: when this consumer's memory of it ends
        self._remembers = max(_RECENT, 4 * state.settings.prefetch)
        self._looking = anyio.Lock(fast_acquire=True)

    def recorded(self, key: str) -> None:
        """Note that this consumer queued the record of ``key`` (with its ack)."""
        recent = self._recent
        recent.pop(key, None)
        recent[key] = anyio.current_time() + self._ttl
        if len(recent) > self._remembers:
            del recent[next(iter(recent))]

    def forget(self, delivery: RedisDelivery) -> None:
        """Drop the answer kept for a delivery now settled (a later one looks again)."""
        if self._answers:
            self._answers.pop(delivery.message.headers.get("id", ""), None)

    async def handled(self, key: str) -> bool:
        """Whether the group recorded ``key``: from this consumer's memory, from the
        answers of the last look, or from a new look (tried again with backoff while
        Redis cannot be reached or refuses it; the delivery stays held meanwhile)."""
        while True:
            if self._recorded_here(key):
                return True
            answer = self._answers.pop(key, None)
            if answer is not None:
                return answer
            async with self._looking:
                if key not in self._answers:  # else another task looked meanwhile
                    await self._look_up(key)

    def _recorded_here(self, key: str) -> bool:
        until = self._recent.get(key)
        if until is None:
            return False
        if until > anyio.current_time():
            return True
        del self._recent[key]
        return False

    async def _look_up(self, key: str) -> None:
        """Read the records of ``key`` and of the held deliveries' event ids (one
        ``MGET``: they share the stream's hash tag); keep the answers."""
        wanted = [key]
        for delivery in self._held.values():
            event_id = delivery.message.headers.get("id")
            if event_id is not None:
                wanted.append(event_id)
        keys = list(dict.fromkeys(wanted))
        command = resp_command([b"MGET", *[(self._prefix + k).encode() for k in keys]])
        values = await self._ask(command)
        self._answers = {k: value is not None for k, value in zip(keys, values, strict=True)}

    async def _ask(self, command: bytes) -> Any:
        backoff = self._state.settle_backoff()
        while True:
            try:
                return await self._round_trip(command)
            except self._state.connection_errors as exc:
                if self._closed():
                    raise
                await self._state.slots.follow(exc)
                await self._state.back_off(backoff, "reading handled records")
            except ResponseError as exc:
                if self._closed():
                    raise
                if isinstance(exc, REDIRECTS):  # a cluster moved the slot: ask where now
                    await self._state.slots.redirected(exc, backoff, "reading handled records")
                    continue
                delay = backoff.failed()
                logger.error(
                    "Redis refused to read the handled records %s* (failure %d): %s: %s; "
                    "trying again in %.2f s",
                    self._prefix,
                    backoff.failures,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await backoff.wait(delay)

    async def _round_trip(self, command: bytes) -> Any:
        links = self._state.links
        link = links.take(self._prefix)
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
