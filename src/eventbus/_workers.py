"""``Workers``: the background work of one bus, started together and stopped within a grace."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import anyio
import anyio.abc

from ._codec import Codec
from ._consumer import Consumer
from ._delivery import Delivering, logger
from ._errors import ConfigurationError, EventBusError
from ._event import Event
from ._outbox import OutboxRelay
from ._partitions import earlier_topic, leftovers, topics_of
from ._subscriber import Subscriber
from .transports._contract import (
    Connection,
    GroupListing,
    GroupStats,
    HandledRecord,
    IdleWaiting,
    Inspection,
    Serving,
)

__all__ = ["Workers"]


class Workers:
    """One ``Consumer`` per background subscriber and event type, the connection's
    ``serve()`` when it has one, and the outbox relay when there is one, all in one task
    group.

    The urgent and the background event types of a subscriber count their
    ``concurrency`` apart (each lane has its own limit), so an urgent event never waits
    for a slot that background work holds.
    """

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._consumers: list[Consumer] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._serve_scope: anyio.CancelScope | None = None
        self._relay: OutboxRelay | None = None
        self.stopping = False

    async def start(
        self,
        conn: Connection,
        engines: Iterable[Delivering],
        relay: OutboxRelay | None = None,
    ) -> None:
        """Run the connection's ``serve()`` and the outbox ``relay`` until the consumers
        have stopped, and subscribe each engine's subscriber to each of its event types.
        On a failure, call ``stop()`` before letting the error propagate."""
        task_group = self._task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._serve_scope = anyio.CancelScope()
        self._relay = relay
        jobs: list[Callable[[], Coroutine[Any, Any, None]]] = [relay.run] if relay else []
        if isinstance(conn, Serving):
            jobs.append(conn.serve)
        if jobs:
            task_group.start_soon(self._serve, jobs)
        engines = list(engines)
        stats = await _stats(conn, engines) if engines else ()
        for engine in engines:
            await self._subscribe(conn, engine, task_group, stats)

    async def _subscribe(
        self,
        conn: Connection,
        engine: Delivering,
        task_group: anyio.abc.TaskGroup,
        stats: Sequence[GroupStats],
    ) -> None:
        """Subscribe to every topic of each event type: its partitions, and those of an
        earlier number of partitions that still hold work for the group (to drain)."""
        limiters = _lane_limiters(engine.sub)
        for event_type in engine.sub.event_types:
            current = topics_of(event_type)
            old = leftovers(event_type, engine.sub.group, stats)
            for topic in (*current, *old):
                subscription = await conn.subscribe(topic, engine.sub.group)
                if engine.sub.idempotent and not isinstance(subscription, HandledRecord):
                    await subscription.aclose()
                    raise ConfigurationError(
                        f"idempotent=True of {engine.sub.name} needs a transport whose "
                        "subscriptions offer HandledRecord; "
                        f"{type(subscription).__name__} does not"
                    )
                # concurrency counts per partition: its own loops bound each one
                partitioned = len(current) > 1 or bool(old)
                limiter = None if partitioned else limiters[event_type.event_urgent]
                consumer = Consumer(engine, subscription, event_type, self._codec, limiter)
                consumer.start(task_group)
                self._consumers.append(consumer)

    async def flush_outbox(self) -> None:
        """Publish the outbox rows committed so far (nothing without a relay)."""
        if self._relay is not None:
            await self._relay.flush()

    async def stop(
        self, conn: Connection, exc: BaseException | None, grace: float, *, drain: bool
    ) -> None:
        """Stop within ``grace`` seconds: first publish what was committed to the outbox,
        and handle what is queued when ``drain`` (a transport that keeps nothing across a
        restart); then take no new work, let busy handlers finish, and cancel what still
        runs at the deadline."""
        if self._task_group is None:
            return  # never started
        deadline = anyio.current_time() + grace
        if isinstance(exc, Exception | None):
            await self._flush_before_stop(grace)
        failure: BaseException | None = None
        try:
            if drain and isinstance(conn, IdleWaiting) and self._should_drain(exc):
                await self._drain(conn, deadline, grace)
        except BaseException as drain_error:  # cancelled while draining: stop at once
            failure = drain_error
        self.stopping = True
        for consumer in self._consumers:
            consumer.stop()
        self._task_group.start_soon(self._cancel_after_grace, deadline)
        if failure is None and isinstance(exc, Exception | None):
            await self._task_group.__aexit__(None, None, None)
        else:
            cause = failure or exc
            assert cause is not None
            await self._task_group.__aexit__(type(cause), cause, cause.__traceback__)
        if failure is not None:
            raise failure

    async def _flush_before_stop(self, grace: float) -> None:
        """Publish the committed outbox rows within ``grace``; the rest waits in the
        table for the next relay."""
        with anyio.move_on_after(grace):
            try:
                await self.flush_outbox()
            except Exception as error:
                logger.warning(
                    "the outbox relay could not publish everything before closing (%s); "
                    "the rows wait in the outbox table for the next relay",
                    type(error).__name__,
                )

    def _should_drain(self, exc: BaseException | None) -> bool:
        if not self._consumers:
            return False
        if isinstance(exc, Exception | None):
            return True
        logger.warning("the bus was interrupted: events still queued in memory are not handled")
        return False

    async def _drain(self, conn: IdleWaiting, deadline: float, grace: float) -> None:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            await conn.wait_idle()
        if scope.cancelled_caught:
            logger.warning(
                "events still queued after the shutdown grace of %.1f s stay in the "
                "in-memory transport; they are lost when the process exits",
                grace,
            )

    async def _serve(self, jobs: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run the background jobs until the consumers have stopped."""
        assert self._serve_scope is not None
        with self._serve_scope:
            async with anyio.create_task_group() as jobs_group:
                for job in jobs:
                    jobs_group.start_soon(job)

    async def _cancel_after_grace(self, deadline: float) -> None:
        """Wait for the consumer loops to finish; cancel what still runs at the deadline."""
        assert self._task_group is not None
        assert self._serve_scope is not None
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            for consumer in self._consumers:
                await consumer.wait_stopped()
        if all(consumer.stopped for consumer in self._consumers):
            self._serve_scope.cancel()
            return
        logger.warning("handlers still running at the end of the shutdown grace were cancelled")
        self._task_group.cancel_scope.cancel()


