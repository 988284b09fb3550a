"""Replicas and failover: ``replicas=1`` waits for a replica before ``publish()``
returns; a master killed under load on a cluster loses no event that was confirmed."""

from __future__ import annotations

import gc
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis

from eventbus import (
    ConfigurationError,
    Event,
    EventBus,
    PublishError,
    PublishOutcomeUnknownError,
    TransportError,
)
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.subprocess_workers import Ledger, Worker
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.anyio,
    # redis-py's cluster client leaves connections of nodes that a failover or a slot
    # move took out of its map open until garbage collection (redis/redis-py#4053):
    # the warnings that says so are not this project's
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


class Paid(Event):
    """One numbered event."""

    n: int


@pytest.mark.parametrize(
    "options",
    [{"replicas": -1}, {"replicas": True}, {"replicas": "1"}, {"replica_timeout": 0}],
)
def test_bad_replica_options_are_refused(options: dict[str, Any]) -> None:
    """A negative or non-int replica count, a timeout of zero: ConfigurationError."""
    with pytest.raises(ConfigurationError):
        RedisTransport("redis://127.0.0.1:6379/0", **options)


async def test_replicas_that_do_not_confirm_make_publish_say_the_outcome_is_unknown(
    redis_server: RedisServer,
) -> None:
    """No replica confirms within replica_timeout: PublishOutcomeUnknownError."""
    transport = RedisTransport(
        redis_server.url, prefix=f"r{secrets.token_hex(4)}", replicas=1, replica_timeout=0.2
    )
    async with EventBus(transport=transport) as bus:
        started = time.monotonic()
        with pytest.raises(PublishOutcomeUnknownError, match="0 of the 1 replicas"):
            await bus.publish(Paid(n=1))
        assert time.monotonic() - started < 2
        with pytest.raises(PublishOutcomeUnknownError, match="events 1 to 3") as caught:
            await bus.publish_many([Paid(n=n) for n in range(3)])
        assert caught.value.stored == 0


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica."""
    master = RedisServer(tmp_path / "master")
    (tmp_path / "master").mkdir()
    master.start()
    (tmp_path / "replica").mkdir()
    replica = RedisServer(
        tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(master.port))
    )
    replica.start()
    try:
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def in_sync(master: RedisServer) -> bool:
    """Whether the master has a replica online (its first sync done)."""
    with redis.Redis(port=master.port) as client:
        replica = client.info("replication").get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


async def test_publish_waits_for_a_replica_and_says_when_it_stops_answering(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    """replicas=1: fine while the replica answers, an error while it is stopped."""
    master, replica = replicated
    await wait_for(lambda: in_sync(master), 10, "the replica to connect")
    transport = RedisTransport(master.url, prefix="w", replicas=1, replica_timeout=1.0)
    async with EventBus(transport=transport) as bus:
        for n in range(20):
            await bus.publish(Paid(n=n))
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(PublishOutcomeUnknownError, match="replica"):
                await bus.publish(Paid(n=20))
        finally:
            replica.process.send_signal(signal.SIGCONT)
        await bus.publish(Paid(n=21))


async def failover_run(cluster: RedisCluster, replicas: int) -> dict[str, Any]:
    """Four tasks publish numbered events, one awaited publish at a time each, while a
    worker handles them; once 200 are confirmed, the master of the stream's slot gets
    ``kill -9`` (in the middle of publishes), and once its replica took over it is
    started again (it rejoins as the new master's replica, as an orchestrator would
    restart it); the tasks go on until 800 are confirmed.
    Returns how many confirmed events were lost, how many publishes failed (the caller
    was told), and the seconds from the kill to the first publish confirmed after it."""
    prefix = f"f{secrets.token_hex(4)}"
    transport = RedisTransport(
        cluster.url,
        prefix=prefix,
        cluster=True,
        replicas=replicas,
        publish_retry_for=15.0,
        block=0.2,
    )
    bus = EventBus(transport=transport)
    handled: set[int] = set()
    confirmed: list[int] = []
    failed: list[str] = []
    killed_at: list[float] = []
    outage: list[float] = []

    @bus.subscribe(group="ledger")
    async def record(event: Paid) -> None:
        handled.add(event.n)

    async def publisher(first: int) -> None:
        n = first
        while len(confirmed) < 800:
            started = time.monotonic()
            try:
                await bus.publish(Paid(n=n))
                confirmed.append(n)
                if len(killed_at) == 2 and started > killed_at[1] and not outage:
                    outage.append(time.monotonic() - killed_at[0])
            except (PublishError, TransportError) as exc:  # not confirmed: the caller knows
                failed.append(type(exc).__name__)
            n += 4

    async def killer() -> None:
        await wait_for(lambda: len(confirmed) >= 200, 60, "200 confirmed publishes")
        victim = cluster.master_of(f"{prefix}:{{Paid}}")
        killed_at.append(time.monotonic())
        await anyio.to_thread.run_sync(victim.kill)
        killed_at.append(time.monotonic())  # dead: a publish started from now on waits
        await anyio.to_thread.run_sync(cluster.wait_until_ok)  # the replica took over
        await anyio.to_thread.run_sync(victim.start)  # back, as a replica of the new master

    async with bus:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(killer)
            for first in range(4):
                tasks.start_soon(publisher, first)
        await wait_for(lambda: set(confirmed) <= handled, 60, "every confirmed event")
    return {
        "lost": len(set(confirmed) - handled),
        "failed": dict(Counter(failed)),
        "outage": outage[0] if outage else None,
    }


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of its own (a test kills one of its masters)."""
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.cluster
@pytest.mark.timeout(180)  # a failover and a rejoin take seconds each
async def test_a_master_killed_under_load_loses_no_confirmed_event_with_replicas(
    fresh_cluster: RedisCluster,
) -> None:
    """replicas=1, kill -9 of the stream's master: no confirmed event is lost."""
    result = await failover_run(fresh_cluster, replicas=1)
    gc.collect()  # redis-py's leftovers (see pytestmark) are finalized under this test
    print(f"replicas=1: {result}")  # the figures of the closing notes (pytest -s)
    assert result["lost"] == 0
    assert result["outage"] is not None
    assert result["outage"] < 30


