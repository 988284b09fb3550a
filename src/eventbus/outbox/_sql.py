"""What the outbox and the inbox both do with SQLAlchemy: find the connection of the
application's transaction, create a table."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from eventbus._errors import ConfigurationError, EventBusError, PublishError

__all__ = ["check_engine", "connection_of", "create_table"]


def check_engine(owner: str, engine: object) -> AsyncEngine:
    """``engine`` when it is a SQLAlchemy ``AsyncEngine``, else ``ConfigurationError``."""
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            f"{owner} takes a SQLAlchemy AsyncEngine (create_async_engine(...)), "
            f"not {type(engine).__name__}"
        )
    return engine


async def connection_of(
    transaction: object,
    engine: AsyncEngine,
    doing: str,
    error: type[EventBusError] = PublishError,
) -> AsyncConnection:
    """The connection of ``transaction`` (an ``AsyncConnection`` or ``AsyncSession`` of
    ``engine``); ``error`` for anything else."""
    if isinstance(transaction, AsyncSession):
        conn = await transaction.connection()
    elif isinstance(transaction, AsyncConnection):
        conn = transaction
    else:
        raise error(
            f"{doing} takes a SQLAlchemy AsyncConnection or AsyncSession "
            f"(async with engine.begin() as conn), not {type(transaction).__name__}"
        )
    if conn.engine.sync_engine is not engine.sync_engine:
        raise error(f"{doing} needs a transaction of the engine given to the outbox or inbox")
    return conn


async def create_table(engine: AsyncEngine, table: Table) -> None:
    """Create ``table`` unless it exists (two processes may race: the loser checks again)."""
    for attempt in (1, 2):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(table.create, checkfirst=True)
            return
        except SQLAlchemyError:
            if attempt == 2:
                raise