def _lane_limiters(sub: Subscriber) -> dict[bool, anyio.CapacityLimiter | None]:
    """One shared limiter per lane when a subscriber takes several types of that lane."""
    limiters: dict[bool, anyio.CapacityLimiter | None] = {}
    for urgent in (False, True):
        count = sum(1 for t in sub.event_types if t.event_urgent is urgent)
        limiters[urgent] = anyio.CapacityLimiter(sub.concurrency) if count > 1 else None
    return limiters


async def _stats(conn: Connection, engines: Sequence[Delivering]) -> Sequence[GroupStats]:
    """The transport's groups, to find the topics of an earlier number of partitions
    that still hold work; none when it cannot tell (logged: nothing is read there).
    A transport that lists its groups (``GroupListing``) is counted only when it lists
    such a topic for one of ``engines``."""
    if not isinstance(conn, Inspection):
        return ()
    try:
        if isinstance(conn, GroupListing) and not _earlier_listed(await conn.groups(), engines):
            return ()
        return await conn.inspect()
    except EventBusError as exc:
        logger.warning(
            "cannot list the groups (%s: %s): topics of an earlier number of partitions "
            "are not read by this worker",
            type(exc).__name__,
            exc,
        )
        return ()


def _earlier_listed(listed: Sequence[tuple[str, str]], engines: Sequence[Delivering]) -> bool:
    """Whether a topic of an earlier partition layout is listed for one of ``engines``."""
    types_of: dict[str, list[type[Event]]] = {}
    for engine in engines:
        types_of.setdefault(engine.sub.group, []).extend(engine.sub.event_types)
    return any(
        earlier_topic(event_type, topic)
        for topic, group in listed
        for event_type in types_of.get(group, ())
    )
