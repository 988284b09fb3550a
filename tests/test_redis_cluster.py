"""The Redis transport on a private Redis Cluster (three masters, three replicas):
events of many names spread over the masters, each command sent to its slot's master."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis

from eventbus import ConfigurationError
from eventbus.testing.conformance import connected, message, receive_and_ack
from eventbus.transports.redis import RedisTransport
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


def masters(cluster: RedisCluster) -> list[Any]:
    """A plain client of each master."""
    clients: list[Any] = [redis.Redis(port=node.port) for node in cluster.nodes if node.process]
    return [c for c in clients if c.info("replication")["role"] == "master"]


def stat(client: Any, section: str, name: str, field: str) -> int:
    """A counter of INFO ``section`` (0 when Redis has not counted it yet)."""
    return int(client.info(section).get(name, {}).get(field, 0))


async def test_events_of_many_names_spread_over_the_masters_without_redirects(
    redis_cluster: RedisCluster,
) -> None:
    """Thirty event names land on all three masters, with no redirected command."""
    nodes = masters(redis_cluster)
    assert len(nodes) == 3
    moved_before = sum(stat(c, "errorstats", "errorstat_MOVED", "count") for c in nodes)
    xadds_before = [stat(c, "commandstats", "cmdstat_xadd", "calls") for c in nodes]
    topics = [f"Event{number}" for number in range(30)]
    transport = RedisTransport(
        redis_cluster.url, prefix=f"c{secrets.token_hex(4)}", block=0.2, cluster=True
    )
    async with connected(transport) as conn:
        subs = [await conn.subscribe(topic, "g") for topic in topics]
        await conn.publish_many([(topic, message(0)) for topic in topics])  # type: ignore[attr-defined]
        for topic in topics:
            await conn.publish(topic, message(1))
        for sub in subs:
            assert sorted(await receive_and_ack(sub, 2)) == [0, 1]
        for sub in subs:
            await sub.aclose()
    xadds = [stat(c, "commandstats", "cmdstat_xadd", "calls") for c in nodes]
    assert all(after > before for after, before in zip(xadds, xadds_before, strict=True))
    assert sum(xadds) - sum(xadds_before) == 60
    moved = sum(stat(c, "errorstats", "errorstat_MOVED", "count") for c in nodes)
    assert moved == moved_before
    for client in nodes:
        client.close()


@pytest.mark.parametrize(
    ("url", "message_part"),
    [
        ("redis://127.0.0.1:7000/1", "database 0 only"),
        ("unix:///tmp/redis.sock", "redis:// or rediss://"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_refused(url: str, message_part: str) -> None:
    """A database other than 0, or a unix socket: ConfigurationError at once."""
    with pytest.raises(ConfigurationError, match=message_part):
        RedisTransport(url, cluster=True)


def test_cluster_must_be_a_bool() -> None:
    """``cluster="yes"`` is a mistake, not a truthy value."""
    with pytest.raises(ConfigurationError, match="True or False"):
        RedisTransport("redis://127.0.0.1:7000/0", cluster="yes")  # type: ignore[arg-type]


def test_a_node_list_needs_cluster_true_and_valid_ports() -> None:
    """A list of nodes without cluster=True, or with a bad port: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="invalid port"):
        RedisTransport("redis://h1:7000,h2:port/0", cluster=True)
    with pytest.raises(ConfigurationError, match="cluster=True"):
        RedisTransport("redis://h1:7000,h2:7001/0")


async def test_a_worker_starts_while_the_first_listed_node_is_down(
    redis_cluster: RedisCluster,
) -> None:
    """The first listed node is down: the client finds the cluster through the next."""
    live = redis_cluster.every_node_url.replace("redis://", "redis://127.0.0.1:1,", 1)
    transport = RedisTransport(live, prefix=f"c{secrets.token_hex(4)}", cluster=True)
    async with connected(transport) as conn:
        sub = await conn.subscribe("Listed", "g")
        await conn.publish("Listed", message(7))
        assert await receive_and_ack(sub, 1) == [7]
        await sub.aclose()
