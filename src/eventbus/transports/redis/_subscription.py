"""One consumer of one group on one event stream of the Redis transport."""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventbus._errors import TransportClosedError
from eventbus.transports._contract import Delivery, FailureNotes

from ._acks import AckQueue
from ._cluster import REDIRECTS
from ._commands import XreadgroupCommand
from ._entries import Fields, RedisDelivery, entry_delivery, read_entries
from ._handled import HandledRecords
from ._idle import IdleReaders
from ._links import ensure_connected, round_trip
from ._refusals import RefusedWrite
from ._scripts import Keys
from ._settling import Settler
from ._state import RedisState, logger
from ._suspects import Outstanding, Slot, Suspects, transport_notes

__all__ = ["RedisSubscription"]

_CLOSE_TIMEOUT = 10.0  # seconds aclose may take to send acks and hand entries back


class RedisSubscription:
    """Reads one stream (and the group's redeliver stream) as one consumer of a group.

    One task fetches at a time, ``prefetch`` entries at most; the others wait for it.
    Entries delivered before are *suspects* (see ``Suspects``), handed out one at a
    time; past ``delivery_limit`` deliveries an entry is dead-lettered as ``poison``.
    While its reads find nothing, and it holds nothing, it reads through ``idle``
    (``IdleReaders``) instead of on a connection of its own; it starts that way.
    """

    def __init__(self, state: RedisState, topic: str, group: str, idle: IdleReaders) -> None:
        self._state = state
        self._settings = state.settings
        self._topic = topic
        self._group = group
        self._keys = keys = state.keys(topic, group)
        self._buffer: deque[RedisDelivery] = deque()
        self._held: dict[Slot, RedisDelivery] = {}
        self._acks = AckQueue(keys, group, state.settings.idempotency_ttl)
        self._suspects = Suspects(state, topic, group, Outstanding(self._held, self._acks))
        self._fetching = anyio.Lock(fast_acquire=True)  # no extra loop turn when free
        self._fetch_scope: anyio.CancelScope | None = None
        self._records = HandledRecords(state, keys, self._held, lambda: self._closed)
        self._settler = Settler(state, topic, group, lambda: self._closed)
        self._promote_at = 0.0
        self._retry_due = float("inf")  # when the next retry of the group is due
        self._idle = idle
        self._quiet = True  # the last read found nothing: the next one parks
        self._promotion = RefusedWrite(
            f"move due retries of group {group} from {keys.retry} to {keys.redeliver}",
            "new entries are still read and settled; tried again with backoff",
            state.settle_backoff(),
        )
        self._read_backoff = state.backoff()
        self._closed = False
        self._link: Any = None  # this consumer's own connection for reads
        prefetch = state.settings.prefetch
        self._read_command = XreadgroupCommand(keys, group, state.consumer, prefetch)

    @property
    def topic(self) -> str:
        """The event name read."""
        return self._topic

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def keys(self) -> Keys:
        """The keys of this group on this stream."""
        return self._keys

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` was called."""
        return self._closed

    @property
    def holding(self) -> bool:
        """Whether this consumer holds an entry it has not settled yet."""
        return bool(self._held)

    def held_entries(self) -> dict[str, list[str]]:
        """Entry ids this consumer holds (suspects, buffered, in flight), by stream key."""
        out: dict[str, list[str]] = {self._keys.stream: [], self._keys.redeliver: []}
        for key, entry_id in self._held:
            out[key].append(entry_id)
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
            if self._suspects.out is not None:  # a suspect is being handled: wait for it
                await self._suspects.done.wait()
                continue
            async with self._fetching:
                if self._buffer or self._closed or self._suspects.out is not None:
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
            self._read_backoff.reset()
        except REDIRECTS as exc:  # a cluster moved the slot: read where it is now
            await self._drop_link()
            await self._state.slots.redirected(exc, self._read_backoff, "reading")
        except ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            if self._state.settings.cluster and str(exc).startswith("UNBLOCKED"):
                await self._rehome(exc)  # the stream left for another master (a reshard)
                return
            await self._state.register_group(self._topic, self._group)
            logger.error(
                "Redis lost the consumer group %s of %s (flushed, or restarted without "
                "persistence?); recreated it",
                self._group,
                self._keys.stream,
            )
        except self._state.connection_errors as exc:
            self._suspects.relist()  # Redis may have run the read: its entries are ours
            await self._rehome(exc)
            await self._state.back_off(self._read_backoff, "reading")

    async def _rehome(self, exc: BaseException) -> None:
        """On a cluster, learn where the stream's slot is, and read there from now on."""
        if self._state.settings.cluster:
            await self._state.slots.follow(exc)
            await self._drop_link()

    async def _drop_link(self) -> None:
        """Close the reading link, so that the next read takes one to the slot's master."""
        if self._link is not None:
            link, self._link = self._link, None
            await self._state.links.discard(link)

    async def _fetch(self) -> None:
        now = anyio.current_time()
        if self._suspects.due(now):
            async with self._state.housekeeping:
                await self._suspects.look(now)
        if self._acks.refused:  # no more reads while Redis refuses the acks: this raises
            await self.flush_acks()
        if self._suspects:
            await self.flush_acks()
            await self._take_suspect()
            return
        if now >= self._promote_at:
            async with self._state.housekeeping:
                await self._promote(now)
        await self._read(now)

    async def _promote(self, now: float) -> None:
        """Move due retries to the redeliver stream; note when the next one is due.

        A promotion that Redis refuses (``OOM`` under ``maxmemory``: the script's first
        write is refused, so it moved nothing) is logged and tried again with backoff
        (``RefusedWrite``), while the reads go on.
        """
        keys, block = self._keys, self._settings.block
        try:
            next_due_ms = await self._state.scripts.promote(
                keys=[keys.retry, keys.redeliver], args=[self._settings.prefetch]
            )
        except ResponseError as exc:
            self._promote_at = now + self._promotion.refused(exc, now)
            return
        self._promotion.taken()
        self._retry_due = now + next_due_ms / 1000 if next_due_ms >= 0 else float("inf")
        self._promote_at = min(self._retry_due, now + block)

    async def _read(self, now: float) -> None:
        """Send the queued acks and the XREADGROUP in one write, on a connection of its
        own; or, when the last read found nothing, park (see ``_park``)."""
        if self._quiet and not (self._held or self._acks) and self._idle.enabled:
            await self._park()
            return
        if self._link is None:
            self._link = self._state.links.take(self._keys.stream)
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
        self._take_replies(batch, replies)

    def _take_replies(self, batch: dict[str, list[str]], replies: list[Any]) -> None:
        """Hold the entries read; raise when Redis refused the read or the acks (kept)."""
        *ack_replies, read_reply = replies
        refused = self._acks.check(batch, ack_replies)
        if isinstance(read_reply, ResponseError):
            raise read_reply
        for key, entry_id, fields in read_entries(read_reply):
            self.take(key, entry_id, fields)
        self._quiet = not self._buffer
        if refused is not None:
            raise refused

    async def _park(self) -> None:
        """Give the reading connection back and wait in ``IdleReaders`` until entries
        arrive, a retry is due or the leases need looking after; read on a connection of
        its own again when entries came, or when the shared read failed."""
        if self._link is not None:
            link, self._link = self._link, None
            await self._state.links.give_back(link)
        until = min(self._retry_due, self._suspects.next_look)
        if await self._idle.wait(self, max(until, self._promote_at)):  # refused: backoff
            self._quiet = not self._buffer
        else:  # the shared read failed, maybe after Redis ran it
            self._quiet = False
            self._suspects.relist()

    def take(self, key: str, entry_id: str, fields: Fields) -> None:
        """Hold an entry read for this consumer, to be handed out by ``receive``."""
        self._hold(self._delivery(key, entry_id, fields))

    def _block_ms(self, now: float) -> int:
        block = min(self._settings.block, self._settings.claim_timeout / 4)
        block = min(block, self._promote_at - now)
        return max(1, int(block * 1000) + 1)

    async def flush_acks(self) -> None:
        """Send the queued acks in one round trip (see ``AckQueue.flush``)."""
        await self._acks.flush(self._state.links, self._keys.stream)

    def _delivery(self, key: str, entry_id: str, fields: Fields) -> RedisDelivery:
        redeliver = key == self._keys.redeliver
        return entry_delivery(self._topic, key, entry_id, fields, from_redeliver=redeliver)

    def _hold(self, delivery: RedisDelivery) -> None:
        if delivery.slot not in self._held:
            self._held[delivery.slot] = delivery
            self._buffer.append(delivery)

    async def _take_suspect(self) -> None:
        """Count one more delivery of the next suspect, then hand it out alone."""
        taken = await self._suspects.take()
        if taken is None:
            return
        key, entry_id, fields, count = taken
        delivery = self._delivery(key, entry_id, fields)
        if count > self._settings.delivery_limit:
            await self._poison(delivery, count)
            return
        self._suspects.hand_out(delivery.slot)
        self._hold(delivery)

    async def _poison(self, delivery: RedisDelivery, count: int) -> None:
        logger.error(
            "entry %s of %s was delivered %d times without an ack; dead-lettered as poison",
            delivery.entry_id,
            self._keys.stream,
            count,
            extra={"group": self._group, "message_id": delivery.id},
        )
        why = f"delivered {count} times without an ack (the worker died?)"
        self._held[delivery.slot] = delivery
        await self.dead_letter(delivery, transport_notes("poison", why))

    # -- settling ------------------------------------------------------------------

    def _own(self, delivery: Delivery) -> RedisDelivery:
        if self._closed:
            raise TransportClosedError("the subscription is closed")
        if not isinstance(delivery, RedisDelivery) or delivery.slot not in self._held:
            raise TransportClosedError(f"{delivery!r} is not held by this consumer")
        return delivery

    def _release(self, delivery: RedisDelivery) -> None:
        """The delivery is settled here: no longer held, and the next suspect may go."""
        self._held.pop(delivery.slot, None)
        self._suspects.settled(delivery.slot)
        self._records.forget(delivery)

    async def ack(self, delivery: Delivery) -> None:
        """Queue the entry's XACK; acks go out in a batch with this consumer's next read
        (or at ``wait_idle`` and close). A crash before that repeats at most ``prefetch``
        entries, which at-least-once allows."""
        d = self._own(delivery)
        self._acks.add(d.slot[0], d.entry_id)
        self._release(d)

    async def handled(self, key: str) -> bool:
        """Whether the group recorded ``key`` as handled (``HandledRecord``): one look
        (``MGET``) answers for every delivery of a batch (see ``HandledRecords``)."""
        return await self._records.handled(key)

    async def ack_handled(self, delivery: Delivery, key: str) -> None:
        """Record ``key`` (``SET`` with ``idempotency_ttl``), then ack: sent at once,
        with the acks queued meanwhile, in one script that writes the record first or,
        refused, nothing (``AckQueue``). Only a crash between the handler's return and
        this round trip repeats the event. When Redis cannot take it now, the record
        and the ack stay queued and go out before the next read."""
        d = self._own(delivery)
        self._acks.record(key)
        self._records.recorded(key)
        await self.ack(d)
        try:
            await self.flush_acks()
        except ResponseError:
            pass  # refused: kept queued (AckQueue.flush); the next read tries again
        except self._state.connection_errors:
            pass  # put back (AckQueue.flush): the next read sends them first

    async def nack(self, delivery: Delivery, delay: float, notes: FailureNotes) -> None:
        """Schedule the entry in the group's retry set, then XACK it (one Lua script).

        An entry deleted or trimmed from its stream meanwhile is dead-lettered instead,
        as ``deleted``, with the fields this consumer holds: never dropped.
        """
        d = self._own(delivery)
        await self._settler.retry(d, delay, notes)
        self._release(d)
        due = anyio.current_time() + max(0.0, delay)
        self._promote_at = min(self._promote_at, due)
        self._retry_due = min(self._retry_due, due)

    async def dead_letter(self, delivery: Delivery, notes: FailureNotes) -> None:
        """Copy the entry's raw fields to the group's dead-letter stream, then XACK it;
        the fields this consumer holds when the entry was deleted from its stream."""
        d = self._own(delivery)
        await self._settler.dead_letter(d, notes)
        self._release(d)

    async def aclose(self) -> None:
        """Stop reading; send the queued acks; hand the entries this consumer still holds
        back to the group."""
        if self._closed:
            return
        self._closed = True
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
        self._suspects.done.set()
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLOSE_TIMEOUT):
            if self._link is not None:
                await self._link.disconnect(nowait=True)  # the cancelled read's, if any
            self._acks.put_back(self._acks.sending)  # maybe not applied: XACK repeats
            self._acks.sending = {}
            await self._send_last_acks()
            await self._hand_back()

    async def _send_last_acks(self) -> None:
        try:
            await self.flush_acks()
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not send the last acks of %s (%s); they will be redelivered",
                self._group,
                type(exc).__name__,
            )

    async def _hand_back(self) -> None:
        held = self.held_entries()
        self._buffer.clear()
        self._held.clear()
        self._suspects.clear()
        try:
            await self._state.release(held, self._group)
            if not any(held.values()):
                await self._state.forget_consumer(self._keys, self._group)
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not hand back the entries held in %s (%s); they wait for the claim timeout",
                self._group,
                type(exc).__name__,
            )
