"""A transactional outbox and inbox on SQLAlchemy 2 (async): the ``outbox`` extra.

``Outbox``: ``bus.publish(event, transaction=conn)`` writes the event in the
application's own transaction; a relay publishes it once committed. ``Inbox``: a handler
records the event it handles in the transaction of its effect, for exactly-once effects.
PostgreSQL (asyncpg) and SQLite (aiosqlite) are tested.
"""

try:
    import sqlalchemy.ext.asyncio  # noqa: F401 - the extra is installed, or a clear error
except ImportError as exc:
    raise ImportError(
        'eventbus.outbox needs the outbox extra: pip install "eventbus[outbox]" '
        "(SQLAlchemy 2 with asyncio, asyncpg for PostgreSQL, aiosqlite for SQLite)"
    ) from exc

from ._inbox import Inbox
from ._outbox import Outbox

__all__ = ["Inbox", "Outbox"]
