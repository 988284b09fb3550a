"""A middleware adds envelope headers at publish: call_next(headers=...)."""

from __future__ import annotations

import pytest

from eventbus import (
    ConfigurationError,
    Context,
    Envelope,
    Event,
    EventBus,
    InMemoryTransport,
    Middleware,
    Next,
    PublishError,
    RetryPolicy,
)
from eventbus.testing import drain
from tests.events import OrderCreated

pytestmark = pytest.mark.anyio


class Stamp(Middleware):
    """Adds a trace header to every event published."""

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        await call_next(headers={"traceparent": f"00-{envelope.id[:8]}"})


@pytest.mark.parametrize("serialize", [False, True], ids=["by-reference", "bytes"])
async def test_headers_added_at_publish_reach_the_handler_and_the_publisher(
    serialize: bool,
) -> None:
    """The handler's envelope and publish()'s return value carry the added header."""
    bus = EventBus(transport=InMemoryTransport(serialize=serialize), middleware=[Stamp()])
    seen: list[Envelope] = []

    @bus.subscribe(group="g")
    async def handle(event: OrderCreated, context: Context) -> None:
        seen.append(context.envelope)

    async with bus:
        returned = await bus.publish(OrderCreated(order_id="o-1"), headers={"tenant": "t1"})
        many = await bus.publish_many([OrderCreated(order_id="o-2")])
        await drain(bus)
    assert returned.headers == {"tenant": "t1", "traceparent": f"00-{returned.id[:8]}"}
    assert [dict(e.headers) for e in seen] == [dict(returned.headers), dict(many[0].headers)]
    assert many[0].headers["traceparent"] == f"00-{many[0].id[:8]}"


async def test_bad_headers_from_a_middleware_are_a_publish_error() -> None:
    """A header that is not str to str is refused before anything is written."""

    class Bad(Middleware):
        async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
            await call_next(headers={"n": 1})  # type: ignore[dict-item]

    async with EventBus(middleware=[Bad()]) as bus:
        with pytest.raises(PublishError, match="str keys to str values"):
            await bus.publish(OrderCreated(order_id="o-1"))


async def test_headers_cannot_be_added_while_handling() -> None:
    """call_next(headers=...) in on_handle fails the attempt with ConfigurationError."""

    class Late(Middleware):
        async def on_handle(self, event: Event, context: Context, call_next: Next) -> None:
            await call_next(headers={"x": "y"})

    bus = EventBus(middleware=[Late()])

    @bus.subscribe(group="g", retry=RetryPolicy.none())
    async def handle(event: OrderCreated) -> None:
        raise AssertionError("never called")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with pytest.raises(ConfigurationError, match="on_publish only"):
            await drain(bus)
