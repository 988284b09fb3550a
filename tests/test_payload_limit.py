"""The payload limit: enforced wherever an event becomes bytes, and said where it is not."""

from __future__ import annotations

import pytest

from eventbus import EventBus, InMemoryTransport, Middleware, PayloadTooLargeError
from eventbus.testing import drain
from tests.events import LineItem, OrderCreated

pytestmark = pytest.mark.anyio


def big_order() -> OrderCreated:
    """An order whose JSON is about 1,000 bytes."""
    items = tuple(LineItem(sku=f"sku-{i:03d}", quantity=i, price=i) for i in range(20))
    order = OrderCreated(order_id="o-big", items=items)
    assert len(order.model_dump_json()) > 900
    return order


async def test_a_serializing_transport_refuses_an_over_large_event_at_publish() -> None:
    """With bytes on the way, publish() raises PayloadTooLargeError and stores nothing."""
    bus = EventBus(transport=InMemoryTransport(serialize=True), max_payload_bytes=100)
    handled: list[str] = []

    @bus.subscribe()
    async def handle(event: OrderCreated) -> None:
        handled.append(event.order_id)

    async with bus:
        with pytest.raises(PayloadTooLargeError, match=r"limit of 100 .*passed by reference"):
            await bus.publish(big_order())
        with pytest.raises(PayloadTooLargeError):
            await bus.publish_many([OrderCreated(order_id="small"), big_order()])
        await drain(bus)
    assert handled == []


async def test_the_default_transport_passes_events_by_reference_unchecked() -> None:
    """The documented exception: by reference an event never becomes bytes, so the limit
    does not apply (the error text of the limit says so, see above)."""
    bus = EventBus(max_payload_bytes=100)
    handled: list[OrderCreated] = []
    order = big_order()

    @bus.subscribe()
    async def handle(event: OrderCreated) -> None:
        handled.append(event)

    async with bus:
        await bus.publish(order)
        await drain(bus)
    assert handled == [order]
    assert handled[0] is order


async def test_a_batch_is_checked_whole_before_the_middleware_sends_any() -> None:
    """With middleware too, publish_many encodes every event before the first is sent."""

    bus = EventBus(
        transport=InMemoryTransport(serialize=True),
        max_payload_bytes=100,
        middleware=[Middleware()],
    )
    handled: list[str] = []

    @bus.subscribe()
    async def handle(event: OrderCreated) -> None:
        handled.append(event.order_id)

    async with bus:
        with pytest.raises(PayloadTooLargeError):
            await bus.publish_many([OrderCreated(order_id="small"), big_order()])
        await drain(bus)
    assert handled == []
