"""The transport conformance suite, run against a private redis-server and a private
Redis Cluster."""

from __future__ import annotations

import secrets

import pytest

from eventbus.testing.conformance import TransportConformance
from eventbus.transports import (
    BatchPublishing,
    Connection,
    DeadLetterStore,
    IdleWaiting,
    Inspection,
    ReferencePublishing,
    Serving,
)
from eventbus.transports.redis import RedisTransport
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


class TestRedisTransport(TransportConformance):
    """RedisTransport passes every conformance scenario."""

    @pytest.fixture
    def transport(self, redis_server: RedisServer) -> RedisTransport:
        """A transport on a fresh key prefix, with a short claim timeout."""
        return RedisTransport(
            redis_server.url, prefix=f"t{secrets.token_hex(4)}", claim_timeout=1.0, block=0.2
        )

    async def test_the_connection_offers_its_abilities(self, conn: Connection) -> None:
        """Batch publishing, dead letters, idle waiting, inspection and serving, so that
        the ability scenarios run rather than skip; no references (Redis carries bytes)."""
        for ability in (BatchPublishing, DeadLetterStore, IdleWaiting, Inspection, Serving):
            assert isinstance(conn, ability), ability.__name__
        assert not isinstance(conn, ReferencePublishing)


@pytest.mark.cluster
class TestRedisClusterTransport(TestRedisTransport):
    """RedisTransport on a Redis Cluster of three masters passes the same scenarios."""

    @pytest.fixture
    def transport(self, redis_cluster: RedisCluster) -> RedisTransport:
        """A cluster transport on a fresh key prefix, with a short claim timeout."""
        return RedisTransport(
            redis_cluster.url,
            prefix=f"t{secrets.token_hex(4)}",
            claim_timeout=1.0,
            block=0.2,
            cluster=True,
        )
