"""What the bus needs of a transactional outbox (``eventbus.outbox.Outbox`` is one).

The core never imports a database library: a bus given ``outbox=`` writes through this
protocol and runs the relay it hands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .transports._contract import Connection, Message

__all__ = ["OutboxRelay", "OutboxStore"]


class OutboxRelay(Protocol):
    """Publishes committed outbox rows to one connection."""

    async def run(self) -> None:
        """Relay until cancelled: on a wake-up after a local commit, else by polling."""

    async def flush(self) -> None:
        """Return once the rows committed before the call are handed to the transport
        (rows another relay holds are left to it)."""


class OutboxStore(Protocol):
    """Keeps events in the application's database until a relay publishes them."""

    async def write(self, transaction: object, items: Sequence[tuple[str, Message]]) -> None:
        """Insert each ``(topic, message)`` within ``transaction`` (the application's
        open database transaction); they exist if and only if it commits."""

    async def start(self, conn: Connection) -> OutboxRelay | None:
        """Prepare (create the table when asked to); the relay for a bus that publishes
        to ``conn`` (None: this bus relays nothing)."""
