"""Idle subscriptions on Redis: a worker reading many event types holds a few connections,
and an idle subscription still takes its events, retries and new groups at once."""

from __future__ import annotations

import functools
import operator
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from eventbus import ConfigurationError, Event, EventBus, RetryPolicy
from eventbus.testing.conformance import connected, message
from eventbus.transports.redis import RedisTransport
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

TYPES = 60  # event types one worker reads


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, so that its connection count is the bus's."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin(private_server: RedisServer) -> AsyncIterator[Any]:
    """A client of the private server."""
    client = aioredis.Redis.from_url(private_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def event_types(count: int) -> list[type[Event]]:
    """``count`` event types of their own (fresh names, so fresh streams)."""
    tag = secrets.token_hex(3)
    return [
        type(f"Idle{tag}N{i}", (Event,), {"__annotations__": {"n": int}, "__module__": __name__})
        for i in range(count)
    ]


def subscribe_all(
    bus: EventBus, group: str, types: list[type[Event]], seen: list[tuple[str, str]]
) -> None:
    """One handler of ``group`` for every type in ``types``, noting what it handles."""

    async def handle(event: Event) -> None:
        seen.append((group, type(event).__name__))

    handle.__annotations__ = {"event": functools.reduce(operator.or_, types), "return": None}
    bus.subscribe(group=group)(handle)


def worker(
    transport: RedisTransport, count: int, groups: tuple[str, ...] = ("stock",)
) -> tuple[EventBus, list[type[Event]], list[tuple[str, str]]]:
    """A bus whose ``groups`` each read ``count`` fresh event types, and what they handle."""
    types, seen = event_types(count), list[tuple[str, str]]()
    bus = EventBus(transport=transport)
    for group in groups:
        subscribe_all(bus, group, types, seen)
    return bus, types, seen


async def clients(admin: Any) -> int:
    """Connections to the server, the admin's own left out."""
    return int((await admin.info("clients"))["connected_clients"]) - 1


async def test_a_worker_reading_many_idle_event_types_holds_a_connection_per_group(
    private_server: RedisServer, admin: Any
) -> None:
    """Two groups reading 60 idle event types each hold about 20 connections, not 120."""
    transport = RedisTransport(private_server.url, prefix="idle", block=0.5)
    bus, types, seen = worker(transport, TYPES, ("stock", "email"))
    async with bus:
        await bus.publish_many([kind(n=1) for kind in types])
        await wait_for(lambda: len(seen) == 2 * TYPES, 20, "every event handled by both groups")
        await wait_for(lambda: _at_most(admin, 20), 20, "idle subscriptions to park")
    assert sorted(seen) == sorted((g, t.__name__) for g in ("stock", "email") for t in types)


async def _at_most(admin: Any, count: int) -> bool:
    return await clients(admin) <= count


async def test_an_idle_subscription_takes_an_event_at_once_however_long_block_is(
    private_server: RedisServer,
) -> None:
    """With ``block=30`` a subscription parking during its group's read joins it at once."""
    bus, types, seen = worker(RedisTransport(private_server.url, prefix="wake", block=30), TYPES)
    async with bus:
        await bus.publish(types[-1](n=1))  # its subscription parks last
        await wait_for(lambda: len(seen) == 1, 10, "the event of the last type handled")
        await bus.publish_many([kind(n=2) for kind in types])
        await wait_for(lambda: len(seen) == TYPES + 1, 10, "every event handled")


async def test_a_retry_of_an_idle_subscription_comes_when_due(
    private_server: RedisServer,
) -> None:
    """A failed event is tried again after its backoff, though no read ends before 30 s."""
    (kind,) = event_types(1)
    attempts: list[float] = []
    bus = EventBus(transport=RedisTransport(private_server.url, prefix="retry", block=30))

    async def flaky(event: Event) -> None:
        attempts.append(anyio.current_time())
        if len(attempts) == 1:
            raise ValueError("first attempt fails")

    flaky.__annotations__ = {"event": kind, "return": None}
    bus.subscribe(group="stock", retry=RetryPolicy(max_attempts=2, initial_delay=0.5))(flaky)
    async with bus:
        await bus.publish(kind(n=1))
        await wait_for(lambda: len(attempts) == 2, 10, "the retry")


async def test_a_user_without_client_commands_still_gets_every_event(
    private_server: RedisServer, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL user refused ``CLIENT`` gets a warning, and still every event."""
    await admin.execute_command(
        "ACL", "SETUSER", "noclient", "on", ">pw", "~*", "&*", "+@all", "-client"
    )
    url = private_server.url.replace("redis://", "redis://noclient:pw@")
    bus, types, seen = worker(RedisTransport(url, prefix="acl", block=0.5), 10)
    async with bus:
        await bus.publish_many([kind(n=1) for kind in types])
        await wait_for(lambda: len(seen) == len(types), 20, "every event handled")
        await bus.publish(types[-1](n=2))
        await wait_for(lambda: len(seen) == len(types) + 1, 20, "a later event handled")
    assert "Redis refused CLIENT" in caplog.text


async def test_closing_the_subscription_that_reads_for_its_group_leaves_the_others_reading(
    private_server: RedisServer,
) -> None:
    """A parked subscription closing hands the group's read on to another one."""
    transport = RedisTransport(private_server.url, prefix="lead", block=30)
    async with connected(transport) as conn:
        first = await conn.subscribe("A", "g")
        second = await conn.subscribe("B", "g")
        got: list[Any] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first.receive)
            await wait_for(lambda: _blocked_reads(private_server), 10, "the first one's read")

            async def take() -> None:
                got.append(await second.receive())

            tasks.start_soon(take)  # it joins the read that the first one leads

            def joined() -> bool:
                return _unblocks(private_server) == 1 and _blocked_reads(private_server)

            await wait_for(joined, 10, "the second one to join the first one's read")
            await first.aclose()
            await conn.publish("B", message(1))
            await wait_for(lambda: len(got) == 1, 10, "the event of the other subscription")
    assert [delivery.message.headers["i"] for delivery in got] == ["1"]


async def test_idle_subscriptions_recover_when_redis_drops_every_connection(
    private_server: RedisServer, admin: Any
) -> None:
    """``CLIENT KILL`` of every connection, the shared read's included: nothing is missed."""
    bus, types, seen = worker(RedisTransport(private_server.url, prefix="kill", block=30), 10)
    async with bus:
        await bus.publish(types[0](n=0))
        await wait_for(lambda: len(seen) == 1, 10, "the first event")
        await wait_for(lambda: _blocked_reads(private_server), 10, "the group's read")
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await bus.publish_many([kind(n=1) for kind in types])
        await wait_for(lambda: len(seen) == 1 + len(types), 20, "every event after the kill")


async def test_a_group_lost_under_the_shared_read_is_created_again(
    private_server: RedisServer, admin: Any
) -> None:
    """A group destroyed on one stream while parked comes back; no type's event is lost."""
    bus, types, seen = worker(RedisTransport(private_server.url, prefix="lost", block=30), 5)
    async with bus:
        await wait_for(lambda: _blocked_reads(private_server), 10, "the group's read")
        stream = f"lost:{{{types[0].__name__}}}"
        await admin.execute_command("XGROUP", "DESTROY", stream, "stock")
        await bus.publish_many([kind(n=1) for kind in types])
        await wait_for(lambda: len(seen) == len(types), 20, "every event")


def _unblocks(server: RedisServer) -> int:
    """How many ``CLIENT UNBLOCK`` commands ``server`` ran."""
    with redis.Redis.from_url(server.url) as client:
        stats = client.info("commandstats").get("cmdstat_client|unblock", {})
        return int(stats.get("calls", 0))


def _blocked_reads(server: RedisServer) -> bool:
    """Whether a client of ``server`` waits in a blocking command."""
    with redis.Redis.from_url(server.url) as client:
        return int(client.info("clients")["blocked_clients"]) > 0


async def test_idle_poll_is_checked() -> None:
    """``idle_poll`` must be a positive number of seconds, or None."""
    RedisTransport(idle_poll=None)
    for bad in (0, -1.0, float("nan"), "0.1", True):
        with pytest.raises(ConfigurationError, match="idle_poll"):
            RedisTransport(idle_poll=bad)  # type: ignore[arg-type]


@pytest.mark.cluster
async def test_a_worker_on_a_cluster_polls_idle_subscriptions_per_master(
    redis_cluster: RedisCluster,
) -> None:
    """On a cluster 60 idle event types cost about a dozen connections per master."""
    transport = RedisTransport(redis_cluster.url, cluster=True, prefix="idle", block=0.5)
    bus, types, seen = worker(transport, TYPES)
    masters = [aioredis.Redis(port=node.port) for node in redis_cluster.masters()]
    before = [await clients(master) for master in masters]
    try:
        async with bus:
            await bus.publish_many([kind(n=1) for kind in types])
            await wait_for(lambda: len(seen) == TYPES, 20, "every event handled")
            for master in masters:  # the masters forget the poll script: sent whole
                await master.script_flush()

            async def parked() -> bool:
                now = [await clients(master) for master in masters]
                return all(n - b <= 14 for n, b in zip(now, before, strict=True))

            await wait_for(parked, 20, "idle subscriptions to park")
            await bus.publish(types[-1](n=2))
            await wait_for(lambda: len(seen) == TYPES + 1, 10, "an event after a quiet spell")
    finally:
        for master in masters:
            await master.aclose()


@pytest.mark.cluster
async def test_on_a_cluster_idle_poll_none_keeps_a_connection_per_subscription(
    redis_cluster: RedisCluster,
) -> None:
    """``idle_poll=None``: each subscription blocks on its own connection, events flow."""
    transport = RedisTransport(redis_cluster.url, cluster=True, prefix="own", idle_poll=None)
    bus, types, seen = worker(transport, 5)
    async with bus:
        await bus.publish_many([kind(n=1) for kind in types])
        await wait_for(lambda: len(seen) == len(types), 20, "every event handled")
