"""One consumer of one group on one event stream of the Redis transport."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventbus._errors import TransportClosedError

from ._protocol import Delivery
from ._redis_acks import AckQueue
from ._redis_commands import XreadgroupCommand
from ._redis_entries import Fields, RedisDelivery, entry_delivery, read_entries, text
from ._redis_links import ensure_connected, round_trip
from ._redis_scripts import Keys

if TYPE_CHECKING:
    from ._redis_connection import RedisConnection

__all__ = ["RedisSubscription"]

logger = logging.getLogger("eventbus.redis")
_CLOSE_TIMEOUT = 10.0  # seconds aclose may take to send acks and hand entries back


class RedisSubscription:
    """Reads one stream (and the group's redeliver stream) as one consumer of a group.

    One task fetches at a time, ``prefetch`` entries at most; the others wait for it.

    Entries delivered before (this consumer's own pending entries after a restart, and
    entries taken over from a dead consumer) are *suspects*: one of them may have killed
    its worker. They are taken without raising their delivery count, then handed out one
    at a time, each counted just before its handler runs, so that a crash counts against
    the entry that caused it only. Past ``delivery_limit`` an entry is dead-lettered as
    ``poison``.
    """

    def __init__(self, conn: RedisConnection, topic: str, group: str, consumer: str) -> None:
        self._conn = conn
        self._topic = topic
        self._group = group
        self._consumer = consumer
        self._keys = Keys.of(conn.settings.prefix, topic, group)
        self._buffer: deque[RedisDelivery] = deque()
        self._held: dict[tuple[str, str], RedisDelivery] = {}  # (stream key, entry id)
        self._suspects: deque[tuple[str, str]] = deque()
        self._suspect_out: tuple[str, str] | None = None
        self._suspect_done = anyio.Event()
        self._fetching = anyio.Lock(fast_acquire=True)  # no extra loop turn when free
        self._fetch_scope: anyio.CancelScope | None = None
        self._own_pending_done = False
        self._acks = AckQueue(self._keys, group)
        self._promote_at = 0.0
        self._last_claim = float("-inf")
        self._next_due_ms = -1
        self._failures = 0
        self._closed = False
        self._link: Any = None  # this consumer's own connection for reads
        self._read_command = XreadgroupCommand(self._keys, group, consumer, conn.settings.prefetch)

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def keys(self) -> Keys:
        """The Redis keys this subscription reads and writes."""
        return self._keys

    def held_entries(self) -> dict[str, list[str]]:
        """Entry ids this consumer holds (suspects, buffered, in flight), by stream key."""
        out: dict[str, list[str]] = {self._keys.stream: [], self._keys.redeliver: []}
        for delivery in self._held.values():
            key = self._keys.redeliver if delivery.from_redeliver else self._keys.stream
            out[key].append(delivery.entry_id)
        for key, entry_id in self._suspects:
            out[key].append(entry_id)
        for key, ids in self._acks.ids().items():
            out[key].extend(ids)
        return out

    # -- receiving -----------------------------------------------------------------

    async def receive(self) -> Delivery | None:
        """The next delivery: suspects one at a time, due retries, then new entries."""
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            if self._suspect_out is not None:  # a suspect is being handled: wait for it
                await self._suspect_done.wait()
                continue
            async with self._fetching:
                if self._buffer or self._closed or self._suspect_out is not None:
                    continue
                try:
                    with anyio.CancelScope() as scope:
                        self._fetch_scope = scope
                        await self._fetch_guarded()
                finally:
                    self._fetch_scope = None
        return None

    async def _fetch_guarded(self) -> None:
        try:
            await self._fetch()
            self._failures = 0
        except ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            await self._conn.register_group(self._topic, self._group)
            logger.error(
                "Redis lost the consumer group %s of %s (flushed, or restarted without "
                "persistence?); recreated it",
                self._group,
                self._keys.stream,
            )
        except self._conn.connection_errors:
            self._failures += 1
            await self._conn.backoff(self._failures, "reading")

    async def _fetch(self) -> None:
        settings = self._conn.settings
        if not self._own_pending_done:
            await self._find_own_pending()
        now = anyio.current_time()
        if now - self._last_claim >= settings.claim_timeout / 4:
            self._last_claim = now
            await self._claim_stale()
        if self._acks.refused:  # no more reads while Redis refuses the acks: this raises
            await self.flush_acks()
        if self._suspects:
            await self.flush_acks()
            await self._take_suspect()
            return
        keys = self._keys
        if now >= self._promote_at:
            self._next_due_ms = await self._conn.scripts.promote(
                keys=[keys.retry, keys.redeliver], args=[settings.prefetch]
            )
            wait = self._next_due_ms / 1000 if self._next_due_ms >= 0 else settings.block
            self._promote_at = now + min(wait, settings.block)
        await self._read(now)

    async def _read(self, now: float) -> None:
        """Send the queued acks and the XREADGROUP in one write, on a connection of its own."""
        if self._link is None:
            self._link = self._conn.links.take()
        await ensure_connected(self._link)  # fails before anything is sent
        acks = self._acks
        batch = acks.sending = acks.take()
        commands = acks.commands(batch)
        commands.append(self._read_command.pack(self._block_ms(now)))
        try:
            replies = await round_trip(self._link, b"".join(commands), len(commands))
        except BaseException:
            acks.put_back(batch)  # still leased: sent again with the next read
            raise
        finally:
            acks.sending = {}
        *ack_replies, read_reply = replies
        refused = acks.check(batch, ack_replies)
        if isinstance(read_reply, ResponseError):
            raise read_reply
        for key, entry_id, fields in read_entries(read_reply):
            self._hold(self._delivery(key, entry_id, fields))
        if refused is not None:
            raise refused

    def _block_ms(self, now: float) -> int:
        settings = self._conn.settings
        block = min(settings.block, settings.claim_timeout / 4)
        block = min(block, self._promote_at - now)
        return max(1, int(block * 1000) + 1)

    async def flush_acks(self) -> None:
        """Send the queued acks in one round trip (see ``AckQueue.flush``)."""
        await self._acks.flush(self._conn.client)

    def _delivery(self, key: str, entry_id: str, fields: Fields) -> RedisDelivery:
        redeliver = key == self._keys.redeliver
        return entry_delivery(self._topic, key, entry_id, fields, from_redeliver=redeliver)

    def _hold(self, delivery: RedisDelivery) -> None:
        if delivery.slot not in self._held:
            self._held[delivery.slot] = delivery
            self._buffer.append(delivery)

    # -- suspects: own pending entries and entries taken over --------------------------

    async def _find_own_pending(self) -> None:
        """List (without re-reading) what this consumer name held before a restart."""
        for key in (self._keys.stream, self._keys.redeliver):
            rows = await self._conn.client.xpending_range(
                key, self._group, min="-", max="+", count=10_000, consumername=self._consumer
            )
            self._add_suspects(key, [text(r["message_id"]) for r in rows])
        self._own_pending_done = True

    async def _claim_stale(self) -> None:
        """Take over entries idle past the claim timeout (their consumer died)."""
        idle_ms = int(self._conn.settings.claim_timeout * 1000)
        for key in (self._keys.stream, self._keys.redeliver):
            cursor: bytes | str = "0-0"
            while True:
                reply = await self._conn.scripts.claim_ids(
                    keys=[key],
                    args=[
                        self._group,
                        self._consumer,
                        idle_ms,
                        cursor,
                        self._conn.settings.prefetch,
                    ],
                )
                cursor, ids = reply[0], reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:
                    await self._lost(key, deleted)
                self._add_suspects(key, [text(i) for i in ids])
                if text(cursor) == "0-0" or len(self._suspects) >= self._conn.settings.prefetch:
                    break

    def _add_suspects(self, key: str, ids: list[str]) -> None:
        known = set(self._suspects) | set(self._held)
        self._suspects.extend((key, i) for i in ids if (key, i) not in known)

    async def _take_suspect(self) -> None:
        """Count one more delivery of the next suspect (XCLAIM), then hand it out alone."""
        key, entry_id = self._suspects.popleft()
        claimed = await self._conn.client.xclaim(key, self._group, self._consumer, 0, [entry_id])
        live = [(i, f) for i, f in claimed or [] if f is not None]
        if not live:  # settled meanwhile by another consumer, or deleted from the stream
            if not await self._conn.client.xrange(key, entry_id, entry_id):
                await self._lost(key, [entry_id])
            return
        rows = await self._conn.client.xpending_range(
            key, self._group, min=entry_id, max=entry_id, count=1
        )
        count = int(rows[0]["times_delivered"]) if rows else 1
        delivery = self._delivery(key, entry_id, live[0][1])
        if count > self._conn.settings.delivery_limit:
            await self._poison(delivery, count)
            return
        self._suspect_out = (key, entry_id)
        self._suspect_done = anyio.Event()
        self._hold(delivery)

    async def _lost(self, key: str, ids: list[Any]) -> None:
        """Acknowledge pending entries whose content is gone, and record them."""
        names = [text(i) for i in ids]
        logger.error(
            "%d pending entries of %s in group %s were deleted before they were handled",
            len(names),
            key,
            self._group,
            extra={"group": self._group, "entry_ids": names},
        )
        notes = _notes("deleted", "the entry was deleted from the stream while pending")
        for name in names:
            await self._conn.scripts.dead_letter(
                keys=[key, self._keys.dead],
                args=[self._group, name, "0", self._topic, "1", json.dumps(notes), name, "1"],
            )
        await self._conn.client.xack(key, self._group, *names)

    async def _poison(self, delivery: RedisDelivery, count: int) -> None:
        logger.error(
            "entry %s of %s was delivered %d times without an ack; dead-lettered as poison",
            delivery.entry_id,
            self._keys.stream,
            count,
            extra={"group": self._group, "message_id": delivery.id},
        )
        notes = _notes("poison", f"delivered {count} times without an ack (the worker died?)")
        self._held[delivery.slot] = delivery
        await self.dead_letter(delivery, notes)

    # -- settling ------------------------------------------------------------------

    def _own(self, delivery: Delivery) -> RedisDelivery:
        if self._closed:
            raise TransportClosedError("the subscription is closed")
        if not isinstance(delivery, RedisDelivery) or delivery.slot not in self._held:
            raise TransportClosedError(f"{delivery!r} is not held by this consumer")
        return delivery

    def _source(self, delivery: RedisDelivery) -> tuple[str, str]:
        if delivery.from_redeliver:
            return self._keys.redeliver, "1"
        return self._keys.stream, "0"

    async def _settle(self, delivery: RedisDelivery, call: Callable[[], Awaitable[Any]]) -> None:
        """Run an ack, retry or dead-letter script until Redis confirms it.

        The scripts are idempotent, so repeating one whose reply was lost is harmless.
        While Redis is unreachable the entry stays held (its lease renewed); once the
        subscription closes it is left pending for the group to take over.
        """
        failures = 0
        while True:
            try:
                await call()
                break
            except self._conn.connection_errors:
                failures += 1
                if self._closed:
                    raise
                await self._conn.backoff(failures, "settling a delivery")
        self._release(delivery)

    def _release(self, delivery: RedisDelivery) -> None:
        """The delivery is settled here: no longer held, and the next suspect may go."""
        self._held.pop(delivery.slot, None)
        if self._suspect_out == delivery.slot:
            self._suspect_out = None
            self._suspect_done.set()

    async def ack(self, delivery: Delivery) -> None:
        """Queue the entry's XACK; acks go out in a batch with this consumer's next read
        (or at ``wait_idle`` and close). A crash before that repeats at most ``prefetch``
        entries, which at-least-once allows."""
        d = self._own(delivery)
        self._acks.add(d.slot[0], d.entry_id)
        self._release(d)

    async def nack(self, delivery: Delivery, delay: float, notes: Mapping[str, str]) -> None:
        """Schedule the entry in the group's retry set, then XACK it (one Lua script)."""
        d = self._own(delivery)
        key, delete = self._source(d)
        args: list[Any] = [
            self._group, d.entry_id, delete, int(max(0.0, delay) * 1000),
            d.attempt + 1, json.dumps(dict(notes)), d.id,
        ]  # fmt: skip
        script = self._conn.scripts.retry
        await self._settle(d, lambda: script(keys=[key, self._keys.retry], args=args))
        self._promote_at = min(self._promote_at, anyio.current_time() + max(0.0, delay))

    async def dead_letter(self, delivery: Delivery, notes: Mapping[str, str]) -> None:
        """Copy the entry's raw fields to the group's dead-letter stream, then XACK it."""
        d = self._own(delivery)
        key, delete = self._source(d)
        args: list[Any] = [
            self._group, d.entry_id, delete, self._topic, d.attempt,
            json.dumps(dict(notes)), d.id, "0",
        ]  # fmt: skip
        script = self._conn.scripts.dead_letter
        await self._settle(d, lambda: script(keys=[key, self._keys.dead], args=args))

    async def aclose(self) -> None:
        """Stop reading; send the queued acks; hand the entries this consumer still holds
        back to the group."""
        if self._closed:
            return
        self._closed = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        self._suspect_done.set()
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLOSE_TIMEOUT):
            if self._link is not None:
                await self._link.disconnect(nowait=True)  # the cancelled read's, if any
            self._acks.put_back(self._acks.sending)  # maybe not applied: XACK repeats
            self._acks.sending = {}
            await self._hand_back()

    async def _hand_back(self) -> None:
        try:
            await self.flush_acks()
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not send the last acks of %s (%s); they will be redelivered",
                self._group,
                type(exc).__name__,
            )
        held = self.held_entries()
        self._buffer.clear()
        self._held.clear()
        self._suspects.clear()
        try:
            await self._conn.release(held, self._group)
            if not any(held.values()):
                await self._conn.forget_consumer(self._keys, self._group)
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not hand back the entries held in %s (%s); they wait for the claim timeout",
                self._group,
                type(exc).__name__,
            )


def _notes(reason: str, message: str) -> dict[str, str]:
    """Dead-letter notes for a reason the transport itself decided."""
    now = datetime.now(UTC).isoformat()
    return {
        "reason": reason,
        "error_type": "",
        "error_message": message,
        "first_failed_at": now,
        "last_failed_at": now,
    }
