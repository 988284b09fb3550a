"""Edge cases found in review: wrong topics, oversize events, aliases, partial batches."""

from __future__ import annotations

import logging

import anyio
import pytest
from pydantic import Field

from eventbus import (
    BusStateError,
    ConfigurationError,
    Event,
    EventBus,
    ImmediateHandlerError,
    InMemoryTransport,
    Middleware,
    PublishError,
    PublishTimeoutError,
    RetryPolicy,
)
from eventbus.testing import capture, drain
from eventbus.transports import Message
from tests.events import OrderCreated, OrderPaid, UserBanned

pytestmark = pytest.mark.anyio


class CamelCase(Event):
    """An event whose wire fields are camelCase."""

    order_id: str = Field(alias="orderId")


async def test_event_of_another_type_on_a_topic_is_dead_lettered() -> None:
    """A message naming OrderPaid on the OrderCreated topic never reaches the handler."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)
    seen: list[object] = []

    @bus.subscribe(group="g")
    async def created(event: OrderCreated) -> None:
        seen.append(event)

    @bus.subscribe(group="g")
    async def paid(event: OrderPaid) -> None:
        seen.append(event)

    headers = {"id": "i", "name": "OrderPaid", "version": "1", "time": "2026-01-01T00:00:00Z"}
    async with bus:
        raw = await transport.connect()
        await raw.publish("OrderCreated", Message(b'{"order_id":"x"}', headers))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
        await raw.aclose()
    assert seen == []
    assert dead.reason == "malformed"
    assert "OrderPaid event arrived on the topic of OrderCreated" in dead.error_message


async def test_oversize_in_memory_dead_letter_can_be_listed() -> None:
    """An event over the size limit that never needed bytes is listed without its body."""
    bus = EventBus(max_payload_bytes=50)

    @bus.subscribe(retry=RetryPolicy.none())
    async def fails(event: OrderCreated) -> None:
        raise ConnectionError("down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o" * 100))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
    assert dead.event == OrderCreated(order_id="o" * 100)
    assert dead.body == b""


async def test_aliased_fields_survive_the_wire() -> None:
    """Fields with an alias are written and read by alias, so they round-trip."""
    bus = EventBus(transport=InMemoryTransport(serialize=True))
    seen: list[str] = []

    @bus.subscribe()
    async def record(event: CamelCase) -> None:
        seen.append(event.order_id)

    async with bus:
        await bus.publish(CamelCase(orderId="o-1"))
        await drain(bus)
    assert seen == ["o-1"]


async def test_capture_records_an_event_whose_immediate_subscriber_failed() -> None:
    """The event was accepted before the immediate subscriber failed: it is captured."""
    bus = EventBus()

    @bus.subscribe(mode="immediate", retry=RetryPolicy.none())
    async def fails(event: UserBanned) -> None:
        raise PermissionError("no")

    async with bus:
        with capture(bus) as published, pytest.raises(ImmediateHandlerError):
            await bus.publish(UserBanned(user_id="u-1"))
    assert published.events == [UserBanned(user_id="u-1")]


@pytest.mark.parametrize("with_middleware", [False, True])
async def test_publish_many_runs_every_immediate_subscriber(with_middleware: bool) -> None:
    """One failing immediate subscriber in a batch stops neither the batch nor the rest."""
    bus = EventBus(middleware=[Middleware()] if with_middleware else [])
    immediate: list[str] = []
    background: list[str] = []

    @bus.subscribe(group="auth", mode="immediate", retry=RetryPolicy.none())
    async def block(event: UserBanned) -> None:
        immediate.append(event.user_id)
        if event.user_id == "u-1":
            raise PermissionError("auth store down")

    @bus.subscribe(group="audit")
    async def audit(event: UserBanned) -> None:
        background.append(event.user_id)

    async with bus:
        with pytest.raises(ImmediateHandlerError):
            await bus.publish_many([UserBanned(user_id=f"u-{i}") for i in range(3)])
        await drain(bus)
    assert immediate == ["u-0", "u-1", "u-2"]
    assert sorted(background) == ["u-0", "u-1", "u-2"]


async def test_leaving_an_in_memory_bus_handles_what_is_queued() -> None:
    """In memory, nothing outlives the process: leaving the block first drains."""
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe()
    async def record(event: OrderCreated) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event.order_id)

    async with bus:
        for i in range(500):
            await bus.publish(OrderCreated(order_id=str(i)))
    assert len(seen) == 500


async def test_immediate_failure_log_names_attempts_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log of a failed immediate subscriber carries the attempts made and the error."""
    bus = EventBus()

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def fails(event: UserBanned) -> None:
        raise PermissionError("no")

    caplog.set_level(logging.ERROR, logger="eventbus")
    async with bus:
        with pytest.raises(ImmediateHandlerError):
            await bus.publish(UserBanned(user_id="u-1"))
    (record,) = [r for r in caplog.records if r.name == "eventbus"]
    assert (record.__dict__["attempt"], record.__dict__["error_type"]) == (2, "PermissionError")
    assert "after 2 attempt(s)" in record.getMessage()


async def test_publisher_that_timed_out_leaves_no_stale_waiter() -> None:
    """After publishes time out on a full queue, a waiting publisher still gets room."""
    transport = InMemoryTransport(max_queue=2)
    conn = await transport.connect()
    sub = await conn.subscribe("orders", "g")
    for i in range(2):
        await conn.publish("orders", Message(b"{}", {"i": str(i)}))
    for _ in range(3):
        with pytest.raises(PublishTimeoutError):
            await conn.publish("orders", Message(b"{}", {"i": "late"}), timeout=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.publish, "orders", Message(b"{}", {"i": "2"}))
        with anyio.fail_after(5):
            for _ in range(3):
                delivery = await sub.receive()
                assert delivery is not None
                await sub.ack(delivery)
    await conn.aclose()


async def test_cancelled_while_draining_on_exit_the_bus_still_closes() -> None:
    """A cancel that arrives while the bus drains on exit leaves it closed, not stuck."""
    bus = EventBus(shutdown_grace=30)
    gate = anyio.Event()

    @bus.subscribe()
    async def slow(event: OrderCreated) -> None:
        await gate.wait()

    with anyio.move_on_after(0.2) as scope:
        async with bus:
            await bus.publish(OrderCreated(order_id="o-1"))
    assert scope.cancelled_caught
    with pytest.raises(BusStateError, match="closed"):
        await bus.publish(OrderCreated(order_id="o-2"))


async def test_leaving_with_an_error_still_handles_what_is_queued() -> None:
    """An exception in the body does not drop the events queued in memory."""
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe()
    async def record(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async def publish_then_fail() -> None:
        async with bus:
            for i in range(3):
                await bus.publish(OrderCreated(order_id=str(i)))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await publish_then_fail()
    assert seen == ["0", "1", "2"]


async def test_publish_refuses_ids_that_consumers_would_refuse() -> None:
    """An empty or over-long correlation or causation id is a PublishError at once."""
    async with EventBus() as bus:
        for bad in ("", "c" * 201):
            with pytest.raises(PublishError, match="correlation_id"):
                await bus.publish(OrderCreated(order_id="o"), correlation_id=bad)
            with pytest.raises(PublishError, match="causation_id"):
                await bus.publish(OrderCreated(order_id="o"), causation_id=bad)


def test_shutdown_grace_must_be_a_finite_number() -> None:
    """NaN, infinity and booleans are refused as shutdown_grace."""
    for bad in (float("nan"), float("inf"), True, -1):
        with pytest.raises(ConfigurationError, match="shutdown_grace"):
            EventBus(shutdown_grace=bad)
