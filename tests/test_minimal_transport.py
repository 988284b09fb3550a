"""A transport with the required contract alone: the bus works, and says what it lacks."""

from __future__ import annotations

import pytest

from eventbus import ConfigurationError, EventBus, InMemoryTransport
from eventbus.testing.conformance import TransportConformance
from eventbus.transports import (
    BatchPublishing,
    Connection,
    DeadLetterStore,
    Delivery,
    FailureNotes,
    Features,
    HandledRecord,
    IdleWaiting,
    Inspection,
    Message,
    ReferencePublishing,
    Serving,
    Subscription,
)
from tests.events import OrderCreated, OrderPaid
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


class CoreOnlySubscription:
    """Receive, ack, nack, dead-letter and close: nothing optional."""

    def __init__(self, inner: Subscription) -> None:
        self._inner = inner

    async def receive(self) -> Delivery | None:
        """The wrapped subscription's next delivery."""
        return await self._inner.receive()

    async def ack(self, delivery: Delivery) -> None:
        """Ack through the wrapped subscription."""
        await self._inner.ack(delivery)

    async def nack(self, delivery: Delivery, delay: float, notes: FailureNotes) -> None:
        """Nack through the wrapped subscription."""
        await self._inner.nack(delivery, delay, notes)

    async def dead_letter(self, delivery: Delivery, notes: FailureNotes) -> None:
        """Dead-letter through the wrapped subscription."""
        await self._inner.dead_letter(delivery, notes)

    async def aclose(self) -> None:
        """Close the wrapped subscription."""
        await self._inner.aclose()


class CoreOnlyConnection:
    """Publish, subscribe and close: nothing optional."""

    def __init__(self, inner: Connection) -> None:
        self._inner = inner
        self.published: list[str] = []

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """Publish through the wrapped in-memory connection."""
        self.published.append(topic)
        return await self._inner.publish(topic, message, timeout=timeout)

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Subscribe through the wrapped in-memory connection."""
        return CoreOnlySubscription(await self._inner.subscribe(topic, group))

    async def aclose(self) -> None:
        """Close the wrapped connection."""
        await self._inner.aclose()


class CoreOnlyTransport:
    """An in-memory transport seen through the required contract only."""

    def __init__(self) -> None:
        self._inner = InMemoryTransport(serialize=True)
        self.connections: list[CoreOnlyConnection] = []

    @property
    def features(self) -> Features:
        """The in-memory transport's features."""
        return self._inner.features

    async def connect(self) -> CoreOnlyConnection:
        """A connection that offers no optional ability."""
        conn = CoreOnlyConnection(await self._inner.connect())
        self.connections.append(conn)
        return conn


class TestCoreOnlyTransport(TransportConformance):
    """The required scenarios pass; every ability scenario skips, saying why."""

    @pytest.fixture
    def transport(self) -> CoreOnlyTransport:
        """A fresh core-only transport."""
        return CoreOnlyTransport()


async def test_the_connection_offers_no_ability() -> None:
    """The wrappers meet Connection and Subscription and none of the optional protocols."""
    conn = await CoreOnlyTransport().connect()
    assert isinstance(conn, Connection)
    abilities = (BatchPublishing, DeadLetterStore, IdleWaiting, Inspection, Serving)
    for ability in (*abilities, ReferencePublishing):
        assert not isinstance(conn, ability), ability
    subscription = await conn.subscribe("orders", "g")
    assert isinstance(subscription, Subscription)
    assert not isinstance(subscription, HandledRecord)


async def test_a_bus_publishes_and_handles_on_the_required_contract() -> None:
    """Events are encoded, delivered and handled; a batch goes one publish per event."""
    transport = CoreOnlyTransport()
    bus = EventBus(transport=transport)
    handled: list[str] = []

    @bus.subscribe(group="stock")
    async def reserve(event: OrderCreated) -> None:
        handled.append(event.order_id)

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await bus.publish_many([OrderCreated(order_id="o-2"), OrderPaid(order_id="o-2")])
        await wait_for(lambda: len(handled) == 2, 5, "both orders handled")
    assert handled == ["o-1", "o-2"]
    assert transport.connections[0].published == ["OrderCreated", "OrderCreated", "OrderPaid"]


async def test_abilities_the_transport_lacks_raise_a_clear_error() -> None:
    """drain() and the dead-letter methods name the ability the transport does not offer."""
    async with EventBus(transport=CoreOnlyTransport()) as bus:
        with pytest.raises(ConfigurationError, match=r"drain\(\) needs .*IdleWaiting"):
            await bus.drain()
        with pytest.raises(ConfigurationError, match=r"dead_letters\(\) needs .*DeadLetterStore"):
            await bus.dead_letters()
        with pytest.raises(ConfigurationError, match="DeadLetterStore; CoreOnlyTransport does not"):
            await bus.replay_dead_letters()
        with pytest.raises(ConfigurationError, match="DeadLetterStore"):
            await bus.purge_dead_letters()
        with pytest.raises(ConfigurationError, match=r"inspect\(\) needs .*Inspection"):
            await bus.inspect()
