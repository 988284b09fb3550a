"""The transport contract: what the bus needs from anything that moves events.

A transport moves bytes plus string headers between publishers and groups. It knows
nothing of event classes, retry policies or handlers: the bus decides *what* happens to a
delivery (ack, retry after a delay, dead-letter) and the transport makes it durable.

The required contract is three protocols, each with a short job:

- ``Transport``: configuration and shared state; ``connect()`` gives a ``Connection``.
- ``Connection``: one bus's link. Publishes and opens subscriptions.
- ``Subscription``: one group reading one topic, as one consumer of that group.

Abilities that only some transports have are optional protocols of the connection,
found by the bus with ``isinstance``: ``BatchPublishing``, ``DeadLetterStore``,
``IdleWaiting``, ``Inspection``, ``Serving`` and ``ReferencePublishing``; and one of a
subscription, ``HandledRecord``.

Delivery semantics every transport guarantees (the conformance suite checks them):

- at-least-once per group: a published message reaches every group subscribed to its
  topic (groups that exist at publish time, and new groups as far as the transport keeps
  history), until it is acked or dead-lettered;
- within a group, each message goes to one consumer at a time;
- ``nack(delay)`` redelivers the message to the group after ``delay`` seconds with
  ``attempt`` incremented, without blocking other messages;
- a delivery that a closed subscription did not ack is redelivered to the group;
- with one consumer, messages of a topic arrive in publish order, retries aside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

__all__ = [
    "HEADER_FIELDS",
    "BatchPublishing",
    "Connection",
    "DeadLetterStore",
    "Delivery",
    "FailureNotes",
    "Features",
    "GroupManagement",
    "GroupStats",
    "HandledRecord",
    "IdleWaiting",
    "Inspection",
    "Message",
    "ReferencePublishing",
    "Serving",
    "StoredDeadLetter",
    "Subscription",
    "Transport",
]

HEADER_FIELDS = ("id", "name", "version", "time", "correlation_id", "causation_id", "headers")
"""The names of the headers the bus writes (docs/wire-format.md), in their order."""


class Message:
    """Bytes plus string headers: what a transport stores and moves."""

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"Message(body=<{len(self.body)} bytes>, headers={dict(self.headers)!r})"


NO_BYTES = Message(b"", MappingProxyType({}))
"""The message of a delivery that carries a reference instead of bytes."""


@dataclass(frozen=True, slots=True)
class FailureNotes:
    """Why the bus retries or dead-letters a message; the transport stores it as given.

    Every field is a string, so that a transport may keep the notes as JSON
    (``as_dict``) and read them back (``from_dict``). Times are ISO 8601 UTC;
    ``handler`` is empty for a message that could not be decoded.
    """

    reason: str
    error_type: str = ""
    error_message: str = ""
    handler: str = ""
    traceback: str = ""
    first_failed_at: str = ""
    last_failed_at: str = ""

    def as_dict(self) -> dict[str, str]:
        """The notes as a dict of strings (for JSON)."""
        return {name: getattr(self, name) for name in _NOTE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FailureNotes:
        """Notes read back from ``as_dict``; a missing or non-string field is empty."""
        values = {name: data.get(name) for name in _NOTE_FIELDS}
        return cls(**{k: v if isinstance(v, str) else "" for k, v in values.items()})


_NOTE_FIELDS = tuple(FailureNotes.__dataclass_fields__)


class Delivery:
    """One message handed to one consumer of a group.

    ``id`` is the transport's id for the message (the same for every attempt), ``topic``
    the topic it was published on, ``attempt`` 1 on the first delivery and one more for
    each ``nack``. ``notes`` are the notes the bus passed to the last ``nack``, None on
    a first delivery. ``reference`` is the object a ``ReferencePublishing`` transport
    carried instead of bytes (``message`` is then empty), None otherwise. Transports may
    subclass it.
    """

    __slots__ = ("attempt", "id", "message", "notes", "reference", "topic")

    def __init__(
        self,
        id: str,
        topic: str,
        message: Message,
        attempt: int = 1,
        notes: FailureNotes | None = None,
        reference: object = None,
    ) -> None:
        self.id = id
        self.topic = topic
        self.message = message
        self.attempt = attempt
        self.notes = notes
        self.reference = reference

    def __repr__(self) -> str:
        return f"Delivery(id={self.id!r}, topic={self.topic!r}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as the transport keeps it: the message, its group and the notes.

    ``id`` names the dead letter; ``message_id`` is the id the message was published
    with; ``reference`` is set (and ``message`` empty) when it was carried by reference.
    """

    id: str
    message_id: str
    group: str
    topic: str
    message: Message
    attempt: int
    notes: FailureNotes
    reference: object = None


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One group on one topic, as the transport sees it at the moment it is asked.

    - ``waiting``: messages published and not yet delivered to the group (its lag).
    - ``in_flight``: delivered to a consumer and not yet settled (pending).
    - ``scheduled``: waiting for a retry's delay to pass.
    - ``dead_letters``: kept among the group's dead letters.
    - ``stream_length``: messages the transport keeps for the topic (None: not known).
    - ``consumers``: consumers the group has (None: not known).
    - ``oldest_pending_age``: seconds since the oldest message in flight was published
      (None: nothing in flight, or not known).
    - ``idle``: each consumer's name and the seconds since it last read or settled
      (empty: not known).
    """

    topic: str
    group: str
    waiting: int
    in_flight: int
    scheduled: int
    dead_letters: int
    stream_length: int | None = None
    consumers: int | None = None
    oldest_pending_age: float | None = None
    idle: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Features:
    """What a transport guarantees beyond the common contract.

    The conformance suite skips, with the reason, the scenarios a transport does not
    declare.

    - ``history_for_new_groups``: a group created after some publishes still receives them.
    - ``bounded``: publishers wait when the transport is full; ``publish(timeout=)`` raises.
    - ``survives_restart``: messages outlive the process (a server keeps them).
    """

    history_for_new_groups: bool = True
    bounded: bool = False
    survives_restart: bool = False


# -- the required contract -----------------------------------------------------------


@runtime_checkable
class Subscription(Protocol):
    """One consumer of one group on one topic. Safe to share between tasks of one bus."""

    async def receive(self) -> Delivery | None:
        """Wait for the next delivery, due retries first; ``None`` once closed."""

    async def ack(self, delivery: Delivery) -> None:
        """The group is done with the message; it is never delivered to it again."""

    async def nack(self, delivery: Delivery, delay: float, notes: FailureNotes) -> None:
        """Deliver the message to the group again after ``delay`` seconds, attempt + 1."""

    async def dead_letter(self, delivery: Delivery, notes: FailureNotes) -> None:
        """Keep the message among the group's dead letters with ``notes``, and ack it."""

    async def aclose(self) -> None:
        """Stop receiving; unacked deliveries go back to the group. Idempotent."""


