"""Delivery through the bus: pub/sub between groups, queues within a group, context."""

from __future__ import annotations

import anyio
import pytest

from eventbus import (
    BusStateError,
    Context,
    EventBus,
    InMemoryTransport,
    PublishError,
    Registry,
)
from eventbus.testing import drain
from tests.events import OrderCreated, OrderPaid, UserBanned

pytestmark = pytest.mark.anyio


async def test_every_group_gets_every_event() -> None:
    """Two groups subscribed to one event type each handle every event (pub/sub)."""
    bus = EventBus()
    seen: dict[str, list[str]] = {"email": [], "stock": []}

    @bus.subscribe(group="email")
    async def email(event: OrderCreated) -> None:
        seen["email"].append(event.order_id)

    @bus.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None:
        seen["stock"].append(event.order_id)

    async with bus:
        for i in range(20):
            await bus.publish(OrderCreated(order_id=f"o-{i}"))
        await drain(bus)
    expected = [f"o-{i}" for i in range(20)]
    assert seen == {"email": expected, "stock": expected}


async def test_workers_of_one_group_share_its_events() -> None:
    """Two buses on one transport are two workers of a group: each event handled once."""
    transport = InMemoryTransport()
    handled: dict[str, list[int]] = {"a": [], "b": []}
    both_busy = anyio.Event()

    def worker(name: str) -> EventBus:
        bus = EventBus(transport=transport)

        @bus.subscribe(group="shipping")
        async def ship(event: OrderPaid) -> None:
            handled[name].append(int(event.order_id))
            if handled["a"] and handled["b"]:
                both_busy.set()
            await both_busy.wait()

        return bus

    async with worker("a") as a, worker("b"):
        for i in range(10):
            await a.publish(OrderPaid(order_id=str(i)))
        await drain(a)
    assert sorted(handled["a"] + handled["b"]) == list(range(10))
    assert handled["a"]
    assert handled["b"]


async def test_concurrency_runs_that_many_handlers_at_once() -> None:
    """concurrency=3 runs three handler calls at once, and never a fourth."""
    bus = EventBus()
    running = 0
    peak = 0
    three_running = anyio.Event()
    release = anyio.Event()

    @bus.subscribe(concurrency=3)
    async def slow(event: OrderCreated) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await release.wait()
        running -= 1

    async with bus:
        for i in range(10):
            await bus.publish(OrderCreated(order_id=str(i)))
        with anyio.fail_after(5):
            await three_running.wait()
        await anyio.wait_all_tasks_blocked()
        assert running == 3
        release.set()
        await drain(bus)
    assert peak == 3


async def test_one_worker_handles_events_in_publish_order() -> None:
    """With concurrency 1, a group handles events of a type in publish order."""
    bus = EventBus()
    order: list[int] = []

    @bus.subscribe()
    async def record(event: OrderCreated) -> None:
        order.append(int(event.order_id))
        await anyio.lowlevel.checkpoint()

    async with bus:
        for i in range(300):
            await bus.publish(OrderCreated(order_id=str(i)))
        await drain(bus)
    assert order == list(range(300))


async def test_union_annotation_subscribes_to_both_types() -> None:
    """A handler annotated `A | B` receives events of both types."""
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe()
    async def either(event: OrderCreated | OrderPaid) -> None:
        seen.append(type(event).__name__)

    async with bus:
        await bus.publish(OrderCreated(order_id="1"))
        await bus.publish(OrderPaid(order_id="1"))
        await drain(bus)
    assert sorted(seen) == ["OrderCreated", "OrderPaid"]


