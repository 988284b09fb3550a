"""Event versions: upcasters turn older payloads into the current shape before
validation; a newer version goes back to its group for an upgraded worker."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import pytest

from eventbus import (
    ConfigurationError,
    Event,
    EventBus,
    InMemoryTransport,
    Observer,
    Outcome,
    RetryPolicy,
    upcaster,
)
from eventbus.testing import drain
from eventbus.transports import Message
from eventbus.transports.redis import RedisTransport
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


class PlacedV1(Event, name="OrderPlaced", version=1):
    """The first shape: a total in cents."""

    order_id: str
    cents: int


class PlacedV3(Event, name="OrderPlaced", version=3):
    """The current shape: an amount and a currency, and a channel."""

    order_id: str
    amount: str
    currency: str
    channel: str


@upcaster(PlacedV3, from_version=1)
def cents_to_amount(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: cents become an amount in euros."""
    cents = payload.pop("cents")
    return {**payload, "amount": f"{cents // 100}.{cents % 100:02d}", "currency": "EUR"}


@upcaster(PlacedV3, from_version=2)
def add_channel(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the channel, which version 2 did not know."""
    return {**payload, "channel": "web"}


def wire(version: int, payload: bytes, event_id: str = "e-1") -> Message:
    """An OrderPlaced message of ``version``, as another program would write it."""
    headers = {"id": event_id, "name": "OrderPlaced", "version": str(version)}
    return Message(payload, {**headers, "time": "2026-01-01T00:00:00Z"})


async def deliver_raw(bus: EventBus, transport: InMemoryTransport, *messages: Message) -> None:
    """Publish raw messages on the transport, then wait for the bus to finish them."""
    raw = await transport.connect()
    for message in messages:
        await raw.publish("OrderPlaced", message)
    await drain(bus, reraise=False)
    await raw.aclose()


async def test_a_chain_of_upcasters_turns_each_older_version_into_the_current() -> None:
    """Versions 1, 2 and 3 all reach the handler as version-3 events."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)
    seen: list[PlacedV3] = []

    @bus.subscribe(group="billing")
    async def bill(event: PlacedV3) -> None:
        seen.append(event)

    async with bus:
        await deliver_raw(
            bus,
            transport,
            wire(1, b'{"order_id": "o-1", "cents": 990}'),
            wire(2, b'{"order_id": "o-2", "amount": "5.00", "currency": "USD"}'),
            wire(3, b'{"order_id": "o-3", "amount": "1.00", "currency": "EUR", "channel": "app"}'),
        )
        assert await bus.dead_letters() == []
    assert seen == [
        PlacedV3(order_id="o-1", amount="9.90", currency="EUR", channel="web"),
        PlacedV3(order_id="o-2", amount="5.00", currency="USD", channel="web"),
        PlacedV3(order_id="o-3", amount="1.00", currency="EUR", channel="app"),
    ]


class PlacedV2NoPath(Event, name="OrderPlaced", version=2):
    """A version 2 with no upcaster from version 1."""

    order_id: str


async def test_a_missing_link_dead_letters_as_wrong_version_naming_it() -> None:
    """Without an upcaster from version 1, a version-1 message is dead-lettered."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)

    @bus.subscribe(group="billing")
    async def bill(event: PlacedV2NoPath) -> None:
        raise AssertionError("never called")

    async with bus:
        await deliver_raw(bus, transport, wire(1, b'{"order_id": "o-1", "cents": 1}'))
        (dead,) = await bus.dead_letters()
    assert dead.reason == "wrong-version"
    assert "no upcaster from version 1" in dead.error_message


class Broken(Event, name="Broken", version=2):
    """An event whose upcaster fails on purpose."""

    order_id: str


@upcaster(Broken, from_version=1)
def explode(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails on every payload."""
    raise KeyError(payload["secret"])


async def test_a_failing_upcaster_dead_letters_as_malformed_without_the_payload() -> None:
    """The dead letter names the upcaster and the error type, never a payload value."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)

    @bus.subscribe(group="g")
    async def take(event: Broken) -> None:
        raise AssertionError("never called")

    async with bus:
        raw = await transport.connect()
        headers = {"id": "b-1", "name": "Broken", "version": "1", "time": "2026-01-01T00:00Z"}
        await raw.publish("Broken", Message(b'{"order_id": "top-secret-value"}', headers))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
        await raw.aclose()
    assert dead.reason == "malformed"
    assert "explode" in dead.error_message
    assert "KeyError" in dead.error_message
    assert "top-secret-value" not in dead.error_message


@pytest.mark.parametrize(
    ("target", "from_version", "message"),
    [
        (dict, 1, "Event class"),
        (PlacedV3, 3, "below the class's version 3"),
        (PlacedV3, 0, "at least 1"),
        (PlacedV3, True, "must be an int"),
        (PlacedV3, 1, "already has an upcaster from version 1"),
    ],
)
def test_bad_upcasters_are_refused(target: Any, from_version: Any, message: str) -> None:
    """Each mistake raises a ConfigurationError that says what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        upcaster(target, from_version=from_version)(lambda payload: payload)


def test_newer_versions_must_be_a_retry_policy() -> None:
    """EventBus(newer_versions=) takes a RetryPolicy."""
    with pytest.raises(ConfigurationError, match="newer_versions"):
        EventBus(newer_versions=3)  # type: ignore[arg-type]


class PlacedV2(Event, name="OrderPlaced", version=2):
    """Version 2, with its upcaster from version 1 (after a fix was deployed)."""

    order_id: str
    amount: str
    currency: str


@upcaster(PlacedV2, from_version=1)
def cents_to_amount_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2."""
    return cents_to_amount(payload)


async def test_a_replayed_dead_letter_goes_through_the_upcasters() -> None:
    """A dead letter of an older version is handled when replayed by an upcasting worker."""
    transport = InMemoryTransport()
    before = EventBus(transport=transport)

    @before.subscribe(group="billing")
    async def old_bill(event: PlacedV2NoPath) -> None:
        raise AssertionError("never called")

    async with before:
        await deliver_raw(before, transport, wire(1, b'{"order_id": "o-1", "cents": 250}'))
    after = EventBus(transport=transport)
    seen: list[PlacedV2] = []

    @after.subscribe(group="billing")
    async def bill(event: PlacedV2) -> None:
        seen.append(event)

    async with after:
        assert await after.replay_dead_letters("billing") == 1
        await drain(after)
    assert seen == [PlacedV2(order_id="o-1", amount="2.50", currency="EUR")]


async def test_a_newer_version_in_memory_is_dead_lettered_at_once() -> None:
    """In one process no upgraded worker can come: wrong-version on first delivery."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)

    @bus.subscribe(group="billing")
    async def bill(event: PlacedV1) -> None:
        raise AssertionError("never called")

    async with bus:
        await deliver_raw(bus, transport, wire(3, b"{}"))
        (dead,) = await bus.dead_letters()
    assert (dead.reason, dead.attempts) == ("wrong-version", 1)


class Reasons(Observer):
    """The action and reason of every outcome."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def on_outcome(self, outcome: Outcome) -> None:
        self.seen.append((outcome.action, outcome.reason))


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only (the in-memory tests need nothing else)."""
    return "asyncio"


async def test_a_newer_version_on_redis_goes_back_to_the_group_then_to_the_dead_letters(
    redis_server: RedisServer,
) -> None:
    """A newer version goes back to the group per the policy, then to the dead letters."""
    transport = RedisTransport(redis_server.url, prefix=f"v{secrets.token_hex(4)}", block=0.1)
    reasons = Reasons()
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0.0)
    old = EventBus(transport=transport, observers=[reasons], newer_versions=policy)

    @old.subscribe(group="billing")
    async def bill(event: PlacedV1) -> None:
        raise AssertionError("never called")

    async with old, EventBus(transport=transport) as new_publisher:
        await new_publisher.publish(
            PlacedV3(order_id="o-1", amount="1.00", currency="EUR", channel="web")
        )
        await drain(old, reraise=False, timeout=10)
        (dead,) = await old.dead_letters()
    assert reasons.seen == [
        ("retry", "newer-version"),
        ("retry", "newer-version"),
        ("dead-letter", "wrong-version"),
    ]
    assert dead.reason == "wrong-version"


