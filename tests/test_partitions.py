"""Partitioned event types: one key stays in one partition and in order, every group
reads every partition, each with its own concurrency; bad options are refused."""

from __future__ import annotations

import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus import ConfigurationError, Event, EventBus, InMemoryTransport, PublishError
from eventbus.outbox import Outbox
from eventbus.testing import drain
from eventbus.transports import Connection, Features
from eventbus.transports.redis import RedisTransport
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


class OrderStep(Event, partitions=4, partition_key="order_id"):
    """One step of an order, numbered; the order id chooses the partition."""

    order_id: str
    step: int


class Ping(Event):
    """An event type of one partition."""

    n: int


class Spread(Event, partitions=8):
    """Partitioned without a key field: the event id (or ``key=``) chooses."""

    n: int


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partitions": 0}, "from 1 to 1024"),
        ({"partitions": 1025}, "from 1 to 1024"),
        ({"partitions": True}, "from 1 to 1024"),
        ({"partitions": "8"}, "from 1 to 1024"),
        ({"partitions": 4, "partition_key": 3}, "field name"),
        ({"partitions": 4, "partition_key": "missing"}, "not one of its fields"),
    ],
)
def test_bad_partition_options_are_refused(options: dict[str, Any], message: str) -> None:
    """Partitions outside 1..1024, a key that is not a field: ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message):

        class Bad(Event, **options):
            order_id: str


async def test_one_key_stays_in_order_while_partitions_run_side_by_side() -> None:
    """concurrency=1 per partition: each key in order, partitions side by side."""
    bus = EventBus(transport=InMemoryTransport())
    seen: dict[str, list[int]] = defaultdict(list)
    running, most = 0, 0

    @bus.subscribe(group="billing", concurrency=1)
    async def bill(event: OrderStep) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.001)
        seen[event.order_id].append(event.step)
        running -= 1

    orders = [f"o-{n}" for n in range(12)]
    async with bus:
        for step in range(10):
            await bus.publish_many([OrderStep(order_id=o, step=step) for o in orders])
        await drain(bus, timeout=20)
        stats = {s.topic: s for s in await bus.inspect()}
    assert {o: seen[o] for o in orders} == {o: list(range(10)) for o in orders}
    assert most > 1  # partitions in parallel, though each takes one at a time
    assert sorted(stats) == [f"OrderStep#{n}" for n in range(4)]


async def test_a_key_given_at_publish_chooses_the_partition() -> None:
    """``key=`` keeps its events in one partition; event ids spread the others."""
    bus = EventBus(transport=InMemoryTransport(), consume=False)  # the groups wait

    @bus.subscribe(group="g")
    async def count(event: Spread) -> None:
        pass

    async with bus:
        for n in range(20):
            envelope = await bus.publish(Spread(n=n), key="tenant-7")
            assert envelope.headers == {"partition-key": "tenant-7"}
        keyed = {s.topic: s.waiting for s in await bus.inspect() if s.waiting}
        await bus.publish_many([Spread(n=n) for n in range(200)])
        spread = {s.topic: s.waiting for s in await bus.inspect()}
    assert list(keyed.values()) == [20]
    assert sorted(spread) == [f"Spread#{n}" for n in range(8)]
    assert all(waiting > 0 for waiting in spread.values())
    assert sum(spread.values()) == 220


async def test_key_for_a_type_of_one_partition_or_not_a_str_is_refused() -> None:
    """``key=`` where it means nothing, or is empty: PublishError before anything is sent."""
    async with EventBus(transport=InMemoryTransport()) as bus:
        with pytest.raises(PublishError, match="one partition"):
            await bus.publish(Ping(n=1), key="k")
        with pytest.raises(PublishError, match="non-empty str"):
            await bus.publish(Spread(n=1), key="")
        with pytest.raises(PublishError, match="non-empty str"):
            await bus.publish_many([Spread(n=1)], key=7)  # type: ignore[arg-type]


async def test_deleting_a_group_of_a_partitioned_type_deletes_every_partition() -> None:
    """``delete_group(group, OrderStep)`` counts one group per partition."""
    transport = InMemoryTransport()
    worker = EventBus(transport=transport)

    @worker.subscribe(group="billing")
    async def bill(event: OrderStep) -> None:
        pass

    async with worker:
        await worker.publish(OrderStep(order_id="o-1", step=0))
        await drain(worker, timeout=10)
    async with EventBus(transport=transport) as admin:
        assert await admin.delete_group("billing", OrderStep) == 4
        assert [s for s in await admin.inspect() if s.group == "billing"] == []


def order_steps(orders: int, steps: int) -> list[OrderStep]:
    """``steps`` steps of each of ``orders`` orders, interleaved."""
    return [OrderStep(order_id=f"o-{o}", step=s) for s in range(steps) for o in range(orders)]


async def run_in_order(transport: RedisTransport, events: list[OrderStep]) -> dict[str, list[int]]:
    """Publish ``events`` and handle them with concurrency=1; each order's steps, as seen."""
    bus = EventBus(transport=transport)
    seen: dict[str, list[int]] = defaultdict(list)

    @bus.subscribe(group="billing", concurrency=1)
    async def bill(event: OrderStep) -> None:
        seen[event.order_id].append(event.step)

    async with bus:
        await bus.publish_many(events)
        await drain(bus, timeout=30)
    return seen


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_redis_each_partition_is_a_stream_and_a_key_stays_in_one(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """One stream per partition; each order's steps in one stream, in order."""
    prefix = f"p{secrets.token_hex(4)}"
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.2)
    seen = await run_in_order(transport, order_steps(12, 5))
    assert dict(seen) == {f"o-{o}": list(range(5)) for o in range(12)}
    homes: dict[str, set[int]] = defaultdict(set)
    for number in range(4):
        for _, fields in await redis_admin.xrange(f"{prefix}:{{OrderStep#{number}}}"):
            payload = fields[b"payload"].decode()
            order = payload.split('"order_id":"')[1].split('"')[0]
            homes[order].add(number)
    assert len(homes) == 12
    assert all(len(numbers) == 1 for numbers in homes.values())
    assert len(set().union(*homes.values())) > 1


