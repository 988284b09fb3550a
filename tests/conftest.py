"""Shared fixtures: every async test runs under asyncio and under trio."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.databases import Database, PostgresDatabase, engine_for
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each anyio test on both backends."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One private Redis Cluster for the session (3 masters, 3 replicas); tests keep
    apart by key prefix."""
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis_admin(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A plain redis-py client of the session's server, to look at keys and change ACLs."""
    client: Any = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """A PostgreSQL database of this test session, dropped at its end."""
    db = PostgresDatabase.create()
    yield db
    db.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: PostgresDatabase
) -> AsyncIterator[Database]:
    """A database for one test (SQLite file, or the session's PostgreSQL database) with
    outbox and inbox table names of its own."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        if postgres_database.error is not None:
            pytest.skip(postgres_database.error)
        url = postgres_database.url
    suffix = secrets.token_hex(4)
    engine = engine_for(url)
    yield Database(engine, url, f"outbox_{suffix}", f"inbox_{suffix}")
    await engine.dispose()