@runtime_checkable
class Connection(Protocol):
    """One bus's link to the transport. Closing it closes its subscriptions."""

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """Store ``message`` for every group of ``topic`` once accepted; return its id.

        Raises ``PublishTimeoutError`` when a bounded transport had no room within
        ``timeout``, ``TransportClosedError`` after ``aclose()``, ``TransportError`` on
        a backend failure.
        """

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Create the group on the topic when missing and join it as a new consumer."""

    async def aclose(self) -> None:
        """Close the subscriptions, then the connection. Idempotent."""


@runtime_checkable
class Transport(Protocol):
    """A way to move events: in memory, Redis Streams, or your own."""

    @property
    def features(self) -> Features:
        """What this transport guarantees beyond the common contract."""

    async def connect(self) -> Connection:
        """Open a connection for one bus."""


# -- optional abilities of a connection ----------------------------------------------


@runtime_checkable
class BatchPublishing(Protocol):
    """Publishes a batch in fewer round trips than one ``publish`` per message."""

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """Store each ``(topic, message)`` in order; return their ids. On an error, a
        first part of the batch may be stored."""


@runtime_checkable
class DeadLetterStore(Protocol):
    """Lists, replays and purges the dead letters that subscriptions stored."""

    async def dead_letters(self, group: str | None = None) -> Sequence[StoredDeadLetter]:
        """The dead letters of ``group`` (of every group when None), oldest first."""

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Deliver these dead letters (all when ``ids`` is None) again to their own
        group only, as attempt 1; remove them from the dead letters; return the count."""

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Delete these dead letters (all when ``ids`` is None); return the count."""


@runtime_checkable
class IdleWaiting(Protocol):
    """Tells when every group has finished its messages (``bus.drain()``)."""

    async def wait_idle(self) -> None:
        """Return once every group of this transport has no unfinished message
        (unread, in flight, or waiting for a retry)."""


@runtime_checkable
class Inspection(Protocol):
    """Reports the state of every group: what waits, what is in flight, what failed."""

    async def inspect(self) -> Sequence[GroupStats]:
        """Every group of the transport, sorted by topic then group."""


@runtime_checkable
class GroupListing(Protocol):
    """Lists its groups cheaply, without counting what each holds (``inspect`` does)."""

    async def groups(self) -> Sequence[tuple[str, str]]:
        """``(topic, group)`` of every group of the transport, sorted."""


@runtime_checkable
class GroupManagement(Protocol):
    """Creates, deletes and resets groups apart from subscribing (for a publisher that
    declares the groups its workers will serve, and for operators).

    ``start`` and ``to`` are ``"earliest"`` (the first message the transport keeps) or
    ``"latest"`` (only messages published from now on). Delete and reset are for groups
    whose workers are stopped: a transport may refuse them while the group has
    consumers it can see (the in-memory one does, with ``ConfigurationError``); Redis
    cannot see other processes' consumers and goes ahead.
    """

    async def declare_group(self, topic: str, group: str, start: str = "earliest") -> None:
        """Create ``group`` on ``topic`` when it does not exist (nothing when it does)."""

    async def delete_group(self, group: str, topic: str | None = None) -> int:
        """Delete ``group`` (on ``topic`` only, when given) with what it holds: queued and
        pending messages, scheduled retries, dead letters. Return how many topic groups
        were deleted."""

    async def reset_group(self, group: str, to: str, topic: str | None = None) -> int:
        """Move ``group`` (on ``topic`` only, when given) to ``to``: ``"latest"`` drops
        what it has not handled (pending and scheduled included), ``"earliest"`` hands it
        every message kept again. Return how many topic groups were reset."""


@runtime_checkable
class Serving(Protocol):
    """Has background work (keeping the leases of long deliveries, say)."""

    async def serve(self) -> None:
        """Run the background work. The bus runs it in a task while the connection is
        open and cancels it before ``aclose()``."""


@runtime_checkable
class ReferencePublishing(Protocol):
    """Carries an object by reference instead of bytes, within one process.

    The bus uses it, when offered, to hand events to subscribers of the same process
    without encoding them. Deliveries and dead letters of such a publish carry the
    object in ``reference`` and an empty ``message``.
    """

    async def publish_reference(
        self, topic: str, reference: object, *, timeout: float | None = None
    ) -> str:
        """Like ``publish``, for an object that never becomes bytes."""


# -- optional ability of a subscription -----------------------------------------------


@runtime_checkable
class HandledRecord(Protocol):
    """Remembers, for the subscription's group, the keys of the messages it handled
    successfully, for a while (``subscribe(..., idempotent=True)``).

    The bus asks ``handled(key)`` before calling the handler, and settles a success with
    ``ack_handled`` instead of ``ack``: the record and the ack go together (the record
    first, or both at once, never the ack alone), so a duplicate stays possible only
    when a worker dies between the handler's return and that write. The key is the
    event id, the message's ``id`` header: a transport may look up the records of a
    batch of deliveries at once, and write a record in the same round trip as its ack.
    """

    async def handled(self, key: str) -> bool:
        """Whether the group recorded ``key`` as handled (and the record has not expired)."""

    async def ack_handled(self, delivery: Delivery, key: str) -> None:
        """``ack(delivery)``, and record ``key`` as handled by the group."""