@pytest.mark.cluster
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_a_cluster_the_partitions_of_one_type_spread_over_the_masters(
    redis_cluster: RedisCluster,
) -> None:
    """Four partitions of one event type land on every master, and keep order."""
    prefix = f"p{secrets.token_hex(4)}"
    transport = RedisTransport(redis_cluster.url, prefix=prefix, block=0.2, cluster=True)
    seen = await run_in_order(transport, order_steps(12, 5))
    assert dict(seen) == {f"o-{o}": list(range(5)) for o in range(12)}
    holding = 0
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as client:
            if client.info("replication")["role"] != "master":
                continue
            holding += bool(list(client.scan_iter(match=f"{prefix}:{{OrderStep#*}}")))
    assert holding == 3


class MovingBefore(Event, name="Moving"):
    """The event type before it was partitioned."""

    n: int


class MovingAfter(Event, name="Moving", partitions=3):
    """The same event type, spread over three partitions."""

    n: int


async def test_a_worker_started_after_a_change_of_partitions_drains_the_old_layout() -> None:
    """A worker of the new layout also drains the old layout's stream."""
    transport = InMemoryTransport()
    before = EventBus(transport=transport, consume=False)

    @before.subscribe(group="g")
    async def old_handler(event: MovingBefore) -> None:
        pass

    async with before:
        await before.publish_many([MovingBefore(n=n) for n in range(10)])
    after = EventBus(transport=transport)
    seen: list[int] = []

    @after.subscribe(group="g")
    async def handler(event: MovingAfter) -> None:
        seen.append(event.n)

    async with after:
        await after.publish_many([MovingAfter(n=n) for n in range(10, 40)])
        await drain(after, timeout=10)
        left = {s.topic: s.waiting + s.in_flight for s in await after.inspect()}
    assert sorted(seen) == list(range(40))
    assert left == {"Moving": 0, "Moving#0": 0, "Moving#1": 0, "Moving#2": 0}


class CountingInspections:
    """An in-memory transport whose connections count their ``inspect()`` calls."""

    def __init__(self) -> None:
        self.inner = InMemoryTransport()
        self.inspections = 0

    @property
    def features(self) -> Features:
        """The in-memory transport's."""
        return self.inner.features

    async def connect(self) -> Connection:
        """An in-memory connection, counting."""
        conn: Any = await self.inner.connect()
        inspect = conn.inspect

        async def counted() -> Any:
            self.inspections += 1
            return await inspect()

        conn.inspect = counted
        return conn  # type: ignore[no-any-return]


async def test_a_worker_counts_the_groups_only_when_an_earlier_layout_is_listed() -> None:
    """Starting a worker lists the groups; it counts them (``inspect``) only when a topic
    of an earlier number of partitions is listed for one of its groups."""
    transport = CountingInspections()

    def worker() -> EventBus:
        bus = EventBus(transport=transport)

        @bus.subscribe(group="g")
        async def handler(event: MovingAfter) -> None:
            pass

        return bus

    old = await transport.inner.connect()
    await old.subscribe("Moving", "other")  # the old layout, of another group
    async with worker():
        pass
    assert transport.inspections == 0
    await old.subscribe("Moving", "g")
    async with worker():
        pass
    assert transport.inspections == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_outbox_relays_each_event_to_its_partition(tmp_path: Path) -> None:
    """Written with ``key=`` in a transaction, relayed to the key's partition."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    bus = EventBus(transport=InMemoryTransport(), consume=False, outbox=Outbox(engine))

    @bus.subscribe(group="g")
    async def handler(event: Spread) -> None:
        pass

    try:
        async with bus:
            direct = await bus.publish(Spread(n=0), key="tenant-1")
            async with engine.begin() as conn:
                for n in range(1, 6):
                    await bus.publish(Spread(n=n), key="tenant-1", transaction=conn)

            async def waiting() -> dict[str, int]:
                return {s.topic: s.waiting for s in await bus.inspect() if s.waiting}

            async def relayed() -> bool:
                return sum((await waiting()).values()) == 6

            await wait_for(relayed, 10, "the relay")
            held = await waiting()
    finally:
        await engine.dispose()
    assert direct.headers == {"partition-key": "tenant-1"}
    assert list(held.values()) == [6]
