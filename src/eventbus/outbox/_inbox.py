"""``Inbox``: the record that a group handled an event, in the application's transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import MetaData, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from eventbus._context import Context
from eventbus._errors import ConfigurationError
from eventbus._options import check_seconds

from ._sql import check_engine, connection_of, create_table
from ._tables import inbox_table

__all__ = ["Inbox"]


class Inbox:
    """Effects that must happen exactly once: the handler writes its effect and the
    record of the event in one database transaction, so both commit or neither does.

    ::

        inbox = Inbox(engine)

        @orders.subscribe(group="billing")
        async def charge(event: OrderCreated, context: Context) -> None:
            async with engine.begin() as conn:
                if not await inbox.claim(conn, context):
                    return                       # this group already handled the event
                await conn.execute(invoices.insert().values(...))

    ``claim`` inserts ``(group, event id)`` into the inbox table within the open
    transaction and answers False when the row is there already (a redelivery of an
    event whose transaction committed). Two workers claiming the same event at once:
    the second waits for the first's transaction, then gets False when it committed.

    ``table``: the table name (default ``eventbus_inbox``); ``Inbox.table`` is the
    SQLAlchemy ``Table``, for migrations; ``await inbox.create_table()`` creates it.
    Rows stay until ``prune()`` deletes the old ones.
    """

    def __init__(self, engine: object, *, table: str = "eventbus_inbox") -> None:
        self.engine = check_engine("Inbox", engine)
        self.metadata = MetaData()
        self.table = inbox_table(table, self.metadata)
        self._dialect = self.engine.dialect.name

    async def create_table(self) -> None:
        """Create the inbox table unless it exists."""
        await create_table(self.engine, self.table)

    async def claim(self, transaction: object, context: Context) -> bool:
        """Record, within ``transaction``, that ``context.group`` handles
        ``context.envelope.id``; False when it was recorded before. Raises
        ``ConfigurationError`` for something that is not a transaction of the inbox's
        engine, or not the handler's context.
        """
        if not isinstance(context, Context):
            raise ConfigurationError(
                f"Inbox.claim takes the handler's Context, not {type(context).__name__}"
            )
        conn = await connection_of(transaction, self.engine, "Inbox.claim", ConfigurationError)
        row = {
            "group_name": context.group,
            "event_id": context.envelope.id,
            "handled_at": datetime.now(UTC),
        }
        statement: postgresql.Insert | sqlite.Insert
        if self._dialect == "postgresql":
            statement = postgresql.insert(self.table).values(row).on_conflict_do_nothing()
        elif self._dialect == "sqlite":
            statement = sqlite.insert(self.table).values(row).on_conflict_do_nothing()
        else:
            return await self._claim_in_savepoint(conn, row)
        result = await conn.execute(statement)
        return bool(result.rowcount == 1)

    async def _claim_in_savepoint(self, conn: AsyncConnection, row: dict[str, object]) -> bool:
        """Other databases: insert in a savepoint; a duplicate key rolls back only it."""
        try:
            async with conn.begin_nested():
                await conn.execute(self.table.insert().values(row))
        except IntegrityError:
            return False
        return True

    async def prune(self, older_than: float) -> int:
        """Delete records older than ``older_than`` seconds; return how many. Keep them
        longer than an event can be redelivered (retries, dead-letter replays)."""
        seconds = check_seconds("Inbox.prune", "older_than", older_than)
        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(self.table).where(self.table.c.handled_at < cutoff))
        return int(result.rowcount)

    def __repr__(self) -> str:
        return f"Inbox(table={self.table.name!r}, dialect={self.engine.dialect.name!r})"
