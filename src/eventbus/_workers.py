"""``Workers``: the consumers of one bus, started together and stopped within a grace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio
import anyio.abc

from ._codec import Codec
from ._consumer import Consumer
from ._delivery import Delivering, logger
from ._subscriber import Subscriber
from .transports._contract import Connection

__all__ = ["Workers"]


class Workers:
    """One ``Consumer`` per background subscriber and event type.

    The urgent and the background event types of a subscriber count their
    ``concurrency`` apart (each lane has its own limit), so an urgent event never waits
    for a slot that background work holds.
    """

    def __init__(self, codec: Codec, sleep: Callable[[float], Awaitable[None]]) -> None:
        self._codec = codec
        self._sleep = sleep
        self._consumers: list[Consumer] = []

    def __bool__(self) -> bool:
        return bool(self._consumers)

    async def start(
        self,
        conn: Connection,
        engines: Iterable[Delivering],
        task_group: anyio.abc.TaskGroup,
    ) -> None:
        """Subscribe each engine's subscriber to each of its event types and start."""
        for engine in engines:
            limiters = _lane_limiters(engine.sub)
            for event_type in engine.sub.event_types:
                subscription = await conn.subscribe(event_type.event_name, engine.sub.group)
                limiter = limiters[event_type.event_urgent]
                consumer = Consumer(
                    engine, subscription, event_type, self._codec, limiter, self._sleep
                )
                consumer.start(task_group)
                self._consumers.append(consumer)

    def stop(self) -> None:
        """Take no new work: idle loops exit now, busy ones after their delivery."""
        for consumer in self._consumers:
            consumer.stop()

    async def wait_stopped(self, deadline: float) -> bool:
        """Wait for every loop to exit, until ``deadline``; whether they all did."""
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            for consumer in self._consumers:
                await consumer.wait_stopped()
        if all(consumer.stopped for consumer in self._consumers):
            return True
        logger.warning("handlers still running at the end of the shutdown grace were cancelled")
        return False


def _lane_limiters(sub: Subscriber) -> dict[bool, anyio.CapacityLimiter | None]:
    """One shared limiter per lane when a subscriber takes several types of that lane."""
    limiters: dict[bool, anyio.CapacityLimiter | None] = {}
    for urgent in (False, True):
        count = sum(1 for t in sub.event_types if t.event_urgent is urgent)
        limiters[urgent] = anyio.CapacityLimiter(sub.concurrency) if count > 1 else None
    return limiters
