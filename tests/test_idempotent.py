"""Idempotent subscribers: an event id the group handled already is acked, not handled."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus import (
    ConfigurationError,
    Context,
    EventBus,
    InMemoryTransport,
    Observer,
    Outcome,
    RetryPolicy,
)
from eventbus.testing import VirtualClock, drain
from eventbus.transports import Message, ReferencePublishing
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.test_minimal_transport import CoreOnlyTransport

pytestmark = pytest.mark.anyio

HEADERS = {
    "id": "0193a4c2-8f10-7000-8c1e-5b2d4e6f7a8b",
    "name": "OrderCreated",
    "version": "1",
    "time": "2026-01-01T00:00:00Z",
}
BODY = b'{"order_id":"o-1","total":"9.90","items":[]}'


class Actions(Observer):
    """Records the action of every outcome."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def on_outcome(self, outcome: Outcome) -> None:
        self.actions.append(outcome.action)


def email_bus(transport: InMemoryTransport, sent: list[str], actions: Actions) -> EventBus:
    """A bus whose idempotent email group records what it sends."""
    bus = EventBus(transport=transport, observers=[actions])

    @bus.subscribe(group="email", idempotent=True)
    async def send_confirmation(event: OrderCreated) -> None:
        sent.append(event.order_id)

    return bus


@pytest.mark.parametrize("serialize", [False, True], ids=["by-reference", "bytes"])
async def test_a_second_message_with_the_same_event_id_is_acked_not_handled(
    serialize: bool,
) -> None:
    """A repeat of an event id (a relay publishing it again) reaches the group, which acks
    it without calling the handler; observers are told "duplicate"."""
    transport = InMemoryTransport(serialize=serialize)
    sent: list[str] = []
    actions = Actions()
    async with email_bus(transport, sent, actions) as bus:
        raw = await transport.connect()
        for _ in range(2):
            await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        await raw.aclose()
    assert sent == ["o-1"]
    assert actions.actions == ["ack", "duplicate"]


async def test_a_published_event_repeated_by_reference_is_handled_once() -> None:
    """The same (event, envelope) passed twice by reference is handled once."""
    transport = InMemoryTransport()
    sent: list[str] = []
    async with email_bus(transport, sent, Actions()) as bus:
        envelope = await bus.publish(OrderCreated(order_id="o-2"))
        raw = await transport.connect()
        assert isinstance(raw, ReferencePublishing)
        await raw.publish_reference("OrderCreated", (OrderCreated(order_id="o-2"), envelope))
        await drain(bus)
        await raw.aclose()
    assert sent == ["o-2"]


async def test_each_group_records_its_own_handling() -> None:
    """Another group handles the repeated event once too, independently."""
    transport = InMemoryTransport(serialize=True)
    sent: list[str] = []
    bus = email_bus(transport, sent, Actions())
    audited: list[str] = []

    @bus.subscribe(group="audit", idempotent=True)
    async def audit(event: OrderCreated) -> None:
        audited.append(event.order_id)

    async with bus:
        raw = await transport.connect()
        for _ in range(3):
            await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        await raw.aclose()
    assert (sent, audited) == (["o-1"], ["o-1"])


async def test_a_failed_attempt_is_not_recorded() -> None:
    """Only a success is recorded: a failing attempt is retried and handled."""
    transport = InMemoryTransport(serialize=True, clock=VirtualClock())
    handled: list[int] = []
    bus = EventBus(transport=transport)

    @bus.subscribe(group="email", idempotent=True, retry=RetryPolicy(max_attempts=3))
    async def flaky(event: OrderCreated, context: Context) -> None:
        if context.attempt == 1:
            raise ConnectionError("smtp down")
        handled.append(context.attempt)

    async with bus:
        raw = await transport.connect()
        for _ in range(2):
            await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        await raw.aclose()
    assert handled == [2]


async def test_the_record_expires_after_the_ttl() -> None:
    """Past idempotency_ttl, the group forgets the id and handles a repeat again."""
    clock = VirtualClock()
    transport = InMemoryTransport(serialize=True, clock=clock, idempotency_ttl=60)
    sent: list[str] = []
    async with email_bus(transport, sent, Actions()) as bus:
        raw = await transport.connect()
        await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        clock.advance(59)
        await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        clock.advance(2)
        await raw.publish("OrderCreated", Message(BODY, HEADERS))
        await drain(bus)
        await raw.aclose()
    assert sent == ["o-1", "o-1"]


def test_idempotent_needs_a_background_subscriber_and_a_bool() -> None:
    """idempotent=True with mode="immediate", or a non-bool, is refused at decoration."""
    bus = EventBus()

    async def handler(event: OrderCreated) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"needs mode='background'"):
        bus.subscribe(mode="immediate", idempotent=True)(handler)
    with pytest.raises(ConfigurationError, match="must be True or False"):
        bus.subscribe(idempotent=1)(handler)  # type: ignore[arg-type]


async def test_a_transport_without_a_handled_record_refuses_at_start() -> None:
    """Starting an idempotent subscriber on a transport that cannot record says so."""
    bus = EventBus(transport=CoreOnlyTransport())

    @bus.subscribe(group="email", idempotent=True)
    async def send(event: OrderCreated) -> None:
        pass

    with pytest.raises(ConfigurationError, match="needs a transport whose subscriptions offer"):
        await bus.__aenter__()


def test_the_ttl_must_be_positive_seconds() -> None:
    """InMemoryTransport(idempotency_ttl=...) takes a positive number of seconds."""
    with pytest.raises(ConfigurationError, match="idempotency_ttl"):
        InMemoryTransport(idempotency_ttl=0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py runs on asyncio
async def test_redis_skips_a_repeated_event_id_and_keeps_the_record_for_the_ttl(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """On Redis, two entries with one event id are handled once; the group's record of
    the id is one key that expires after idempotency_ttl."""
    from eventbus.transports.redis import RedisTransport

    transport = RedisTransport(redis_server.url, prefix="idem", idempotency_ttl=30)
    sent: list[str] = []
    actions = Actions()
    bus = EventBus(transport=transport, observers=[actions])

    @bus.subscribe(group="email", idempotent=True)
    async def send_confirmation(event: OrderCreated) -> None:
        sent.append(event.order_id)

    async with bus:
        for _ in range(2):
            await redis_admin.xadd("idem:{OrderCreated}", {**HEADERS, "payload": BODY})
        await drain(bus, timeout=10)
    assert sent == ["o-1"]
    assert actions.actions == ["ack", "duplicate"]
    ttl_ms = await redis_admin.pttl(f"idem:{{OrderCreated}}:handled:email:{HEADERS['id']}")
    assert 0 < ttl_ms <= 30_000