async def test_context_carries_envelope_and_chains_ids() -> None:
    """Context.publish gives follow-ups the flow's correlation id and the cause's id."""
    bus = EventBus()
    envelopes: dict[str, Context] = {}

    @bus.subscribe(group="orders")
    async def on_created(event: OrderCreated, context: Context) -> None:
        envelopes["created"] = context
        await context.publish(OrderPaid(order_id=event.order_id), headers={"step": "2"})

    @bus.subscribe(group="shipping")
    async def on_paid(event: OrderPaid, context: Context) -> None:
        envelopes["paid"] = context

    async with bus:
        first = await bus.publish(OrderCreated(order_id="o-1"), headers={"tenant": "t1"})
        await drain(bus)
    created, paid = envelopes["created"].envelope, envelopes["paid"].envelope
    assert created == first
    assert dict(created.headers) == {"tenant": "t1"}
    assert envelopes["created"].group == "orders"
    assert envelopes["created"].attempt == 1
    assert (paid.correlation_id, paid.causation_id) == (first.id, first.id)
    assert dict(paid.headers) == {"step": "2"}
    assert first.correlation_id == first.id
    assert first.causation_id is None


async def test_publish_returns_envelope_with_wire_name_and_version() -> None:
    """The returned envelope names the event type as on the wire, with a UTC time."""
    async with EventBus() as bus:
        envelope = await bus.publish(UserBanned(user_id="u-1"), correlation_id="flow-9")
    assert (envelope.name, envelope.version) == ("user.banned", 2)
    assert envelope.correlation_id == "flow-9"
    assert envelope.occurred_at.utcoffset() is not None
    assert envelope.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


async def test_group_started_later_receives_earlier_events() -> None:
    """A worker that starts after a producer published still gets those events."""
    transport = InMemoryTransport()
    seen: list[str] = []
    async with EventBus(transport=transport) as producer:
        await producer.publish(OrderCreated(order_id="early"))

    worker = EventBus(transport=transport)

    @worker.subscribe(group="late")
    async def late(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async with worker:
        await drain(worker)
    assert seen == ["early"]


async def test_producer_only_bus_publishes_without_workers() -> None:
    """A bus with no subscribers connects and publishes; no worker runs."""
    async with EventBus() as bus:
        envelope = await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert envelope.name == "OrderCreated"


async def test_registries_compose_into_one_bus() -> None:
    """Registries declared by separate modules are included into one bus."""
    stock, email = Registry(), Registry()
    seen: list[str] = []

    @stock.subscribe(group="stock")
    async def reserve(event: OrderCreated) -> None:
        seen.append("stock")

    @email.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None:
        seen.append("email")

    bus = EventBus()
    bus.include(stock)
    bus.include(email)
    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert sorted(seen) == ["email", "stock"]
    assert [s.group for s in bus.subscribers] == ["stock", "email"]


async def test_publish_rejects_what_is_not_an_event() -> None:
    """publish() of a non-Event, or with non-string headers, raises PublishError."""
    async with EventBus() as bus:
        with pytest.raises(PublishError, match="Event subclass"):
            await bus.publish({"order_id": "o-1"})  # type: ignore[arg-type]
        with pytest.raises(PublishError, match="headers"):
            await bus.publish(OrderCreated(order_id="o"), headers={"n": 1})  # type: ignore[dict-item]


async def test_publish_outside_the_bus_lifetime_raises() -> None:
    """publish() before start and after close raises BusStateError, naming the state."""
    bus = EventBus()
    with pytest.raises(BusStateError, match="not started"):
        await bus.publish(OrderCreated(order_id="o-1"))
    async with bus:
        pass
    with pytest.raises(BusStateError, match="closed"):
        await bus.publish(OrderCreated(order_id="o-1"))
    with pytest.raises(BusStateError):
        await bus.drain()
    with pytest.raises(BusStateError, match="runs once"):
        async with bus:
            pass


async def test_publish_many_publishes_a_batch_in_order() -> None:
    """publish_many returns one envelope per event and handlers see them in order."""
    bus = EventBus()
    seen: list[str] = []

    @bus.subscribe()
    async def record(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async with bus:
        envelopes = await bus.publish_many(
            [OrderCreated(order_id=str(i)) for i in range(5)], correlation_id="batch-1"
        )
        await drain(bus)
        with pytest.raises(PublishError):
            await bus.publish_many([OrderCreated(order_id="x"), "nope"])  # type: ignore[list-item]
    assert seen == ["0", "1", "2", "3", "4"]
    assert [e.correlation_id for e in envelopes] == ["batch-1"] * 5
    assert len({e.id for e in envelopes}) == 5
