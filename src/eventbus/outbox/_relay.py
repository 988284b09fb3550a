"""``Relay``: publishes the committed rows of an outbox table to one connection."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from sqlalchemy import Connection as SyncConnection
from sqlalchemy import Select, Table, delete, false, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventbus._backoff import Backoff
from eventbus._errors import (
    EventBusError,
    PublishOutcomeUnknownError,
    PublishRefusedError,
    TransportError,
)
from eventbus.transports._contract import BatchPublishing, Connection, Message

__all__ = ["Relay"]

logger = logging.getLogger("eventbus.outbox")

_COMMIT_WAIT = 5.0  # seconds a relay waits for a local commit to finish before looking
_PASS_LIMIT = 30.0  # seconds one batch may take (database and transport together)


class Relay:
    """Moves outbox rows to the transport: one database transaction per batch takes the
    oldest rows (locking them on PostgreSQL, ``SKIP LOCKED``; holding SQLite's write
    lock), publishes them in order, deletes those the transport stored, and commits.

    ``run()`` loops: at once after a local commit wrote to the outbox, else every poll
    interval, and again at once while batches come full. Failures of the database or the
    transport are logged and retried with a capped backoff; rows stay until stored.
    """

    def __init__(
        self, engine: AsyncEngine, table: Table, conn: Connection, batch_size: int, poll: float
    ) -> None:
        self._engine = engine
        self._table = table
        self._conn = conn
        self._batch_size = batch_size
        self._poll = poll
        self._committing: list[SyncConnection] = []
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._sqlite = engine.dialect.name == "sqlite"
        self._bad: set[int] = set()
        """Positions of rows that are not messages: logged once, left for an operator."""
        # SQLite: a write first takes the database's write lock for the whole batch
        self._take_lock = (
            update(table).where(false()).values(position=table.c.position) if self._sqlite else None
        )

    def committed(self, conn: SyncConnection) -> None:
        """A transaction of ``conn`` that wrote to the outbox is committing: look soon."""
        self._committing.append(conn)
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled; a failure is logged and tried again after a backoff."""
        backoff = Backoff(0.05, 5.0)
        while True:
            try:
                moved = await self._pass()
            except Exception as exc:
                delay = backoff.failed()
                logger.error(
                    "outbox relay failed (%s: %s); retrying in %.2f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await backoff.wait(delay)
                continue
            backoff.reset()
            if moved < self._batch_size:
                with anyio.move_on_after(self._poll):
                    await self._wake.wait()
                await self._after_commits()

    async def flush(self) -> None:
        """Publish batches until the table holds no row this relay can take. Raises the
        transport's error, or ``TransportError`` for the database's (its cause); a
        cancellation takes effect between batches."""
        try:
            while await self._pass() >= self._batch_size:
                await anyio.lowlevel.checkpoint()
        except SQLAlchemyError as exc:
            raise TransportError(
                f"the outbox relay could not read {self._table.name}: {type(exc).__name__}"
            ) from exc

    async def _after_commits(self) -> None:
        """Wait until the local commits that woke the relay have finished (a commit
        announced from now on wakes the next wait)."""
        self._wake = anyio.Event()
        conns, self._committing = self._committing, []
        deadline = anyio.current_time() + _COMMIT_WAIT
        for conn in conns:
            wait = 0.0002
            while conn.in_transaction() and anyio.current_time() < deadline:
                await anyio.sleep(wait)
                wait = min(wait * 2, 0.01)

    async def _pass(self) -> int:
        """One batch in one database transaction; the number of rows taken. A pass is
        shielded from outside cancellation (a query cancelled midway can leave a
        connection unusable); after ``_PASS_LIMIT`` seconds it is cut, with
        ``TimeoutError``."""
        moved = 0
        with anyio.CancelScope(shield=True), anyio.fail_after(_PASS_LIMIT):
            moved = await self._take_batch()
        return moved  # noqa: RET504 - mypy reads the scopes as able to swallow a return

    async def _take_batch(self) -> int:
        async with self._lock, self._engine.begin() as db:
            if self._take_lock is not None:
                await db.execute(self._take_lock)
            rows = (await db.execute(self._query())).all()
            if not rows:
                return 0
            stored, error = await self._publish(rows)
            if stored:
                await db.execute(delete(self._table).where(self._table.c.position.in_(stored)))
        if error is not None:
            raise error
        return len(rows)

    def _query(self) -> Select[Any]:
        """The oldest rows, but those set aside as not messages."""
        table = self._table
        columns = (table.c.position, table.c.topic, table.c.headers, table.c.body)
        query = select(*columns)
        if self._bad:
            query = query.where(table.c.position.not_in(sorted(self._bad)))
        query = query.order_by(table.c.position).limit(self._batch_size)
        return query if self._sqlite else query.with_for_update(skip_locked=True)

    def _messages(self, rows: Sequence[Any]) -> tuple[list[int], list[tuple[str, Message]]]:
        """The rows as messages, in order; a row that is not one is logged and set aside."""
        positions, items = [], []
        for row in rows:
            try:
                headers = json.loads(row.headers)
                if not (isinstance(headers, dict) and isinstance(row.body, bytes)):
                    raise ValueError("not a JSON object of headers, or a body of bytes")
            except ValueError as exc:
                self._bad.add(row.position)
                logger.error(
                    "outbox row %s of %s (topic %s) is not a message (%s); it stays in the "
                    "table for an operator, and the relay goes on without it",
                    row.position,
                    self._table.name,
                    row.topic,
                    type(exc).__name__,
                )
                continue
            positions.append(row.position)
            items.append((row.topic, Message(row.body, headers)))
        return positions, items

    async def _publish(self, rows: Sequence[Any]) -> tuple[list[int], EventBusError | None]:
        """Publish the rows in order; the positions the transport stored, and the error
        that stopped the batch (None when all were stored)."""
        positions, items = self._messages(rows)
        if not items:
            return [], None
        if isinstance(self._conn, BatchPublishing):
            try:
                await self._conn.publish_many(items)
            except PublishRefusedError as exc:
                pairs = zip(positions, exc.stored_ids, strict=False)
                return [position for position, id_ in pairs if id_ is not None], exc
            except PublishOutcomeUnknownError as exc:
                return positions[: exc.stored], exc
            except EventBusError as exc:
                return [], exc
            return positions, None
        for done, (topic, message) in enumerate(items):
            try:
                await self._conn.publish(topic, message)
            except EventBusError as exc:
                return positions[:done], exc
        return positions, None
