"""eventbus.testing: capture, drain that re-raises, and virtual time."""

from __future__ import annotations

import pytest

from eventbus import EventBus, InMemoryTransport, RetryPolicy
from eventbus.testing import VirtualClock, capture, drain
from tests.events import OrderCreated, OrderPaid

pytestmark = pytest.mark.anyio


async def test_capture_records_events_published_in_the_block() -> None:
    """capture() records accepted events and envelopes in order, only inside the block."""
    async with EventBus() as bus:
        await bus.publish(OrderCreated(order_id="before"))
        with capture(bus) as published:
            await bus.publish(OrderCreated(order_id="o-1"))
            await bus.publish(OrderPaid(order_id="o-1"))
        await bus.publish(OrderCreated(order_id="after"))
    assert published.events == [OrderCreated(order_id="o-1"), OrderPaid(order_id="o-1")]
    assert [e.name for e in published.envelopes] == ["OrderCreated", "OrderPaid"]
    assert published.of_type(OrderPaid) == [OrderPaid(order_id="o-1")]
    assert len(published) == 2


async def test_drain_reraises_the_error_that_dead_lettered_an_event() -> None:
    """testing.drain raises the handler's exception once, then is clean again."""
    bus = EventBus()

    @bus.subscribe(retry=RetryPolicy.none())
    async def broken(event: OrderCreated) -> None:
        raise LookupError(f"no stock for {event.order_id}")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with pytest.raises(LookupError, match="no stock for o-1"):
            await drain(bus)
        await drain(bus)


async def test_drain_can_leave_errors_to_the_dead_letters() -> None:
    """drain(reraise=False) returns normally; the failure is in the dead letters."""
    bus = EventBus()

    @bus.subscribe(retry=RetryPolicy.none())
    async def broken(event: OrderCreated) -> None:
        raise LookupError("nope")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
        assert len(await bus.dead_letters()) == 1


async def test_drain_does_not_raise_for_failures_a_retry_fixed() -> None:
    """A failure followed by a successful retry is not raised by drain."""
    bus = EventBus(transport=InMemoryTransport(clock=VirtualClock()))
    calls = 0

    @bus.subscribe(retry=RetryPolicy(max_attempts=2))
    async def once_flaky(event: OrderCreated) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("flaky")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert calls == 2


async def test_virtual_clock_runs_an_hour_of_backoff_instantly() -> None:
    """Retry delays of an hour pass on the VirtualClock without real waiting."""
    clock = VirtualClock()
    bus = EventBus(transport=InMemoryTransport(clock=clock))
    calls = 0

    @bus.subscribe(retry=RetryPolicy(max_attempts=3, initial_delay=3600, max_delay=3600))
    async def slow_to_recover(event: OrderCreated) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, timeout=5)
    assert calls == 3
    assert clock.now() >= 2 * 3600 * 0.9


def test_virtual_clock_only_moves_forward() -> None:
    """advance() moves the clock; a negative step raises ValueError."""
    clock = VirtualClock()
    clock.advance(2.5)
    assert clock.now() == 2.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
