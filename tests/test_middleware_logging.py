"""Middleware around publish and handling; structured logs without payloads."""

from __future__ import annotations

import logging

import pytest

from eventbus import Context, Envelope, Event, EventBus, InMemoryTransport, Middleware, RetryPolicy
from eventbus.testing import VirtualClock, drain
from tests.events import OrderCreated

pytestmark = pytest.mark.anyio


class Recorder(Middleware):
    """Records the order in which hooks run."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def on_publish(self, event: Event, envelope: Envelope, call_next: object) -> None:
        self.log.append(f"{self.name}:publish:before")
        await call_next()  # type: ignore[operator]
        self.log.append(f"{self.name}:publish:after")

    async def on_handle(self, event: Event, context: Context, call_next: object) -> None:
        self.log.append(f"{self.name}:handle:{context.group}:{context.attempt}")
        await call_next()  # type: ignore[operator]


async def test_middleware_wraps_publish_and_handling_in_order() -> None:
    """The first middleware is outermost around publish and around each handler call."""
    log: list[str] = []
    bus = EventBus(middleware=[Recorder("outer", log), Recorder("inner", log)])

    @bus.subscribe(group="g")
    async def handler(event: OrderCreated) -> None:
        log.append("handler")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert log == [
        "outer:publish:before",
        "inner:publish:before",
        "inner:publish:after",
        "outer:publish:after",
        "outer:handle:g:1",
        "inner:handle:g:1",
        "handler",
    ]


class Refuse(Middleware):
    """Fails every handling attempt before the handler runs."""

    async def on_handle(self, event: Event, context: Context, call_next: object) -> None:
        raise PermissionError("tenant suspended")


async def test_middleware_failure_counts_as_a_failed_attempt() -> None:
    """An exception in on_handle fails the attempt like a handler error would."""
    bus = EventBus(transport=InMemoryTransport(clock=VirtualClock()), middleware=[Refuse()])
    calls = 0

    @bus.subscribe(retry=RetryPolicy(max_attempts=2))
    async def handler(event: OrderCreated) -> None:
        nonlocal calls
        calls += 1

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with pytest.raises(PermissionError):
            await drain(bus)
        (dead,) = await bus.dead_letters()
    assert (calls, dead.attempts, dead.error_type) == (0, 2, "builtins.PermissionError")


async def test_logs_carry_ids_and_never_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    """Failure logs name event id, type, group and attempt, and leave the payload out."""
    bus = EventBus(transport=InMemoryTransport(clock=VirtualClock()))
    secret = "alice@example.com"

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=2))
    async def fails(event: OrderCreated) -> None:
        raise ConnectionError("smtp down")

    caplog.set_level(logging.DEBUG, logger="eventbus")
    async with bus:
        envelope = await bus.publish(OrderCreated(order_id=secret))
        await drain(bus, reraise=False)
    records = [r for r in caplog.records if r.name == "eventbus"]
    assert [r.levelname for r in records] == ["WARNING", "ERROR"]
    for record in records:
        fields = record.__dict__
        assert (fields["event_id"], fields["event_name"], fields["group"]) == (
            envelope.id,
            "OrderCreated",
            "email",
        )
        assert fields["error_type"] == "ConnectionError"
        assert secret not in record.getMessage()
        assert all(secret not in str(v) for v in fields.values())
    assert [r.__dict__["attempt"] for r in records] == [1, 2]


async def test_library_configures_no_logging() -> None:
    """Importing and running eventbus adds no handlers to any logger."""
    before = list(logging.getLogger("eventbus").handlers), list(logging.getLogger().handlers)
    async with EventBus() as bus:
        await bus.publish(OrderCreated(order_id="o"))
    after = list(logging.getLogger("eventbus").handlers), list(logging.getLogger().handlers)
    assert before == after
