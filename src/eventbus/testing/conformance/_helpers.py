"""Helpers of the conformance scenarios: small messages, bounded waits, a connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from eventbus.transports import (
    Connection,
    Delivery,
    Message,
    Serving,
    StoredDeadLetter,
    Subscription,
    Transport,
)

__all__ = [
    "WAIT",
    "connected",
    "index_of",
    "index_of_dead",
    "message",
    "nothing_within",
    "publish_range",
    "receive",
    "receive_and_ack",
]

WAIT = 10.0
"""Seconds a scenario waits for something that must happen before it fails."""


def message(index: int, **headers: str) -> Message:
    """A small test message whose body and headers carry ``index``."""
    return Message(b'{"i":%d}' % index, {"i": str(index), **headers})


def index_of_dead(dead: StoredDeadLetter) -> int:
    """The index of a dead letter's ``message(...)``."""
    return int(dead.message.headers["i"])


def index_of(delivery: Delivery) -> int:
    """The index of a delivery's ``message(...)``."""
    return int(delivery.message.headers["i"])


async def receive(sub: Subscription, timeout: float = WAIT) -> Delivery:
    """Receive one delivery, failing the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        delivery = await sub.receive()
    assert delivery is not None, "receive() returned None on an open subscription"
    return delivery


async def receive_and_ack(sub: Subscription, count: int) -> list[int]:
    """Receive and ack ``count`` deliveries; return their indexes in arrival order."""
    seen = []
    for _ in range(count):
        delivery = await receive(sub)
        seen.append(index_of(delivery))
        await sub.ack(delivery)
    return seen


async def nothing_within(sub: Subscription, seconds: float) -> bool:
    """True when ``sub`` delivers nothing for ``seconds`` (a bounded negative check)."""
    with anyio.move_on_after(seconds):
        await sub.receive()
        return False
    return True


async def publish_range(conn: Connection, topic: str, indexes: Sequence[int]) -> None:
    """Publish ``message(i)`` for each index, in order."""
    for i in indexes:
        await conn.publish(topic, message(i))


@asynccontextmanager
async def connected(transport: Transport) -> AsyncIterator[Connection]:
    """A connection with its background work running (when it has some), as a bus
    would hold it."""
    conn = await transport.connect()
    try:
        async with anyio.create_task_group() as tg:
            if isinstance(conn, Serving):
                tg.start_soon(conn.serve)
            try:
                yield conn
            finally:
                tg.cancel_scope.cancel()
    finally:
        await conn.aclose()
