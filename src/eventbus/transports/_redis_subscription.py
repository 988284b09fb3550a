"""One consumer of one group on one event stream of the Redis transport."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import ResponseError

from eventbus._errors import TransportClosedError

from ._protocol import Delivery, Message
from ._redis_scripts import META_ATTEMPT, META_NOTES, META_ORIGIN, PAYLOAD, Keys

if TYPE_CHECKING:
    from ._redis_connection import RedisConnection

__all__ = ["RedisDelivery", "RedisSubscription", "entry_message"]

logger = logging.getLogger("eventbus.redis")

Entry = tuple[bytes, dict[bytes, bytes]]


class RedisDelivery(Delivery):
    """A delivery that remembers the stream entry it came from."""

    __slots__ = ("entry_id", "from_redeliver")

    def __init__(
        self,
        id: str,
        topic: str,
        message: Message,
        attempt: int,
        notes: Mapping[str, str],
        entry_id: str,
        from_redeliver: bool,
    ) -> None:
        super().__init__(id, topic, message, attempt, notes)
        self.entry_id = entry_id
        self.from_redeliver = from_redeliver


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def entry_message(fields: Mapping[bytes, bytes]) -> tuple[Message, dict[str, str]]:
    """The message of a stream entry, and its transport fields (those starting ``_``)."""
    headers: dict[str, str] = {}
    meta: dict[str, str] = {}
    body = b""
    for key, value in fields.items():
        name = _text(key)
        if name == PAYLOAD:
            body = value
        elif name.startswith("_"):
            meta[name] = _text(value)
        else:
            headers[name] = _text(value)
    return Message(body, headers), meta


class RedisSubscription:
    """Reads one stream (and the group's redeliver stream) as one consumer of a group.

    A single task fetches at a time, ``prefetch`` entries at most; the others wait for
    it. Entries that crossed ``delivery_limit`` deliveries without an ack (a handler that
    kills its process) are dead-lettered here with the reason ``poison``.
    """

    def __init__(self, conn: RedisConnection, topic: str, group: str, consumer: str) -> None:
        self._conn = conn
        self._topic = topic
        self._group = group
        self._consumer = consumer
        self._keys = Keys.of(conn.settings.prefix, topic, group)
        self._buffer: deque[RedisDelivery] = deque()
        self._held: dict[str, RedisDelivery] = {}
        self._fetching = anyio.Lock()
        self._fetch_scope: anyio.CancelScope | None = None
        self._own_pending_done = False
        self._pending_cursor: dict[Any, Any] = {self._keys.stream: "0", self._keys.redeliver: "0"}
        self._last_claim = float("-inf")
        self._next_due_ms = -1
        self._failures = 0
        self._closed = False

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def keys(self) -> Keys:
        """The Redis keys this subscription reads and writes."""
        return self._keys

    def held_entries(self) -> dict[str, list[str]]:
        """Entry ids this consumer holds (buffered or in flight), by stream key."""
        out: dict[str, list[str]] = {self._keys.stream: [], self._keys.redeliver: []}
        for delivery in self._held.values():
            key = self._keys.redeliver if delivery.from_redeliver else self._keys.stream
            out[key].append(delivery.entry_id)
        return out

    async def receive(self) -> Delivery | None:
        """The next delivery: own pending entries first, due retries, then new entries."""
        while not self._closed:
            if self._buffer:
                return self._buffer.popleft()
            async with self._fetching:
                if self._buffer or self._closed:
                    continue
                with anyio.CancelScope() as scope:
                    self._fetch_scope = scope
                    await self._fetch_guarded()
                self._fetch_scope = None
        return None

    async def _fetch_guarded(self) -> None:
        try:
            await self._fetch()
            self._failures = 0
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.error(
                "Redis lost the consumer group %s of %s (flushed or restarted without "
                "persistence?); recreating it",
                self._group,
                self._keys.stream,
            )
            await self._conn.create_group(self._keys, self._group)
        except self._conn.connection_errors:
            self._failures += 1
            await self._conn.backoff(self._failures, "reading")

    async def _fetch(self) -> None:
        client, keys = self._conn.client, self._keys
        settings = self._conn.settings
        self._next_due_ms = await self._conn.scripts.promote(
            keys=[keys.retry, keys.redeliver], args=[settings.prefetch]
        )
        now = anyio.current_time()
        if now - self._last_claim >= settings.claim_timeout / 4:
            self._last_claim = now
            if await self._claim_stale():
                return
        if not self._own_pending_done:
            await self._read_own_pending()
            return
        reply = await client.xreadgroup(
            self._group,
            self._consumer,
            {keys.stream: ">", keys.redeliver: ">"},
            count=settings.prefetch,
            block=self._block_ms(),
        )
        for key, items in _by_stream(reply).items():
            await self._take(key, items, check_count=False)

    async def _read_own_pending(self) -> None:
        """Re-read what this consumer name held before a restart, before anything new."""
        reply = await self._conn.client.xreadgroup(
            self._group,
            self._consumer,
            dict(self._pending_cursor),
            count=self._conn.settings.prefetch,
        )
        entries = _by_stream(reply)
        if not any(entries.values()):
            self._own_pending_done = True
            return
        for key, items in entries.items():
            if items:
                self._pending_cursor[key] = _text(items[-1][0])
                await self._take(key, items, check_count=True)

    def _block_ms(self) -> int:
        settings = self._conn.settings
        block = int(min(settings.block, settings.claim_timeout / 4) * 1000)
        if self._next_due_ms >= 0:
            block = min(block, self._next_due_ms + 1)
        return max(1, block)

    async def _claim_stale(self) -> bool:
        """Take over entries idle past the claim timeout (their consumer died)."""
        claimed = False
        idle_ms = int(self._conn.settings.claim_timeout * 1000)
        for key in (self._keys.stream, self._keys.redeliver):
            cursor: bytes | str = "0-0"
            while True:
                reply = await self._conn.client.xautoclaim(
                    key, self._group, self._consumer, idle_ms, cursor,
                    count=self._conn.settings.prefetch,
                )  # fmt: skip
                cursor, items, deleted = reply[0], reply[1], reply[2] if len(reply) > 2 else []
                if deleted:
                    await self._lost(key, deleted)
                live = [(i, f) for i, f in items if f is not None]
                if live:
                    await self._take(key, live, check_count=True)
                    claimed = True
                if cursor in (b"0-0", "0-0") or len(self._buffer) >= self._conn.settings.prefetch:
                    break
        return claimed

    async def _lost(self, key: str, ids: list[bytes]) -> None:
        """Acknowledge pending entries whose content is gone, and record them."""
        names = [_text(i) for i in ids]
        logger.error(
            "%d pending entries of %s in group %s were deleted before they were handled",
            len(names),
            key,
            self._group,
            extra={"group": self._group, "entry_ids": names},
        )
        await self._conn.client.xack(key, self._group, *ids)
        notes = {"reason": "deleted", "error_type": "", "error_message": "entry deleted"}
        for name in names:
            await self._conn.scripts.dead_letter(
                keys=[key, self._keys.dead],
                args=[self._group, name, "0", self._topic, "1", json.dumps(notes), name],
            )

    async def _take(self, key: str, items: list[Any], *, check_count: bool) -> None:
        counts = await self._delivery_counts(key, items) if check_count else {}
        limit = self._conn.settings.delivery_limit
        for entry_id, fields in items:
            if _text(entry_id) in self._held:
                continue
            delivery = self._delivery(key, _text(entry_id), fields or {})
            if counts.get(delivery.entry_id, 0) > limit:
                await self._poison(delivery, counts[delivery.entry_id])
                continue
            self._held[delivery.entry_id] = delivery
            self._buffer.append(delivery)

    async def _delivery_counts(self, key: str, items: list[Any]) -> dict[str, int]:
        if not items:
            return {}
        first, last = items[0][0], items[-1][0]
        rows = await self._conn.client.xpending_range(
            key, self._group, min=first, max=last, count=len(items) + 16
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    def _delivery(self, key: str, entry_id: str, fields: Mapping[bytes, bytes]) -> RedisDelivery:
        message, meta = entry_message(fields)
        redeliver = key == self._keys.redeliver
        notes: Mapping[str, str] = {}
        if meta.get(META_NOTES):
            try:
                loaded = json.loads(meta[META_NOTES])
                notes = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                notes = {}
        attempt = int(meta.get(META_ATTEMPT, "1")) if redeliver else 1
        origin = meta.get(META_ORIGIN, entry_id) if redeliver else entry_id
        return RedisDelivery(origin, self._topic, message, attempt, notes, entry_id, redeliver)

    async def _poison(self, delivery: RedisDelivery, count: int) -> None:
        logger.error(
            "entry %s of %s was delivered %d times without an ack; dead-lettered as poison",
            delivery.entry_id,
            self._keys.stream,
            count,
            extra={"group": self._group, "message_id": delivery.id},
        )
        notes = {
            "reason": "poison",
            "error_type": "",
            "error_message": f"delivered {count} times without an ack (the worker died?)",
        }
        self._held[delivery.entry_id] = delivery
        await self.dead_letter(delivery, notes)

    def _own(self, delivery: Delivery) -> RedisDelivery:
        if self._closed:
            raise TransportClosedError("the subscription is closed")
        if not isinstance(delivery, RedisDelivery) or delivery.entry_id not in self._held:
            raise TransportClosedError(f"{delivery!r} is not held by this consumer")
        return delivery

    def _source(self, delivery: RedisDelivery) -> tuple[str, str]:
        if delivery.from_redeliver:
            return self._keys.redeliver, "1"
        return self._keys.stream, "0"

    async def ack(self, delivery: Delivery) -> None:
        """XACK the entry (and delete it when it came from the redeliver stream)."""
        d = self._own(delivery)
        key, delete = self._source(d)
        await self._conn.scripts.ack(keys=[key], args=[self._group, d.entry_id, delete])
        del self._held[d.entry_id]

    async def nack(self, delivery: Delivery, delay: float, notes: Mapping[str, str]) -> None:
        """Schedule the entry in the group's retry set, then XACK it (one Lua script)."""
        d = self._own(delivery)
        key, delete = self._source(d)
        await self._conn.scripts.retry(
            keys=[key, self._keys.retry],
            args=[
                self._group, d.entry_id, delete, int(max(0.0, delay) * 1000),
                d.attempt + 1, json.dumps(dict(notes)), d.id,
            ],
        )  # fmt: skip
        del self._held[d.entry_id]

    async def dead_letter(self, delivery: Delivery, notes: Mapping[str, str]) -> None:
        """Copy the entry's raw fields to the group's dead-letter stream, then XACK it."""
        d = self._own(delivery)
        key, delete = self._source(d)
        await self._conn.scripts.dead_letter(
            keys=[key, self._keys.dead],
            args=[
                self._group, d.entry_id, delete, self._topic, d.attempt,
                json.dumps(dict(notes)), d.id,
            ],
        )  # fmt: skip
        del self._held[d.entry_id]

    async def aclose(self) -> None:
        """Stop reading; hand the entries this consumer still holds back to the group."""
        if self._closed:
            return
        self._closed = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        held = self.held_entries()
        self._buffer.clear()
        self._held.clear()
        try:
            await self._conn.release(held, self._group)
        except self._conn.connection_errors:
            logger.warning(
                "could not hand back held entries of %s; they wait for the claim timeout",
                self._group,
            )


def _by_stream(reply: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, items in reply or []:
        out[_text(key)] = [(i, f) for i, f in items if f is not None]
    return out
