"""``InMemoryTransport``: delivery between buses of one process, the default transport."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import anyio

from eventbus._clock import Clock, MonotonicClock
from eventbus._errors import ConfigurationError, TransportClosedError
from eventbus._options import check_seconds, check_start

from ._contract import (
    NO_BYTES,
    Connection,
    Delivery,
    FailureNotes,
    Features,
    GroupStats,
    Message,
    StoredDeadLetter,
    Subscription,
)
from ._memory_state import Group, MemoryState

__all__ = ["InMemoryTransport"]

_MISSING = object()


class InMemoryTransport:
    """Moves events between the buses of one process, through bounded queues.

    - ``max_queue`` (default 10,000): messages waiting per group and topic. A publish to
      a full group waits for room; ``publish(timeout=)`` raises ``PublishTimeoutError``.
    - ``history`` (default 10,000): the last messages of each topic, kept so that a group
      that subscribes later still receives what was published before it (0 keeps none).
    - ``clock``: where retry delays are measured (``eventbus.testing.VirtualClock`` runs
      them without waiting).
    - ``serialize``: carry bytes only, as a network transport does: the bus encodes
      every event at publish and decodes it on delivery (payload size limit included).
      Off by default: the connection then also offers ``ReferencePublishing``, and the
      bus hands events to subscribers by reference, never as bytes (events are
      immutable, so subscribers share the instance).
    - ``idempotency_ttl`` (seconds, default one day): how long a group remembers the
      event ids its idempotent subscribers handled (``HandledRecord``).

    Nothing survives the process. Share one instance between buses to connect them. A
    group lives as long as the transport, also after its last bus closed: its events wait
    for its next worker, ``drain()`` waits for them, and once its queue is full,
    publishers of its event types wait too. Use one transport per application run.
    """

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        history: int = 10_000,
        clock: Clock | None = None,
        serialize: bool = False,
        idempotency_ttl: float = 86_400.0,
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError("InMemoryTransport(max_queue=...) must be an int >= 1")
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ConfigurationError("InMemoryTransport(history=...) must be an int >= 0")
        ttl = check_seconds("InMemoryTransport", "idempotency_ttl", idempotency_ttl, zero=False)
        self._state = MemoryState(max_queue, history, clock or MonotonicClock(), ttl)
        self._serialize = serialize

    @property
    def features(self) -> Features:
        """History for late groups, bounded queues, nothing kept across a restart."""
        return Features(history_for_new_groups=self._state.history_len > 0, bounded=True)

    @property
    def clock(self) -> Clock:
        """Where retry delays are measured (the bus waits on it too)."""
        return self._state.clock

    async def connect(self) -> Connection:
        """Open a connection for one bus (never fails)."""
        if self._serialize:
            return _MemoryConnection(self._state)
        return _ReferenceConnection(self._state)


class _MemoryConnection:
    """A bus's connection to an ``InMemoryTransport``."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state
        self._subs: list[_MemorySubscription] = []
        self._closed = False

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """Queue a copy of ``message`` for every group of ``topic``; wait for room when full."""
        groups = self._groups(topic)
        if self._s.full(groups):
            await self._s.wait_for_room(groups, timeout)
        copy = Message(bytes(message.body), dict(message.headers))
        return self._s.append(topic, groups, copy, None)

    def _groups(self, topic: str) -> dict[str, Group]:
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
        return self._s.groups.get(topic) or self._s.topic_groups(topic)

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """Queue each ``(topic, message)`` in order."""
        return [await self.publish(topic, message, timeout=timeout) for topic, message in items]

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Join ``group`` on ``topic`` as a new consumer (creating the group when new)."""
        if self._closed:
            raise TransportClosedError("subscribe on a closed connection")
        sub = _MemorySubscription(self._s, self._s.join(topic, group))
        self._subs.append(sub)
        return sub

    async def declare_group(self, topic: str, group: str, start: str = "earliest") -> None:
        """Create ``group`` when new: with the history kept (``"earliest"``) or empty."""
        self._s.declare(topic, group, check_start(start))

    async def delete_group(self, group: str, topic: str | None = None) -> int:
        """Delete the group (refused while it has consumers in this process)."""
        found = self._s.matching(group, topic)
        for g in found:
            self._s.delete(g)
        return len(found)

    async def reset_group(self, group: str, to: str, topic: str | None = None) -> int:
        """Drop what the group has not handled; at ``"earliest"`` queue the history again."""
        check_start(to)
        found = self._s.matching(group, topic)
        for g in found:
            self._s.drop(g)
            if to == "earliest":
                self._s.fill(g)
        return len(found)

    async def wait_idle(self) -> None:
        """Return once no group of the transport has unfinished messages."""
        while self._s.outstanding > 0:
            waiter = anyio.Event()
            self._s.idle.append(waiter)
            await waiter.wait()

    async def dead_letters(self, group: str | None = None) -> Sequence[StoredDeadLetter]:
        """The dead letters of ``group`` (all groups when None), oldest first."""
        return self._s.select(group, None)

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Queue the chosen dead letters again for their own group, as attempt 1."""
        chosen = self._s.select(group, ids)
        for dead in chosen:
            self._s.dead.remove(dead)
            state = self._s.join(dead.topic, dead.group)
            state.ready.append(
                Delivery(dead.message_id, dead.topic, dead.message, reference=dead.reference)
            )
            self._s.outstanding += 1
            state.wake_receiver()
        return len(chosen)

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Delete the chosen dead letters."""
        chosen = self._s.select(group, ids)
        for dead in chosen:
            self._s.dead.remove(dead)
        return len(chosen)

    async def inspect(self) -> Sequence[GroupStats]:
        """Every group of the transport, sorted by topic then group."""
        return self._s.stats()

    async def groups(self) -> Sequence[tuple[str, str]]:
        """``(topic, group)`` of every group, sorted."""
        return [(stat.topic, stat.group) for stat in self._s.stats()]

    async def aclose(self) -> None:
        """Close every subscription of this connection, then the connection."""
        self._closed = True
        for sub in self._subs:
            await sub.aclose()
        self._subs.clear()


class _ReferenceConnection(_MemoryConnection):
    """A connection that also carries objects by reference (``serialize=False``)."""

    async def publish_reference(
        self, topic: str, reference: object, *, timeout: float | None = None
    ) -> str:
        """Queue ``reference`` itself for every group of ``topic``."""
        groups = self._groups(topic)
        if self._s.full(groups):
            await self._s.wait_for_room(groups, timeout)
        return self._s.append(topic, groups, NO_BYTES, reference)


class _MemorySubscription:
    """One consumer of a group on a topic."""

    def __init__(self, state: MemoryState, group: Group) -> None:
        self._s = state
        self._group = group
        self._inflight: dict[Delivery, None] = {}
        group.members.append(self._inflight)
        self._waiting: set[anyio.Event] = set()
        self._closed = False

    async def receive(self) -> Delivery | None:
        """The next delivery (due retries first), or None once closed."""
        group = self._group
        while not self._closed:
            next_due = self._s.promote_due(group) if group.retries else None
            if group.ready:
                delivery = group.ready.popleft()
                self._inflight[delivery] = None
                if group.space:
                    group.wake_publisher()
                return delivery
            await self._wait(next_due)
        return None

    async def _wait(self, next_due: float | None) -> None:
        waiter = anyio.Event()
        self._group.receivers.append(waiter)
        self._waiting.add(waiter)
        try:
            if next_due is None:
                await waiter.wait()
            else:
                await self._s.clock.wait(waiter, next_due)
        except BaseException:
            if waiter.is_set():  # woken for a message, but leaving: pass the wake-up on
                self._group.wake_receiver()
            raise
        finally:
            self._waiting.discard(waiter)
            if not waiter.is_set():
                with contextlib.suppress(ValueError):
                    self._group.receivers.remove(waiter)

    def _take(self, delivery: Delivery) -> None:
        if self._closed:
            raise TransportClosedError("the subscription is closed")
        try:
            del self._inflight[delivery]
        except KeyError:
            raise TransportClosedError(f"{delivery!r} is not in flight here") from None

    async def ack(self, delivery: Delivery) -> None:
        """Done with the message: never delivered to this group again."""
        if self._closed or self._inflight.pop(delivery, _MISSING) is _MISSING:
            self._take(delivery)  # raises the right error
        s = self._s
        s.outstanding -= 1
        if s.outstanding == 0:
            s.wake_idle()

    async def handled(self, key: str) -> bool:
        """Whether the group handled ``key`` within the last ``idempotency_ttl`` seconds."""
        return self._s.is_handled(self._group, key)

    async def ack_handled(self, delivery: Delivery, key: str) -> None:
        """Ack, and record ``key`` as handled by the group."""
        await self.ack(delivery)
        self._s.remember(self._group, key)

    async def nack(self, delivery: Delivery, delay: float, notes: FailureNotes) -> None:
        """Deliver the message to the group again after ``delay`` seconds."""
        self._take(delivery)
        d = delivery
        retry = Delivery(d.id, d.topic, d.message, d.attempt + 1, notes, d.reference)
        self._s.schedule(self._group, retry, delay)

    async def dead_letter(self, delivery: Delivery, notes: FailureNotes) -> None:
        """Keep the message among the group's dead letters."""
        self._take(delivery)
        self._s.add_dead_letter(self._group.name, delivery, notes)

    async def aclose(self) -> None:
        """Stop receiving; unacked deliveries go back to the front of the group's queue."""
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiting:
            waiter.set()
        group = self._group
        group.ready.extendleft(reversed(list(self._inflight)))
        group.members.remove(self._inflight)
        self._inflight.clear()
        if group.ready:
            group.wake_receiver()
