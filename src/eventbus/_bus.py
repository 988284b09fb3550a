"""``EventBus``: compose subscribers, run them, drain, and manage dead letters."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.abc

from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, Codec
from ._consumer import Consumer
from ._deadletter import DeadLetter, from_stored
from ._envelope import EventIdGenerator
from ._errors import BusStateError
from ._event import Event
from ._handling import logger
from ._middleware import Middleware
from ._options import check_seconds
from ._publishing import Publishing
from ._registry import Registry
from ._retry import RetryPolicy
from ._subscriber import Handler, Subscriber
from .transports._protocol import Connection, Transport
from .transports.memory import InMemoryTransport

__all__ = ["EventBus"]

H = TypeVar("H", bound=Handler)


class _State(enum.Enum):
    NEW = "not started"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class EventBus(Publishing):
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
        self._grace = check_seconds("EventBus", "shutdown_grace", shutdown_grace)
        self._transport: Transport = transport if transport is not None else InMemoryTransport()
        self._codec = Codec(max_payload_bytes=max_payload_bytes)
        self._middleware: list[Middleware] = list(middleware)
        self._stopping = False
        self._registry = Registry()
        self._immediate: dict[type[Event], list[Subscriber]] = {}
        self._wire: dict[type[Event], tuple[str, int]] = {}
        self._next_id = EventIdGenerator().next_id  # type: ignore[method-assign]
        self._state = _State.NEW
        self._conn: Connection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._serve_scope: anyio.CancelScope | None = None
        self._consumers: list[Consumer] = []
        self._dead_errors: deque[BaseException] = deque(maxlen=100)

    @property
    def transport(self) -> Transport:
        """The transport this bus publishes to and consumes from."""
        return self._transport

    @property
    def subscribers(self) -> list[Subscriber]:
        """The subscribers of this bus, in the order they were added."""
        return list(self._registry)

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

        All or nothing: raises ``DuplicateSubscriberError`` when a group would get two
        subscribers for one event type, ``ConfigurationError`` when two event classes
        share a wire name, and ``BusStateError`` once the bus has started. Including the
        same registry twice adds nothing the second time.
        """
        if self._state is not _State.NEW:
            raise BusStateError("include() registries before the bus starts")
        candidate = Registry()
        candidate.include(self._registry)
        candidate.include(registry)
        self._codec.register(t for sub in registry for t in sub.event_types)
        self._registry = candidate
        self._immediate = {}
        for sub in candidate:
            if sub.mode == "immediate":
                for event_type in sub.event_types:
                    self._immediate.setdefault(event_type, []).append(sub)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        """Connect and start the consumers; raises ``BusStateError`` on a second start and
        ``TransportError`` when the transport cannot connect."""
        if self._state is not _State.NEW:
            raise BusStateError(f"a bus runs once; this one is {self._state.value}")
        self._conn = await self._transport.connect()
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
        """Stop within ``shutdown_grace`` seconds (see the class docstring) and close."""
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
        failure: BaseException | None = None
        try:
            if self._should_drain(exc):
                await self._drain_before_stop(deadline)
        except BaseException as drain_error:  # cancelled while draining: stop at once
            failure = drain_error
        try:
            self._stop_consumers(deadline)
            if failure is None and isinstance(exc, Exception | None):
                await self._task_group.__aexit__(None, None, None)
            else:
                cause = failure or exc
                assert cause is not None
                await self._task_group.__aexit__(type(cause), cause, cause.__traceback__)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self._conn.aclose()
            finally:
                self._state = _State.CLOSED
                self._conn = None
        if failure is not None:
            raise failure
        return None

    def _should_drain(self, exc: BaseException | None) -> bool:
        """Finish queued work first when the transport keeps nothing across a restart."""
        if not self._consumers or self._transport.features.survives_restart:
            return False
        if isinstance(exc, Exception | None):
            return True
        logger.warning("the bus was interrupted: events still queued in memory are not handled")
        return False

    async def _drain_before_stop(self, deadline: float) -> None:
        assert self._conn is not None
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            await self._conn.wait_idle()
        if scope.cancelled_caught:
            logger.warning(
                "events still queued after the shutdown grace of %.1f s stay in the "
                "in-memory transport; they are lost when the process exits",
                self._grace,
            )

    def _stop_consumers(self, deadline: float) -> None:
        assert self._task_group is not None
        self._stopping = True
        for consumer in self._consumers:
            consumer.stop()
        self._task_group.start_soon(
            self._cancel_after_grace, self._task_group.cancel_scope, deadline
        )

    async def _serve_connection(self) -> None:
        """Run the connection's background work until the consumers have stopped."""
        assert self._conn is not None
        assert self._serve_scope is not None
        with self._serve_scope:
            await self._conn.serve()

    async def _cancel_after_grace(self, scope: anyio.CancelScope, deadline: float) -> None:
        """Wait for the consumer loops to finish; cancel what still runs at the deadline."""
        assert self._serve_scope is not None
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            for consumer in self._consumers:
                await consumer.wait_stopped()
        if all(consumer.stopped for consumer in self._consumers):
            self._serve_scope.cancel()
            return
        logger.warning("handlers still running at the end of the shutdown grace were cancelled")
        scope.cancel()

    @property
    def stopping(self) -> bool:
        """True once the bus has begun to stop: consumers take no new work."""
        return self._stopping

    @property
    def codec(self) -> Codec:
        """The bus's codec (for its consumers)."""
        return self._codec

    @property
    def middleware(self) -> Sequence[Middleware]:
        """The middleware, outermost first (read-only: give them to the constructor)."""
        return self._middleware

    # -- waiting and dead letters -----------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every event published so far is handled or dead-lettered.

        Waits for every group of the transport, including groups of other buses that
        share it (a group whose worker has stopped keeps it waiting). Raises
        ``TimeoutError`` after ``timeout`` seconds, ``BusStateError`` outside
        ``async with bus:``, ``TransportError`` when the transport fails.
        """
        conn = self._open_connection()
        with anyio.fail_after(timeout):
            await conn.wait_idle()

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``group`` (of every group when None), oldest first.

        Raises ``BusStateError`` outside ``async with bus:``, ``TransportError`` when the
        transport fails.
        """
        stored = await self._open_connection().dead_letters(group)
        return [from_stored(s, self._codec) for s in stored]

    async def replay_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Deliver dead letters again, each to its own group only, as a first attempt.

        ``ids`` picks some (``DeadLetter.id``); None takes all of ``group``. Returns how
        many were replayed; they leave the dead letters. Letters are moved one by one:
        consumers may handle the first before the last is moved.
        """
        return await self._open_connection().replay_dead_letters(group, ids)

    async def purge_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all of ``group`` when ``ids`` is None); return the count."""
        return await self._open_connection().purge_dead_letters(group, ids)

    def _record_dead_letter(self, error: BaseException) -> None:
        """Keep the error of a dead letter (the last 100) for ``eventbus.testing.drain``.

        The traceback is dropped (the dead letter keeps it as text), so that no frame,
        and no payload in its locals, is held.
        """
        self._dead_errors.append(error.with_traceback(None))

    def _take_dead_letter_errors(self) -> list[BaseException]:
        """The errors that dead-lettered events since the last call, oldest first."""
        errors = list(self._dead_errors)
        self._dead_errors.clear()
        return errors

    def _open_connection(self) -> Connection:
        if self._conn is None:
            raise BusStateError(f"the bus is {self._state.value}; use it inside `async with bus:`")
        return self._conn


def _lane_limiters(sub: Subscriber) -> dict[bool, anyio.CapacityLimiter | None]:
    """One shared limiter per lane when a subscriber takes several types of that lane."""
    limiters: dict[bool, anyio.CapacityLimiter | None] = {}
    for urgent in (False, True):
        count = sum(1 for t in sub.event_types if t.event_urgent is urgent)
        limiters[urgent] = anyio.CapacityLimiter(sub.concurrency) if count > 1 else None
    return limiters
