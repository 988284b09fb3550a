"""``open_engine(url)``: the SQLAlchemy async engine of the orders database.

The orders module keeps its table in a database of its own, reached through SQLAlchemy
2 (async), so that an order and its ``OrderCreated`` commit in one transaction through
the bus's outbox (``eventbus.outbox``). PostgreSQL (``postgresql+asyncpg://...``) is what
a deployment uses; SQLite (``sqlite+aiosqlite:///path``) is the default, in a file of
its own beside the shop's database: the outbox relay holds SQLite's write lock while it
publishes a batch, and the shop's other modules write on the event loop's thread, so the
two must not share a file.
"""

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["open_engine", "sqlite_url"]


def sqlite_url(path: Path | str) -> str:
    """The SQLAlchemy URL of an SQLite file (aiosqlite driver)."""
    return f"sqlite+aiosqlite:///{path}"


def open_engine(url: str) -> AsyncEngine:
    """An engine for ``url``; SQLite files in WAL mode, writers waiting up to 10 s."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_size=10)
    engine = create_async_engine(url, connect_args={"timeout": 10})

    @event.listens_for(engine.sync_engine, "connect")
    def _wal(dbapi: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        cursor = dbapi.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return engine