@pytest.mark.cluster
@pytest.mark.timeout(180)  # a failover and a rejoin take seconds each
async def test_a_master_killed_under_load_without_replicas_loses_at_most_its_lag(
    fresh_cluster: RedisCluster,
) -> None:
    """Without replicas=, the same kill loses at most the replication lag (measured)."""
    result = await failover_run(fresh_cluster, replicas=0)
    gc.collect()  # redis-py's leftovers (see pytestmark) are finalized under this test
    print(f"replicas=0: {result}")
    assert result["lost"] <= 40  # the writes of the replication lag at that moment
    assert result["outage"] is not None


class Resharded(Event):
    """An event whose slot moves to another master while it flows."""

    n: int


def asks(node: RedisServer) -> int:
    """How many ``ASK`` redirects ``node`` has answered."""
    with redis.Redis(port=node.port) as client:
        return int(client.info("errorstats").get("errorstat_ASK", {}).get("count", 0))


async def reshard_run(redis_cluster: RedisCluster) -> dict[str, Any]:
    """Four tasks publish (a failure fails the test) while a worker handles; once 200
    are confirmed, the stream's slot moves to another master, holding 0.3 s in each
    step; the tasks go on until 800 are confirmed, then the worker drains."""
    prefix = f"m{secrets.token_hex(4)}"
    stream = f"{prefix}:{{Resharded}}"
    transport = RedisTransport(redis_cluster.url, prefix=prefix, cluster=True, block=0.2)
    bus = EventBus(transport=transport)
    handled: set[int] = set()
    confirmed: list[int] = []
    moved: list[int] = []
    asked: list[int] = []

    @bus.subscribe(group="ledger")
    async def record(event: Resharded) -> None:
        handled.add(event.n)

    async def publisher(first: int) -> None:
        n = first
        while len(confirmed) < 800:
            await bus.publish(Resharded(n=n))  # a failure fails the test
            confirmed.append(n)
            n += 4

    async def reshard() -> None:
        await wait_for(lambda: len(confirmed) >= 200, 60, "200 confirmed publishes")
        source = redis_cluster.master_of(stream)
        target = next(m for m in redis_cluster.masters() if m is not source)
        before = asks(source)
        count = await anyio.to_thread.run_sync(redis_cluster.move_slot, stream, target, 0.3)
        moved.append(count)
        asked.append(asks(source) - before)
        assert redis_cluster.master_of(stream) is target

    async with bus:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reshard)
            for first in range(4):
                tasks.start_soon(publisher, first)
        await wait_for(lambda: set(confirmed) <= handled, 60, "every confirmed event")
        await bus.drain(timeout=30)
        stats = [s for s in await bus.inspect() if s.topic == "Resharded"]
    left = [(s.waiting, s.in_flight, s.scheduled) for s in stats]
    return {"moved": moved, "asked": asked, "confirmed": len(confirmed), "left": left}


