"""``Outbox``: events written in the application's transaction, published after commit."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import MetaData, event, func, select
from sqlalchemy.exc import SQLAlchemyError

from eventbus._errors import ConfigurationError, PublishError
from eventbus._options import check_count, check_seconds
from eventbus.transports._contract import Connection, Message

from ._relay import Relay
from ._sql import check_engine, connection_of, create_table
from ._tables import outbox_table

__all__ = ["Outbox"]


class Outbox:
    """A transactional outbox in the application's database (SQLAlchemy 2, async).

    ::

        bus = EventBus(transport=RedisTransport(url), outbox=Outbox(engine))
        async with bus, engine.begin() as conn:
            await conn.execute(orders.insert().values(...))
            await bus.publish(OrderCreated(...), transaction=conn)

    ``publish(event, transaction=conn)`` inserts the encoded event into the outbox table
    within the application's open transaction (an ``AsyncConnection`` or
    ``AsyncSession`` of ``engine``): the event exists if and only if the transaction
    commits. A relay in every bus that has the outbox publishes committed rows in order
    of position (the order of writing; a transaction that commits late is published
    late), with the id the envelope got at write time, and deletes them. A row that is
    not a message (edited by hand) is logged and left in the table. A commit in this
    process wakes the relays of this process at once; other processes' commits are
    found by polling every ``poll_interval`` seconds.

    Several relays (buses, processes) may run at once: on PostgreSQL each takes its rows
    with ``FOR UPDATE SKIP LOCKED``, on SQLite one relay writes at a time. A relay that
    dies between publishing and deleting publishes those rows again, with the same ids:
    subscribers with ``idempotent=True`` drop the repeat. With several relays, events
    of two different batches may reach the transport out of order.

    Options:

    - ``table``: the table name (default ``eventbus_outbox``); ``Outbox.table`` is the
      SQLAlchemy ``Table``, for migrations.
    - ``relay``: False for a bus that writes but leaves publishing to other processes.
    - ``create_table``: create the table at bus start when missing (default True).
    - ``batch_size``: rows published in one relay transaction (default 500).
    - ``poll_interval``: seconds between looks for rows committed elsewhere (default 0.5).

    Listens to the engine's ``commit`` and ``rollback`` events, to learn which of its
    transactions wrote to the outbox.
    """

    def __init__(
        self,
        engine: object,
        *,
        table: str = "eventbus_outbox",
        relay: bool = True,
        create_table: bool = True,
        batch_size: int = 500,
        poll_interval: float = 0.5,
    ) -> None:
        self.engine = check_engine("Outbox", engine)
        self.metadata = MetaData()
        self.table = outbox_table(table, self.metadata)
        self._relaying = relay
        self._create = create_table
        self._batch_size = check_count("Outbox", "batch_size", batch_size)
        self._poll = check_seconds("Outbox", "poll_interval", poll_interval, zero=False)
        self._written: weakref.WeakSet[SyncConnection] = weakref.WeakSet()
        self._relays: weakref.WeakSet[Relay] = weakref.WeakSet()
        event.listen(self.engine.sync_engine, "commit", self._committed)
        event.listen(self.engine.sync_engine, "rollback", self._written.discard)

    async def write(self, transaction: object, items: Sequence[tuple[str, Message]]) -> None:
        """Insert each ``(topic, message)`` within ``transaction``; raises
        ``PublishError`` for something that is not a transaction of the outbox's engine
        or when the database refuses the insert (the original error is the cause)."""
        conn = await connection_of(transaction, self.engine, "publish(transaction=)")
        if not items:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "event_id": message.headers["id"],
                "topic": topic,
                "headers": json.dumps(dict(message.headers), separators=(",", ":")),
                "body": message.body,
                "created_at": now,
            }
            for topic, message in items
        ]
        try:
            await conn.execute(self.table.insert(), rows)
        except SQLAlchemyError as exc:
            raise PublishError(
                f"the outbox table {self.table.name} refused the event: {type(exc).__name__}"
            ) from exc
        self._written.add(conn.sync_connection)  # type: ignore[arg-type]  # set once begun

    async def start(self, conn: Connection) -> Relay | None:
        """Create the table when asked to; the relay for a bus publishing to ``conn``
        (None when ``relay=False``); ``ConfigurationError`` outside asyncio."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "Outbox runs on asyncio only (SQLAlchemy's asyncio extension); "
                "this bus runs on another event loop"
            ) from None
        if self._create:
            await create_table(self.engine, self.table)
        if not self._relaying:
            return None
        relay = Relay(self.engine, self.table, conn, self._batch_size, self._poll)
        self._relays.add(relay)
        return relay

    async def pending(self) -> int:
        """How many rows wait in the outbox table (committed, not yet published)."""
        async with self.engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(self.table))
        return int(count or 0)

    def _committed(self, conn: SyncConnection) -> None:
        """The engine's ``commit`` hook: wake the relays when this transaction wrote."""
        if conn in self._written:
            self._written.discard(conn)
            for relay in list(self._relays):
                relay.committed(conn)

    def __repr__(self) -> str:
        return f"Outbox(table={self.table.name!r}, dialect={self.engine.dialect.name!r})"
