"""eventbus.testing: capture, drain that re-raises, and virtual time."""

from __future__ import annotations

import enum
import re
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from eventbus import Event, EventBus, InMemoryTransport, RetryPolicy
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


class Loose(Event):
    """An event with a loosely typed field."""

    order_id: str
    extra: dict[str, Any]


class Color(enum.Enum):
    """An enum for the wire table."""

    RED = "red"


async def test_capture_fails_the_block_when_an_event_changes_on_the_wire() -> None:
    """A date inside dict[str, Any] would reach a worker as a str: capture says so."""
    async with EventBus() as bus:
        with pytest.raises(AssertionError, match=r"Loose\.extra changes on the wire") as error:  # noqa: PT012 - the failure comes at the end of the block
            with capture(bus) as published:
                await bus.publish(Loose(order_id="o-1", extra={"on": date(2026, 1, 2)}))
            raise AssertionError("capture should have failed")
    assert len(published) == 1
    assert "2026" not in str(error.value)


async def test_capture_without_wire_only_records() -> None:
    """wire=False records the event and checks nothing."""
    async with EventBus() as bus:
        with capture(bus, wire=False) as published:
            await bus.publish(Loose(order_id="o-1", extra={"on": date(2026, 1, 2)}))
    assert (len(published), published.wire_problems) == (1, [])


WIRE_TABLE = [  # docs/testing.md, "Wire fidelity": (declared type, value, problem or None)
    (date, date(2026, 1, 2), None),
    (Decimal, Decimal("1.10"), None),
    (uuid.UUID, uuid.UUID(int=7), None),
    (Color, Color.RED, None),
    (tuple[int, ...], (1, 2), None),
    (frozenset[str], frozenset({"a"}), None),
    (dict[int, str], {1: "a"}, None),
    (bytes, b"ab", None),
    (Any, date(2026, 1, 2), "(date -> str)"),
    (Any, Decimal("1.10"), "(Decimal -> str)"),
    (Any, uuid.UUID(int=7), "(UUID -> str)"),
    (Any, b"ab", "(bytes -> str)"),
    (Any, (1, 2), "(tuple -> list)"),
    (Any, {1}, "(set -> list)"),
    (Any, Color.RED, "(Color -> str)"),
    (Any, {1: "a"}, "(dict with other contents)"),
    (Any, float("inf"), "(float -> NoneType)"),
    (Any, object(), "cannot be encoded"),
    (bytes, b"\xff", "cannot be encoded"),
    (float, float("inf"), "does not validate after the wire"),
]


@pytest.mark.parametrize(("declared", "value", "problem"), WIRE_TABLE)
async def test_the_wire_table_of_the_testing_page_holds(
    declared: Any, value: Any, problem: str | None
) -> None:
    """Each row of the table: capture finds the stated problem, or none."""
    event_type = type("Carrier", (Event,), {"__annotations__": {"x": declared}})
    async with EventBus() as bus:
        if problem is None:
            with capture(bus) as published:
                await bus.publish(event_type(x=value))
            assert published.wire_problems == []
        else:
            with pytest.raises(AssertionError, match=re.escape(problem)), capture(bus):
                await bus.publish(event_type(x=value))
