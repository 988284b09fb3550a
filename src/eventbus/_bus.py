"""``EventBus``: compose subscribers, publish, run the workers, drain, manage dead letters."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import anyio

from ._clock import Clock, clock_of, sleeper
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, Codec
from ._delivery import Delivering, run_immediate
from ._envelope import Envelope, EnvelopeFactory
from ._errors import (
    BusStateError,
    ConfigurationError,
)
from ._event import Event
from ._groups import check_consume, check_group_names, check_known, declare, split
from ._middleware import Middleware
from ._observer import Observer, Observers
from ._operations import Operations, State
from ._options import check_seconds
from ._outbox import OutboxStore
from ._partitions import keyed_headers, topic_of
from ._publisher import Publisher
from ._registry import Registry
from ._retry import RetryPolicy
from ._subscriber import Handler, Subscriber
from ._workers import Workers
from .transports._contract import (
    IdleWaiting,
    Transport,
)
from .transports.memory import InMemoryTransport

__all__ = ["EventBus"]

H = TypeVar("H", bound=Handler)

NEWER_VERSIONS = RetryPolicy(max_attempts=10, initial_delay=0.5, max_delay=60.0)
"""The default of ``EventBus(newer_versions=...)``."""


class EventBus(Operations):
    """Publishes events and runs the subscribers of one application (one worker).

    ::

        bus = EventBus()                  # InMemoryTransport() by default
        bus.include(orders)               # a Registry, or @bus.subscribe(...) directly
        async with bus:                   # connects and starts the workers
            await bus.publish(OrderCreated(order_id="o-1", total=Decimal("9.90")))
            await bus.drain()             # until every published event is done

    - ``transport``: where events travel (default: a new ``InMemoryTransport()``).
    - ``middleware``: ``Middleware`` instances around every publish and handler call.
    - ``observers``: ``Observer`` instances told of publishes and handler outcomes.
    - ``max_payload_bytes``: the largest encoded event (default 1 MiB), checked wherever
      an event is turned into bytes. Events that the in-memory transport passes by
      reference never become bytes and are not checked (encoding each one would cost
      about half of an in-memory delivery); ``InMemoryTransport(serialize=True)``
      checks them as Redis does.
    - ``shutdown_grace``: seconds the bus may take to close (default 10). Leaving
      ``async with bus:`` stops taking new work and lets in-flight handlers finish; on a
      transport that keeps nothing across a restart (in memory) it first handles what is
      queued. What still runs at the deadline is cancelled, neither acked nor
      dead-lettered, and redelivered to the next worker of its group.
    - ``clock``: where the bus measures the delays of retry policies (between the
      attempts of an immediate subscriber; the transport schedules background retries).
      Default: the transport's ``clock`` when it has one
      (``InMemoryTransport(clock=VirtualClock())``), else real time. Waits for the
      outside world (a failing transport) are always real time.
    - ``outbox``: an ``eventbus.outbox.Outbox``: ``publish(event, transaction=conn)``
      writes the event in the application's database transaction, and this bus runs a
      relay that publishes committed events (see ``docs/outbox.md``).
    - ``newer_versions``: what a worker does with an event of a version newer than its
      class (a rolling upgrade: an upgraded worker of the group may run beside it). On a
      transport that outlives the process, the event goes back to its group after the
      policy's delay, until ``max_attempts`` deliveries; then it is dead-lettered as
      ``wrong-version``. Default ``RetryPolicy(max_attempts=10, initial_delay=0.5,
      max_delay=60)`` (about four minutes); ``RetryPolicy.none()`` dead-letters at once,
      as the in-memory transport always does (nothing else could take it there).
    - ``consume``: True (default) consumes for every background subscriber; False makes
      a bus that publishes and runs immediate subscribers but leaves the background
      work to worker processes (a web API); a collection of group names consumes for
      those groups only. Groups not consumed are declared on the transport at start
      (with ``GroupManagement``), so that what is published before their first worker
      starts is kept for them.

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
        observers: Iterable[Observer] = (),
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        shutdown_grace: float = 10.0,
        clock: Clock | None = None,
        outbox: OutboxStore | None = None,
        newer_versions: RetryPolicy = NEWER_VERSIONS,
        consume: bool | Collection[str] = True,
    ) -> None:
        self._grace = check_seconds("EventBus", "shutdown_grace", shutdown_grace)
        super().__init__(
            transport if transport is not None else InMemoryTransport(),
            Codec(max_payload_bytes=max_payload_bytes),
        )
        self._middleware: tuple[Middleware, ...] = tuple(middleware)
        self._on_publish = tuple(m.on_publish for m in self._middleware)
        self._clock = clock or clock_of(self._transport)
        self._sleep = sleeper(self._clock)
        self._observers = Observers(last=self._dead_errors)
        for observer in observers:
            self._observers.add(observer)
        self._registry = Registry()
        self._immediate: dict[type[Event], list[Delivering]] = {}
        self._envelopes = EnvelopeFactory()
        self._publisher: Publisher | None = None
        self._workers = Workers(self._codec)
        self._outbox = outbox
        if not isinstance(newer_versions, RetryPolicy):
            raise ConfigurationError("EventBus(newer_versions=...) takes a RetryPolicy")
        self._newer = newer_versions
        self._consume = check_consume(consume)

    @property
    def transport(self) -> Transport:
        """The transport this bus publishes to and consumes from."""
        return self._transport

    @property
    def subscribers(self) -> list[Subscriber]:
        """The subscribers of this bus, in the order they were added."""
        return list(self._registry)

    @property
    def middleware(self) -> Sequence[Middleware]:
        """The middleware, outermost first (read-only: give them to the constructor)."""
        return self._middleware

    @property
    def stopping(self) -> bool:
        """True once the bus has begun to stop: consumers take no new work."""
        return self._workers.stopping

    # -- composing -------------------------------------------------------------------

    def subscribe(
        self,
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        timeout: float | None = None,
        mode: str = "background",
        idempotent: bool = False,
        start: str = "earliest",
    ) -> Callable[[H], H]:
        """Subscribe a handler on this bus; the same options as ``Registry.subscribe``."""
        registry = Registry()
        decorate = registry.subscribe(
            group=group,
            retry=retry,
            concurrency=concurrency,
            timeout=timeout,
            mode=mode,
            idempotent=idempotent,
            start=start,
        )

        def apply(handler: H) -> H:
            decorate(handler)
            self.include(registry)
            return handler

        return apply

    def include(self, registry: Registry) -> None:
        """Add every subscriber of ``registry``; modules compose without knowing each other.

        All or nothing: raises ``DuplicateSubscriberError`` when a group would get two
        subscribers for one event type, ``ConfigurationError`` when two event classes
        share a wire name, and ``BusStateError`` once the bus has started. Including the
        same registry twice adds nothing the second time.
        """
        if self._state is not State.NEW:
            raise BusStateError("include() registries before the bus starts")
        candidate = Registry()
        candidate.include(self._registry)
        candidate.include(registry)
        self._codec.register(t for sub in registry for t in sub.event_types)
        self._registry = candidate
        self._immediate = {}
        for sub in candidate:
            if sub.mode == "immediate":
                engine = self._engine(sub)
                for event_type in sub.event_types:
                    self._immediate.setdefault(event_type, []).append(engine)

    def register(self, *event_types: type[Event]) -> None:
        """Make event types decodable without subscribing to them (an operations
        process that lists dead letters). ``ConfigurationError`` for something that is
        not an ``Event`` subclass, or a second class under a taken wire name."""
        for event_type in event_types:
            if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                raise ConfigurationError(f"register() takes Event classes, not {event_type!r}")
        self._codec.register(event_types)

    def consume_only(self, groups: Iterable[str]) -> None:
        """Consume for these groups only (``eventbus worker --group``); the others are
        declared. Call it before ``async with bus:``; a name that is not a group of a
        background subscriber raises ``ConfigurationError`` at start."""
        if self._state is not State.NEW:
            raise BusStateError(f"consume_only() before the bus starts; it is {self._state.value}")
        self._consume = check_consume(frozenset(groups))

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of what happens from now on (see ``Observer``)."""
        self._observers.add(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling ``observer``; nothing happens when it was not added."""
        self._observers.remove(observer)

    def _engine(self, sub: Subscriber) -> Delivering:
        newer = self._newer if self._transport.features.survives_restart else None
        return Delivering(sub, self._middleware, self.publish, self._observers, self._sleep, newer)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        """Connect and start the consumers; raises ``BusStateError`` on a second start and
        ``TransportError`` when the transport cannot connect. After a failed start the
        bus is closed again and may be started once more (a worker waiting for Redis)."""
        if self._state is not State.NEW:
            raise BusStateError(f"a bus runs once; this one is {self._state.value}")
        subscribers = list(self._registry)
        check_group_names(self._transport, subscribers)
        if isinstance(self._consume, frozenset):
            check_known(self._consume, subscribers)
        consumed, declared = split(subscribers, self._consume)
        conn = self._conn = await self._transport.connect()
        self._publisher = Publisher(
            conn, self._codec, self._observers, self._immediate, self._on_publish
        )
        self._state = State.RUNNING
        try:
            await declare(conn, declared, all_=True)
            await declare(conn, consumed, all_=False)
            relay = await self._outbox.start(conn) if self._outbox else None
            engines = [self._engine(s) for s in consumed]
            await self._workers.start(conn, engines, relay)
        except BaseException as exc:
            await self._close(exc)
            self._state, self._workers = State.NEW, Workers(self._codec)  # may try again
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop within ``shutdown_grace`` seconds (see the class docstring) and close."""
        await self._close(exc)
        return None

    async def _close(self, exc: BaseException | None) -> None:
        if self._state is not State.RUNNING:
            return
        self._state = State.STOPPING
        conn = self._conn
        assert conn is not None
        try:
            drain = not self._transport.features.survives_restart
            await self._workers.stop(conn, exc, self._grace, drain=drain)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()
            finally:
                self._state = State.CLOSED
                self._conn = self._publisher = None

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
        transaction: object | None = None,
        key: str | None = None,
    ) -> Envelope:
        """Publish ``event`` to every group subscribed to its type; return its envelope.

        Returns once the transport accepted the event (and immediate subscribers ran).
        Raises ``BusStateError`` outside ``async with bus:``, ``PublishError`` for
        something that is not an event or bad headers or ids, ``PublishTimeoutError``
        when the transport had no room within ``timeout`` seconds,
        ``PayloadTooLargeError`` when the event encodes past the size limit,
        ``EncodeError`` when a field (or, on Redis, an id) cannot be encoded,
        ``PublishOutcomeUnknownError`` when the transport cannot tell whether it stored
        the event, ``PublishRefusedError`` (a ``TransportError``) when the backend
        refused it, ``TransportError`` when the transport failed, and
        ``ImmediateHandlerError`` when an immediate subscriber failed (the event was
        published all the same). Safe to call from many tasks at once.

        ``transaction``: an open SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` of
        the bus's ``outbox``: the event is written into the outbox table within it and
        exists if and only if it commits; the relay publishes it after the commit.
        Immediate subscribers run at once, inside the open transaction. ``timeout``
        does not apply; ``ConfigurationError`` when the bus has no outbox.

        ``key``: for an event type with ``partitions``, the partition key of this event
        (instead of its ``partition_key`` field or its id), sent in the
        ``partition-key`` header; ``PublishError`` for a type with one partition.
        """
        publisher = self._publisher
        if publisher is None:
            raise self._not_running()
        if key is not None:
            headers = keyed_headers(type(event), headers, key)
        envelope = self._envelopes.make(event, headers, correlation_id, causation_id)
        if transaction is not None:
            return (await self._stage(publisher, transaction, [(event, envelope)]))[0]
        if self._on_publish:
            done = await publisher.write_around(event, envelope, None, timeout, True)
            return envelope if done is None else done[1]
        # ``publisher.write``, inline: the call would cost 0.3 us of a 3.6 us publish.
        topic = envelope.name if event.event_partitions == 1 else topic_of(event, envelope)
        if publisher.by_reference:
            await publisher.publish_to(topic, (event, envelope), timeout=timeout)
        else:
            message = self._codec.encode(event, envelope)
            await publisher.publish_to(topic, message, timeout=timeout)
        if self._observers.published:
            self._observers.published_event(event, envelope)
        engines = self._immediate.get(type(event))
        if engines:
            await run_immediate(engines, event, envelope)
        return envelope

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
        transaction: object | None = None,
        key: str | None = None,
    ) -> list[Envelope]:
        """Publish several events at once, in order; return their envelopes.

        The transport may send them in one round trip (Redis pipelines the writes); the
        middleware still sees each event (then they go one by one). Every event is
        checked (and encoded) before any is sent. The same errors as ``publish()``; on a
        failure midway, the error says what part of the batch was stored, so that a
        retry duplicates nothing known:

        - ``PublishOutcomeUnknownError``: ``.stored`` of the first events are stored; the
          others may or may not be (republish ``events[exc.stored:]`` if a duplicate of
          those is acceptable, or check first).
        - ``PublishRefusedError`` (a ``TransportError``): the transport refused some
          events; ``.stored_ids`` has, for each event sent in order, its id when stored
          and None when not. Events past its end were not sent.

        After another error, nothing of a batch sent in one round trip is stored; sent one
        by one, the events before the failing one are. Immediate
        subscribers run after the whole batch is written, for every event; the first
        ``ImmediateHandlerError`` is raised after all of them.

        ``transaction``: as for ``publish()``, every event written in that transaction.
        ``key``: as for ``publish()``, the partition key of every event of the batch.
        """
        publisher = self._publisher
        if publisher is None:
            raise self._not_running()
        make = self._envelopes.make
        batch = [
            (e, make(e, keyed_headers(type(e), headers, key), correlation_id, causation_id))
            for e in events
        ]
        if transaction is not None:
            return await self._stage(publisher, transaction, batch)
        return await publisher.write_many(batch, timeout)

    async def _stage(
        self, publisher: Publisher, transaction: object, batch: list[tuple[Event, Envelope]]
    ) -> list[Envelope]:
        """Write events into the outbox within the application's transaction."""
        if self._outbox is None:
            raise ConfigurationError(
                "publish(transaction=...) needs a bus with an outbox: "
                "EventBus(..., outbox=Outbox(engine)) (from eventbus.outbox import Outbox)"
            )
        return await publisher.stage(self._outbox, transaction, batch)

    # -- waiting and dead letters -----------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled or dead-lettered.

        Waits for every group of the transport, including groups of other buses that
        share it (a group whose worker has stopped keeps it waiting). Raises
        ``TimeoutError`` after ``timeout`` seconds, ``BusStateError`` outside
        ``async with bus:``, ``ConfigurationError`` when the transport cannot tell
        (no ``IdleWaiting``), ``TransportError`` when the transport fails. With an
        outbox, first publishes the rows committed so far (those other relays hold
        aside).
        """
        idle = self._open_connection()
        if not isinstance(idle, IdleWaiting):
            raise self._lacks("IdleWaiting", "drain()")
        with anyio.fail_after(timeout):
            await self._workers.flush_outbox()
            await idle.wait_idle()
