"""Groups over time: buses that only publish, workers of some groups, groups that start
at the latest message, names derived from code, and deleting or resetting a group."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest

from eventbus import BusStateError, ConfigurationError, EventBus, InMemoryTransport, RetryPolicy
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid
from tests.redis_server import RedisServer
from tests.test_minimal_transport import CoreOnlyTransport
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


def shop(transport: object, handled: list[str], **options: object) -> EventBus:
    """A bus with an ``email`` and a ``stock`` group; ``handled`` gets ``group:order``."""
    bus = EventBus(transport=transport, **options)  # type: ignore[arg-type]

    @bus.subscribe(group="email")
    async def email(event: OrderCreated) -> None:
        handled.append(f"email:{event.order_id}")

    @bus.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None:
        handled.append(f"stock:{event.order_id}")

    @bus.subscribe(group="audit", mode="immediate")
    async def audit(event: OrderCreated) -> None:
        handled.append(f"audit:{event.order_id}")

    return bus


async def test_a_bus_that_does_not_consume_publishes_and_runs_immediate_subscribers() -> None:
    """consume=False runs immediate subscribers; a later worker gets the declared groups' events."""
    transport = InMemoryTransport(history=0)  # no history: only a declared group keeps events
    api_seen: list[str] = []
    worker_seen: list[str] = []
    async with shop(transport, api_seen, consume=False) as api:
        await api.publish(OrderCreated(order_id="o-1"))
        assert api_seen == ["audit:o-1"]
        async with shop(transport, worker_seen) as worker:
            await drain(worker)
    assert sorted(worker_seen) == ["email:o-1", "stock:o-1"]


async def test_a_bus_consumes_only_the_groups_it_is_given() -> None:
    """consume={"email"}: the stock group is declared and left to another worker."""
    transport = InMemoryTransport(history=0)
    seen: list[str] = []
    async with shop(transport, seen, consume={"email"}) as bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await wait_for(lambda: "email:o-1" in seen, 5, "the email group")
        stats = {s.group: s.waiting for s in await bus.inspect()}
    assert "stock:o-1" not in seen
    assert stats["stock"] == 1


async def test_consume_only_checks_its_groups_and_the_moment() -> None:
    """An unknown group fails the start; after the start, consume_only() is refused."""
    bus = shop(InMemoryTransport(), [])
    bus.consume_only(["email", "shipping"])
    with pytest.raises(ConfigurationError, match=r"shipping.*its groups are: email, stock"):
        await bus.__aenter__()
    running = shop(InMemoryTransport(), [])
    async with running:
        with pytest.raises(BusStateError, match="before the bus starts"):
            running.consume_only(["email"])


@pytest.mark.parametrize("value", ["email", 3, [1]])
def test_consume_takes_a_bool_or_group_names(value: object) -> None:
    """A string, a number or non-string names are refused."""
    with pytest.raises(ConfigurationError, match="consume="):
        EventBus(consume=value)  # type: ignore[arg-type]


async def test_a_group_that_starts_at_latest_skips_the_history() -> None:
    """start="latest": a new group handles only what is published after it exists."""
    transport = InMemoryTransport()
    seen: list[str] = []
    async with EventBus(transport=transport) as publisher:
        await publisher.publish(OrderCreated(order_id="old"))
        bus = EventBus(transport=transport)

        @bus.subscribe(group="fresh", start="latest")
        async def fresh(event: OrderCreated) -> None:
            seen.append(event.order_id)

        async with bus:
            await publisher.publish(OrderCreated(order_id="new"))
            await drain(bus)
    assert seen == ["new"]


def test_start_must_be_earliest_or_latest() -> None:
    """Anything else is a ConfigurationError naming the handler."""
    bus = EventBus()
    with pytest.raises(ConfigurationError, match=r"start= of .*'earliest' or 'latest'"):

        @bus.subscribe(group="g", start="now")
        async def handle(event: OrderCreated) -> None:
            pass


async def test_a_transport_without_group_management_says_so() -> None:
    """start="latest" and delete_group() need GroupManagement; the error names it."""
    bus = EventBus(transport=CoreOnlyTransport())

    @bus.subscribe(group="g", start="latest")
    async def handle(event: OrderCreated) -> None:
        pass

    with pytest.raises(ConfigurationError, match="GroupManagement"):
        await bus.__aenter__()
    async with EventBus(transport=CoreOnlyTransport()) as plain:
        with pytest.raises(ConfigurationError, match="GroupManagement"):
            await plain.delete_group("g")


async def test_reset_and_delete_a_group_in_memory() -> None:
    """Reset drops the backlog, delete the group; a group with consumers is not deleted."""
    transport = InMemoryTransport()
    async with EventBus(transport=transport) as publisher:
        for i in range(3):
            await publisher.publish(OrderCreated(order_id=f"o-{i}"))
        seen: list[str] = []
        async with shop(transport, seen, consume=False) as api:
            assert await api.reset_group("email", "latest") == 1
            assert await api.reset_group("stock", "latest", OrderPaid) == 0
            stats = {s.group: s.waiting for s in await api.inspect()}
            assert stats == {"email": 0, "stock": 3}
            assert await api.delete_group("stock") == 1
            assert {s.group for s in await api.inspect()} == {"email"}
        async with shop(transport, seen) as worker:
            with pytest.raises(ConfigurationError, match="has consumers in this process"):
                await worker.delete_group("email")
            with pytest.raises(ConfigurationError, match="'earliest' or 'latest'"):
                await worker.reset_group("email", "yesterday")


