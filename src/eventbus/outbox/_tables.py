"""The outbox and inbox tables (SQLAlchemy Core), for ``create_all`` or a migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

__all__ = ["inbox_table", "outbox_table"]

_POSITION = BigInteger().with_variant(Integer(), "sqlite")  # SQLite numbers rows itself


def outbox_table(name: str, metadata: MetaData) -> Table:
    """Events written and not yet published, in the order of ``position``.

    - ``position``: the order of writing (a database sequence).
    - ``event_id``: the envelope's id, given at write time; the relay publishes with it.
    - ``topic``: the event name on the wire.
    - ``headers``: the wire headers, a JSON object of strings.
    - ``body``: the event's JSON, as bytes.
    - ``created_at``: when the row was written (UTC).
    """
    return Table(
        name,
        metadata,
        Column("position", _POSITION, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False),
        Column("topic", String(200), nullable=False),
        Column("headers", Text(), nullable=False),
        Column("body", LargeBinary(), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


def inbox_table(name: str, metadata: MetaData) -> Table:
    """The event ids each group handled: one row per ``(group, event_id)``."""
    return Table(
        name,
        metadata,
        Column("group_name", String(200), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("handled_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("group_name", "event_id", name=f"{name}_pkey"),
    )
