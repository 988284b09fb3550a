"""Edge cases found in review: wrong topics, oversize events, aliases, partial batches."""

from __future__ import annotations

import logging

import anyio
import pytest
from pydantic import Field

from eventbus import (
    Event,
    EventBus,
    ImmediateHandlerError,
    InMemoryTransport,
    Middleware,
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
