"""bus.inspect(): the state of every group, from the transport's Inspection ability."""

from __future__ import annotations

import pytest

from eventbus import EventBus, InMemoryTransport, RetryPolicy
from eventbus.testing import drain
from eventbus.transports import GroupStats
from tests.events import OrderCreated, OrderPaid

pytestmark = pytest.mark.anyio


async def test_inspect_shows_each_group_after_work_and_failures() -> None:
    """Groups of every bus on the transport are listed with their dead letters."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)

    @bus.subscribe(group="email", retry=RetryPolicy.none())
    async def send(event: OrderCreated) -> None:
        if event.order_id == "bad":
            raise ValueError("no address")

    @bus.subscribe(group="shipping")
    async def ship(event: OrderPaid) -> None:
        pass

    async with bus:
        await bus.publish(OrderCreated(order_id="good"))
        await bus.publish(OrderCreated(order_id="bad"))
        await bus.publish(OrderPaid(order_id="good"))
        await drain(bus, reraise=False)
        stats = await bus.inspect()
    assert stats == [
        GroupStats("OrderCreated", "email", 0, 0, 0, 1, stream_length=2, consumers=1),
        GroupStats("OrderPaid", "shipping", 0, 0, 0, 0, stream_length=1, consumers=1),
    ]


async def test_inspect_counts_what_waits_for_a_stopped_worker() -> None:
    """Events published while a group has no running worker show as waiting."""
    transport = InMemoryTransport()
    worker = EventBus(transport=transport, shutdown_grace=0)

    @worker.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    async with worker:
        pass
    async with EventBus(transport=transport) as producer:
        await producer.publish_many([OrderCreated(order_id=str(i)) for i in range(3)])
        (email,) = await producer.inspect()
    assert (email.group, email.waiting, email.in_flight) == ("email", 3, 0)