@pytest.mark.cluster
async def test_moving_the_slot_of_a_stream_under_load_loses_and_strands_nothing(
    redis_cluster: RedisCluster,
) -> None:
    """The stream's slot moves to another master under load: nothing lost or stranded."""
    result = await reshard_run(redis_cluster)
    gc.collect()  # redis-py's leftovers (see pytestmark) are finalized under this test
    assert result["moved"]
    assert result["moved"][0] >= 1  # the stream and its group's keys
    assert result["asked"][0] > 0  # clients met the migration (ASK) and carried on
    assert result["confirmed"] >= 800
    assert result["left"] == [(0, 0, 0)]


@pytest.mark.cluster
@pytest.mark.timeout(180)  # a failover and a rejoin take seconds each
async def test_workers_killed_while_their_master_fails_over_lose_nothing(
    fresh_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A worker and its stream's master killed together: every event is handled."""
    prefix = f"k{secrets.token_hex(4)}"
    ledger = Ledger(tmp_path / "ledger")
    env = {
        "EVENTBUS_TEST_REDIS_URL": fresh_cluster.every_node_url,
        "EVENTBUS_TEST_CLUSTER": "1",
        "EVENTBUS_TEST_PREFIX": prefix,
        "EVENTBUS_TEST_LEDGER": str(ledger.path),
        "EVENTBUS_TEST_CLAIM_TIMEOUT": "2",
        "EVENTBUS_TEST_IDEMPOTENT": "1",
    }
    wanted = [f"o-{n}" for n in range(3000)]
    workers: list[Worker] = []

    async def start(name: str) -> Worker:
        worker = Worker(f"{name}-{len(workers)}", name, env, tmp_path)
        workers.append(worker)
        await wait_for(lambda: worker.ready() or worker.exited(), 30, f"{name} to start")
        assert worker.ready(), worker.log()
        return worker

    transport = RedisTransport(
        fresh_cluster.every_node_url, prefix=prefix, cluster=True, publish_retry_for=15.0
    )
    try:
        async with EventBus(transport=transport) as bus:
            first, _second = await start("w1"), await start("w2")
            for begin in range(0, len(wanted), 500):
                batch = wanted[begin : begin + 500]
                await bus.publish_many([OrderCreated(order_id=order) for order in batch])
            await wait_for(lambda: len(ledger.done()) >= 1000, 60, "1,000 events done")
            victim = fresh_cluster.master_of(f"{prefix}:{{OrderCreated}}")
            victim.kill()
            first.kill()
            await anyio.to_thread.run_sync(fresh_cluster.wait_until_ok)
            await start("w1")  # under its old name: it takes back what it held
            await wait_for(lambda: set(wanted) <= set(ledger.done()), 90, "every event")
            dead = await bus.dead_letters()
    finally:
        for worker in workers:
            worker.kill()
    gc.collect()  # redis-py's leftovers (see pytestmark) are finalized under this test
    assert set(ledger.done()) == set(wanted)
    assert dead == []
