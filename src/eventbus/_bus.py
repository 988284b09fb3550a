"""``EventBus``: publish events, run subscribers, drain, and manage dead letters."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TypeVar

import anyio
import anyio.abc

from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, Codec, EventMessage
from ._consumer import Consumer
from ._deadletter import DeadLetter, from_stored
from ._envelope import Envelope, EventIdGenerator
from ._errors import BusStateError, ConfigurationError, ImmediateHandlerError, PublishError
from ._event import Event
from ._handling import logger
from ._immediate import run_immediate
from ._middleware import Middleware
from ._registry import Registry
from ._retry import RetryPolicy
from ._subscriber import Handler, Subscriber
from .transports._protocol import Connection, Transport
from .transports.memory import InMemoryTransport

__all__ = ["EventBus"]

H = TypeVar("H", bound=Handler)
_EMPTY: Mapping[str, str] = MappingProxyType({})


class _State(enum.Enum):
    NEW = "not started"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class EventBus:
    """Publishes events and runs the subscribers of one application (one worker).

    ::

        bus = EventBus()                  # InMemoryTransport() by default
        bus.include(orders)               # a Registry, or @bus.subscribe(...) directly
        async with bus:                   # connects and starts the workers
            await bus.publish(OrderCreated(order_id="o-1", total=Decimal("9.90")))
            await bus.drain()             # until every published event is done

    - ``transport``: where events travel (default: a new ``InMemoryTransport()``).
    - ``middleware``: ``Middleware`` instances around every publish and handler call.
    - ``max_payload_bytes``: the largest encoded event (default 1 MiB), checked wherever
      an event is turned into bytes.
    - ``shutdown_grace``: seconds the bus may take to close (default 10). Leaving
      ``async with bus:`` stops taking new work and lets in-flight handlers finish; on a
      transport that keeps nothing across a restart (in memory) it first handles what is
      queued. What still runs at the deadline is cancelled, neither acked nor
      dead-lettered, and redelivered to the next worker of its group.

    A bus is a worker of every group it has subscribers for: two buses on one transport
    share the events of a group. A bus without subscribers only publishes. A bus runs
    once: after ``async with`` it is closed. Methods are safe to call from any task of
    the event loop the bus was started in.
    """

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        middleware: Sequence[Middleware] = (),
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        shutdown_grace: float = 10.0,
    ) -> None:
        if not isinstance(shutdown_grace, int | float) or shutdown_grace < 0:
            raise ConfigurationError("shutdown_grace must be a number of seconds >= 0")
        self.transport: Transport = transport if transport is not None else InMemoryTransport()
        self.codec = Codec(max_payload_bytes=max_payload_bytes)
        self.middleware: list[Middleware] = list(middleware)
        self.stopping = False
        self._grace = float(shutdown_grace)
        self._registry = Registry()
        self._immediate: dict[type[Event], list[Subscriber]] = {}
        self._ids = EventIdGenerator().next_id
        self._wire: dict[type[Event], tuple[str, int]] = {}
        self._state = _State.NEW
        self._conn: Connection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._consumers: list[Consumer] = []
        self._dead_errors: deque[BaseException] = deque(maxlen=100)
        self._serve_scope: anyio.CancelScope | None = None

    # -- composing -------------------------------------------------------------------

    def subscribe(
        self,
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        timeout: float | None = None,
        mode: str = "background",
    ) -> Callable[[H], H]:
        """Subscribe a handler on this bus; the same options as ``Registry.subscribe``."""
        registry = Registry()
        decorate = registry.subscribe(
            group=group, retry=retry, concurrency=concurrency, timeout=timeout, mode=mode
        )

        def apply(handler: H) -> H:
            decorate(handler)
            self.include(registry)
            return handler

        return apply

    def include(self, registry: Registry) -> None:
        """Add every subscriber of ``registry``; modules compose without knowing each other.

        Raises ``DuplicateSubscriberError`` when a group would get two subscribers for
        one event type, ``ConfigurationError`` when two event classes share a wire name,
        and ``BusStateError`` once the bus has started.
        """
        if self._state is not _State.NEW:
            raise BusStateError("include() registries before the bus starts")
        candidate = Registry()
        candidate.include(self._registry)
        candidate.include(registry)
        self.codec.register(t for sub in registry for t in sub.event_types)
        self._registry = candidate
        self._immediate = {}
        for sub in candidate:
            if sub.mode == "immediate":
                for event_type in sub.event_types:
                    self._immediate.setdefault(event_type, []).append(sub)

    @property
    def subscribers(self) -> list[Subscriber]:
        """The subscribers of this bus, in the order they were added."""
        return list(self._registry)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        if self._state is not _State.NEW:
            raise BusStateError(f"a bus runs once; this one is {self._state.value}")
        self._conn = await self.transport.connect()
        self._state = _State.RUNNING
        self._task_group = anyio.create_task_group()
        self._serve_scope = anyio.CancelScope()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._serve_connection)
        try:
            await self._start_consumers()
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._close(exc_type, exc, tb)

    async def _start_consumers(self) -> None:
        assert self._conn is not None
        assert self._task_group is not None
        for sub in self._registry:
            if sub.mode != "background":
                continue
            limiters = _lane_limiters(sub)
            for event_type in sub.event_types:
                subscription = await self._conn.subscribe(event_type.event_name, sub.group)
                limiter = limiters[event_type.event_urgent]
                consumer = Consumer(self, sub, subscription, limiter, event_type)
                consumer.start(self._task_group)
                self._consumers.append(consumer)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._state is not _State.RUNNING:
            return None
        self._state = _State.STOPPING
        assert self._task_group is not None
        assert self._conn is not None
        deadline = anyio.current_time() + self._grace
        if exc is None and self._consumers and not self.transport.features.survives_restart:
            await self._drain_before_stop()
        self.stopping = True
        for consumer in self._consumers:
            consumer.stop()
        self._task_group.start_soon(
            self._cancel_after_grace, self._task_group.cancel_scope, deadline
        )
        try:
            await self._task_group.__aexit__(None, None, None)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self._conn.aclose()
            finally:
                self._state = _State.CLOSED
        return None

    async def _serve_connection(self) -> None:
        """Run the connection's background work until the consumers have stopped."""
        assert self._conn is not None
        assert self._serve_scope is not None
        with self._serve_scope:
            await self._conn.serve()

    async def _drain_before_stop(self) -> None:
        """Nothing outlives the process on this transport: finish queued work first."""
        assert self._conn is not None
        with anyio.move_on_after(self._grace) as scope:
            await self._conn.wait_idle()
        if scope.cancelled_caught:
            logger.warning(
                "events still queued after the shutdown grace of %.1f s stay in the "
                "in-memory transport; they are lost when the process exits",
                self._grace,
            )

    async def _cancel_after_grace(self, scope: anyio.CancelScope, deadline: float) -> None:
        """Wait for the consumer loops to finish; cancel them at the deadline."""
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            for consumer in self._consumers:
                await consumer.wait_stopped()
            if self._serve_scope is not None:
                self._serve_scope.cancel()
            return
        logger.warning("handlers still running after %.1f s were cancelled", self._grace)
        scope.cancel()

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
    ) -> Envelope:
        """Publish ``event`` to every group subscribed to its type; return its envelope.

        Returns once the transport accepted the event (and immediate subscribers ran).
        Raises ``BusStateError`` outside ``async with bus:``, ``PublishTimeoutError``
        when the transport had no room within ``timeout`` seconds,
        ``PayloadTooLargeError`` when a transport encoded it past the size limit,
        ``TransportError`` when the transport failed, and ``ImmediateHandlerError`` when
        an immediate subscriber failed (the event was published all the same).
        """
        if self._conn is None or self._state is _State.CLOSED:
            raise BusStateError(f"publish() on a bus that is {self._state.value}")
        event_type = type(event)
        wire = self._wire.get(event_type)
        if wire is None:  # first event of its type: check it once
            envelope = self._envelope(event, headers, correlation_id, causation_id)
        else:  # the hot path, inlined
            event_id = self._ids()
            envelope = Envelope(
                event_id,
                wire[0],
                wire[1],
                datetime.now(UTC),
                correlation_id or event_id,
                causation_id,
                _EMPTY if headers is None else _checked_headers(headers),
            )
        if self.middleware:
            await self._publish_through(0, event, envelope, timeout)
            return envelope
        await self._conn.publish(
            envelope.name, EventMessage(event, envelope, self.codec), timeout=timeout
        )
        immediate = self._immediate.get(event_type)
        if immediate:
            await run_immediate(immediate, event, envelope, self.publish, self.middleware)
        return envelope

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
    ) -> list[Envelope]:
        """Publish several events at once, in order; return their envelopes.

        The transport may send them in one round trip (Redis pipelines the writes). The
        same errors as ``publish()``; on a transport failure part of the batch may have
        been stored (``PublishOutcomeUnknownError`` says the outcome is unknown).
        Immediate subscribers run after the whole batch is written, for every event; the
        first ``ImmediateHandlerError`` is raised after all of them ran.
        """
        conn = self._connection()
        batch = [(e, self._envelope(e, headers, correlation_id, causation_id)) for e in events]
        first: ImmediateHandlerError | None = None
        if self.middleware:
            for event, envelope in batch:
                try:
                    await self._publish_through(0, event, envelope, timeout)
                except ImmediateHandlerError as exc:  # the event was published: go on
                    first = first or exc
        else:
            items = [(env.name, EventMessage(e, env, self.codec)) for e, env in batch]
            await conn.publish_many(items, timeout=timeout)
            for event, envelope in batch:
                immediate = self._immediate.get(type(event))
                if immediate:
                    try:
                        await run_immediate(
                            immediate, event, envelope, self.publish, self.middleware
                        )
                    except ImmediateHandlerError as exc:
                        first = first or exc
        if first is not None:
            raise first
        return [envelope for _, envelope in batch]

    def _envelope(
        self,
        event: Event,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Envelope:
        event_type = type(event)
        wire = self._wire.get(event_type)
        if wire is None:
            if not isinstance(event, Event) or event_type is Event:
                raise PublishError(
                    f"publish() takes an Event subclass instance, not {event_type!r}"
                )
            wire = self._wire[event_type] = (event_type.event_name, event_type.event_version)
        event_id = self._ids()
        return Envelope(
            event_id,
            wire[0],
            wire[1],
            datetime.now(UTC),
            correlation_id or event_id,
            causation_id,
            _EMPTY if headers is None else _checked_headers(headers),
        )

    async def _publish_through(
        self, index: int, event: Event, envelope: Envelope, timeout: float | None
    ) -> None:
        if index == len(self.middleware):
            await self._publish_now(event, envelope, timeout)
            return

        async def call_next() -> None:
            await self._publish_through(index + 1, event, envelope, timeout)

        await self.middleware[index].on_publish(event, envelope, call_next)

    async def _publish_now(self, event: Event, envelope: Envelope, timeout: float | None) -> None:
        assert self._conn is not None
        await self._conn.publish(
            envelope.name, EventMessage(event, envelope, self.codec), timeout=timeout
        )
        immediate = self._immediate.get(type(event))
        if immediate:
            await run_immediate(immediate, event, envelope, self.publish, self.middleware)

    # -- waiting and dead letters -----------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled or dead-lettered.

        Waits for every group of the transport, including groups of other buses that
        share it. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        conn = self._connection()
        with anyio.fail_after(timeout):
            await conn.wait_idle()

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``group`` (of every group when None), oldest first."""
        stored = await self._connection().dead_letters(group)
        return [from_stored(s, self.codec) for s in stored]

    async def replay_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Deliver dead letters again, each to its own group only, as a first attempt.

        ``ids`` picks some (``DeadLetter.id``); None takes all of ``group``. Returns how
        many were replayed; they leave the dead letters.
        """
        return await self._connection().replay_dead_letters(group, ids)

    async def purge_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all of ``group`` when ``ids`` is None); return the count."""
        return await self._connection().purge_dead_letters(group, ids)

    def _record_dead_letter(self, error: BaseException) -> None:
        """Keep the error of a dead letter (the last 100) for ``eventbus.testing.drain``."""
        self._dead_errors.append(error)

    def _take_dead_letter_errors(self) -> list[BaseException]:
        """The errors that dead-lettered events since the last call, oldest first."""
        errors = list(self._dead_errors)
        self._dead_errors.clear()
        return errors

    def _connection(self) -> Connection:
        if self._conn is None or self._state is _State.CLOSED:
            raise BusStateError(f"the bus is {self._state.value}; use it inside `async with bus:`")
        return self._conn


def _lane_limiters(sub: Subscriber) -> dict[bool, anyio.CapacityLimiter | None]:
    """One shared limiter per lane when a subscriber takes several types of that lane."""
    limiters: dict[bool, anyio.CapacityLimiter | None] = {}
    for urgent in (False, True):
        count = sum(1 for t in sub.event_types if t.event_urgent is urgent)
        limiters[urgent] = anyio.CapacityLimiter(sub.concurrency) if count > 1 else None
    return limiters


def _checked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise PublishError("headers must map non-empty str keys to str values")
    return MappingProxyType(dict(headers))
