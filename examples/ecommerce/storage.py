"""``Database``: the SQLite database the modules share, through the standard library.

Each module owns its tables (its ``SCHEMA``) and reads and writes only those.

Statements run on the event loop's thread, not in a worker thread: each is a short,
indexed read or write of a local database, far cheaper than the hop to a thread, and
no transaction ever spans an ``await``. So one connection per process is shared safely
by all its tasks, ``:memory:`` included. Several processes (the API and the workers)
open the same file, each with its own connection: WAL journal, and a busy timeout so
that their writers take turns. A service with heavier queries would use a database
server with an async driver instead.
"""

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Database"]

Params = Sequence[Any]


class Database:
    """One SQLite connection for this process: ``open()``, use, ``close()``.

    ``path`` is a file, or ``":memory:"`` (the default) for a database that lives as
    long as the process. Not thread-safe: use it from the event loop's thread only.
    """

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Connect (autocommit; explicit transactions through ``transaction()``)."""
        if self._conn is not None:
            return
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection; raises ``RuntimeError`` before ``open()``."""
        if self._conn is None:
            raise RuntimeError("the database is not open")
        return self._conn

    def create(self, schema: str) -> None:
        """Create a module's tables (``CREATE TABLE IF NOT EXISTS ...`` statements)."""
        self.connection.executescript(schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with db.transaction() as conn:`` runs statements atomically.

        ``BEGIN IMMEDIATE`` takes the write lock at once, so that two processes never
        both read and then fail to write. Never ``await`` inside the block.
        """
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Every row of a query."""
        return self.connection.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row of a query, or None."""
        row: sqlite3.Row | None = self.connection.execute(sql, params).fetchone()
        return row

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement on its own; return how many rows it changed."""
        return self.connection.execute(sql, params).rowcount