async def test_a_rolling_upgrade_on_redis_handles_every_event_once(
    redis_server: RedisServer,
) -> None:
    """v1 and v2 workers in one group, v1 then v2 events: each handled once, none dead."""
    transport = RedisTransport(redis_server.url, prefix=f"v{secrets.token_hex(4)}", block=0.1)
    handled: Counter[str] = Counter()
    returns = RetryPolicy(max_attempts=50, initial_delay=0.02, max_delay=0.2)
    old_worker = EventBus(transport=transport, newer_versions=returns)
    new_worker = EventBus(transport=transport, newer_versions=returns)

    @old_worker.subscribe(group="billing")
    async def bill_v1(event: PlacedV1) -> None:
        handled[event.order_id] += 1

    @new_worker.subscribe(group="billing")
    async def bill_v2(event: PlacedV2) -> None:
        handled[event.order_id] += 1

    async with EventBus(transport=transport) as old_publisher:
        for i in range(50):
            await old_publisher.publish(PlacedV1(order_id=f"v1-{i}", cents=100 + i))
    async with old_worker, new_worker, EventBus(transport=transport) as new_publisher:
        for i in range(50):
            await new_publisher.publish(PlacedV2(order_id=f"v2-{i}", amount="1.00", currency="EUR"))
        await wait_for(lambda: len(handled) == 100, 30, "every event to be handled")
        await drain(new_worker, timeout=30)
        dead = await new_worker.dead_letters()
    assert set(handled.values()) == {1}
    assert dead == []
