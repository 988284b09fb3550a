"""Databases for the outbox tests: a PostgreSQL database per test session (created and
dropped on the machine's server) and a SQLite file per test."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["Database", "PostgresDatabase", "engine_for"]

PG_SERVER = os.environ.get("EVENTBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@dataclass
class PostgresDatabase:
    """A database of its own on the PostgreSQL server, for one test session."""

    name: str
    error: str | None = None

    @classmethod
    def create(cls) -> PostgresDatabase:
        """Create ``eventbus_test_<random>``; ``error`` says why when the server is away."""
        db = cls(f"eventbus_test_{secrets.token_hex(4)}")
        try:
            asyncio.run(db._admin(f'CREATE DATABASE "{db.name}"'))
        except (OSError, asyncpg.PostgresError) as exc:
            db.error = f"PostgreSQL is not usable at {PG_SERVER}: {type(exc).__name__}: {exc}"
        return db

    def drop(self) -> None:
        """Drop the database (closing what is still connected)."""
        if self.error is None:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (asyncpg driver)."""
        return f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{self.name}"

    @staticmethod
    async def _admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@dataclass
class Database:
    """One test's database: the engine, its URL, and table names of its own."""

    engine: AsyncEngine
    url: str
    outbox_table: str
    inbox_table: str

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name


def engine_for(url: str) -> AsyncEngine:
    """An engine for ``url`` (SQLite waits up to 10 s for the write lock)."""
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 10})
    return create_async_engine(url, pool_size=10)