# -- on Redis ---------------------------------------------------------------------------


def redis(server: RedisServer) -> RedisTransport:
    """A Redis transport on a fresh key prefix."""
    return RedisTransport(server.url, prefix=f"g{secrets.token_hex(4)}", block=0.1)


async def test_a_group_named_after_the_code_is_refused_on_redis(
    redis_server: RedisServer,
) -> None:
    """No group= on a durable transport: the start fails and asks for a name."""
    bus = EventBus(transport=redis(redis_server))

    @bus.subscribe()
    async def send_welcome(event: OrderCreated) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r'send_welcome has no group=.*group="\.\.\."'):
        await bus.__aenter__()


async def test_an_api_bus_declares_the_latest_group_before_its_worker_starts(
    redis_server: RedisServer,
) -> None:
    """A consume=False bus declares a start="latest" group: its worker gets what came after."""
    transport = redis(redis_server)
    seen: list[str] = []

    def app(**options: object) -> EventBus:
        bus = EventBus(transport=transport, **options)  # type: ignore[arg-type]

        @bus.subscribe(group="email", start="latest")
        async def email(event: OrderCreated) -> None:
            seen.append(event.order_id)

        return bus

    async with EventBus(transport=transport) as before:
        await before.publish(OrderCreated(order_id="before"))
    async with app(consume=False) as api:
        await api.publish(OrderCreated(order_id="o-1"))
        async with app() as worker:
            await drain(worker, timeout=10)
    assert seen == ["o-1"]


async def test_a_new_group_logs_the_entries_it_will_handle(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A group created on a stream with 3 entries says it will handle them."""
    transport = redis(redis_server)
    async with EventBus(transport=transport) as publisher:
        for i in range(3):
            await publisher.publish(OrderCreated(order_id=f"o-{i}"))
    bus = EventBus(transport=transport)

    @bus.subscribe(group="late")
    async def late(event: OrderCreated) -> None:
        pass

    with caplog.at_level(logging.INFO, logger="eventbus.redis"):
        async with bus:
            await drain(bus, timeout=10)
    assert any("will handle the 3 entries" in r.getMessage() for r in caplog.records)


async def test_publishing_an_event_no_group_reads_warns_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Three publishes of an event without a group: one warning, naming it."""
    with caplog.at_level(logging.WARNING, logger="eventbus.redis"):
        async with EventBus(transport=redis(redis_server)) as bus:
            for i in range(3):
                await bus.publish(OrderPaid(order_id=f"o-{i}"))
            await bus.publish_many([OrderPaid(order_id="o-3")])
    warnings = [r.getMessage() for r in caplog.records if "no group reads" in r.getMessage()]
    assert len(warnings) == 1
    assert "OrderPaid" in warnings[0]


async def test_reset_and_delete_a_group_on_redis(redis_server: RedisServer) -> None:
    """reset to latest drops the group's backlog; delete removes the group."""
    transport = redis(redis_server)
    async with EventBus(transport=transport) as publisher:
        for i in range(3):
            await publisher.publish(OrderCreated(order_id=f"o-{i}"))
        async with shop(transport, [], consume=False) as api:
            stats = {s.group: s.waiting for s in await api.inspect()}
            assert stats == {"email": 3, "stock": 3}
            assert await api.reset_group("email") == 1
            assert await api.delete_group("stock") == 1
            stats = {s.group: s.waiting for s in await api.inspect()}
        assert stats == {"email": 0}


async def test_a_bus_whose_start_failed_can_be_started_again() -> None:
    """A failed start leaves the bus startable: the retry fails for the same reason."""
    bus = EventBus(transport=CoreOnlyTransport())

    @bus.subscribe(group="g", start="latest")
    async def handle(event: OrderCreated) -> None:
        pass

    for _ in range(2):
        with pytest.raises(ConfigurationError, match="GroupManagement"):
            await bus.__aenter__()


async def test_deleting_a_group_whose_stream_is_gone_and_its_handled_records(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """delete_group works without the stream and removes the group's handled records."""
    prefix = f"g{secrets.token_hex(4)}"
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.1)
    bus = EventBus(transport=transport)
    seen: list[str] = []

    @bus.subscribe(group="mail", idempotent=True)
    async def mail(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, timeout=10)
    assert await redis_admin.keys(f"{prefix}:{{OrderCreated}}:handled:mail:*")
    async with EventBus(transport=transport) as admin:
        await redis_admin.delete(f"{prefix}:{{OrderCreated}}")
        assert await admin.delete_group("mail") == 1
    assert await redis_admin.keys(f"{prefix}:*") == []


async def test_an_operations_bus_registers_event_types_to_decode_dead_letters() -> None:
    """register() makes a type decodable without subscribing: dead letters decode."""
    transport = InMemoryTransport()
    worker = EventBus(transport=transport)

    @worker.subscribe(group="mail", retry=RetryPolicy.none())
    async def mail(event: OrderCreated) -> None:
        raise ConnectionError("down")

    async with worker:
        await worker.publish(OrderCreated(order_id="o-1"))
        await drain(worker, reraise=False)
        ops = EventBus(transport=transport)
        with pytest.raises(ConfigurationError, match="Event classes"):
            ops.register(dict)  # type: ignore[arg-type]
        ops.register(OrderCreated)
        async with ops:
            (letter,) = await ops.dead_letters()
    assert letter.event == OrderCreated(order_id="o-1")
