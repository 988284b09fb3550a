"""``Operations``: what an operator does with a running bus: dead letters, inspection,
groups. The base class of ``EventBus``, which owns the connection it works on."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._codec import Codec
from ._deadletter import DeadLetter, from_stored
from ._errors import BusStateError, ConfigurationError
from ._event import Event
from ._observer import DeadLetterErrors
from ._options import check_start
from ._partitions import topics_of
from .transports._contract import (
    Connection,
    DeadLetterStore,
    GroupManagement,
    GroupStats,
    Inspection,
    Transport,
)

__all__ = ["Operations", "State"]


class State(enum.Enum):
    """Where a bus is in its one run."""

    NEW = "not started"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class Operations:
    """The dead letters, the state of the groups and the groups themselves, through the
    bus's open connection; each needs the transport ability it names."""

    def __init__(self, transport: Transport, codec: Codec) -> None:
        self._transport: Transport = transport
        self._codec = codec
        self._dead_errors = DeadLetterErrors()
        self._state = State.NEW
        self._conn: Connection | None = None

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``group`` (of every group when None), oldest first.

        Raises ``BusStateError`` outside ``async with bus:``, ``ConfigurationError`` when
        the transport keeps no dead letters to list, ``TransportError`` when it fails.
        """
        stored = await self._store("dead_letters()").dead_letters(group)
        return [from_stored(s, self._codec) for s in stored]

    async def replay_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Deliver dead letters again, each to its own group only, as a first attempt.

        ``ids`` picks some (``DeadLetter.id``); None takes all of ``group``. Returns how
        many were replayed; they leave the dead letters. Letters are moved one by one:
        consumers may handle the first before the last is moved.
        """
        store = self._store("replay_dead_letters()")
        return await store.replay_dead_letters(group, ids)

    async def purge_dead_letters(
        self, group: str | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all of ``group`` when ``ids`` is None); return the count."""
        store = self._store("purge_dead_letters()")
        return await store.purge_dead_letters(group, ids)

    async def inspect(self) -> list[GroupStats]:
        """The state of every group of the transport (of other buses too): messages
        waiting or in flight, scheduled for a retry, dead-lettered; sorted by topic then
        group. Raises ``BusStateError`` outside ``async with bus:``, ``ConfigurationError``
        when the transport cannot tell (no ``Inspection``), ``TransportError`` when it
        fails."""
        conn = self._open_connection()
        if not isinstance(conn, Inspection):
            raise self._lacks("Inspection", "inspect()")
        return list(await conn.inspect())

    async def delete_group(self, group: str, event_type: type[Event] | None = None) -> int:
        """Delete ``group`` on the transport (for ``event_type`` only, when given), with
        what it holds: pending and queued messages, retries, dead letters. Stop its
        workers first. Returns how many groups were deleted (one per event type, or per
        partition of a partitioned type). Raises
        ``ConfigurationError`` when the transport lacks ``GroupManagement``."""
        conn = self._managing("delete_group()")
        topics = _topics(event_type)
        if topics is None:
            return await conn.delete_group(group, None)
        return sum([await conn.delete_group(group, topic) for topic in topics])

    async def reset_group(
        self, group: str, to: str = "latest", event_type: type[Event] | None = None
    ) -> int:
        """Drop what ``group`` has not handled (pending and scheduled included) and move
        it to ``to``: ``"latest"`` (handle only what is published from now on) or
        ``"earliest"`` (handle again every message the transport keeps). Returns how
        many groups were reset (one per event type, or per partition)."""
        conn = self._managing("reset_group()")
        start, topics = check_start(to, "to"), _topics(event_type)
        if topics is None:
            return await conn.reset_group(group, start, None)
        return sum([await conn.reset_group(group, start, topic) for topic in topics])

    def _managing(self, doing: str) -> GroupManagement:
        conn = self._open_connection()
        if not isinstance(conn, GroupManagement):
            raise self._lacks("GroupManagement", doing)
        return conn

    def take_dead_letter_errors(self) -> list[BaseException]:
        """The errors that sent events to the dead letters since the last call (the last
        100 at most), oldest first. ``eventbus.testing.drain`` raises the first."""
        return self._dead_errors.take()

    def _open_connection(self) -> Connection:
        if self._conn is None:
            raise self._not_running()
        return self._conn

    def _not_running(self) -> BusStateError:
        return BusStateError(f"the bus is {self._state.value}; use it inside `async with bus:`")

    def _store(self, doing: str) -> DeadLetterStore:
        conn = self._open_connection()
        if not isinstance(conn, DeadLetterStore):
            raise self._lacks("DeadLetterStore", doing)
        return conn

    def _lacks(self, ability: str, doing: str) -> ConfigurationError:
        return ConfigurationError(
            f"{doing} needs a transport that offers {ability}; "
            f"{type(self._transport).__name__} does not"
        )


def _topics(event_type: type[Event] | None) -> tuple[str, ...] | None:
    """The topics of ``event_type``, one per partition (None for every event type)."""
    if event_type is None:
        return None
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise ConfigurationError(f"event_type= takes an Event class, not {event_type!r}")
    return topics_of(event_type)
