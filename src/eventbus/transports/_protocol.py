"""The transport contract: what the bus needs from anything that moves events.

A transport moves bytes plus string headers between publishers and groups. It knows
nothing of pydantic, retry policies or handlers: the bus decides *what* happens to a
delivery (ack, retry after a delay, dead-letter) and the transport makes it durable.

Three objects, each with a short job:

- ``Transport``: configuration and shared state; ``connect()`` gives a ``Connection``.
- ``Connection``: one bus's link. Publishes, opens subscriptions, keeps dead letters.
- ``Subscription``: one group reading one topic, as one consumer of that group.

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
    "Connection",
    "Delivery",
    "Features",
    "Message",
    "StoredDeadLetter",
    "Subscription",
    "Transport",
]


_NO_NOTES: Mapping[str, str] = MappingProxyType({})

HEADER_FIELDS = ("id", "name", "version", "time", "correlation_id", "causation_id", "headers")
"""The names of the headers the bus writes (docs/wire-format.md), in their order."""


class Message:
    """Bytes plus string headers: what a transport stores and moves.

    Transports read ``body`` and ``headers`` and must not rely on the concrete class:
    the bus may pass a subclass that encodes lazily.
    """

    __slots__ = ("_body", "_headers")

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        self._body = body
        self._headers = headers

    @property
    def body(self) -> bytes:
        """The payload bytes."""
        return self._body

    @property
    def headers(self) -> Mapping[str, str]:
        """String metadata (the envelope fields; see the wire format)."""
        return self._headers

    def __repr__(self) -> str:
        return f"Message(body=<{len(self.body)} bytes>, headers={dict(self.headers)!r})"


class Delivery:
    """One message handed to one consumer of a group.

    ``id`` is the transport's id for the message (the same for every attempt), ``topic``
    the topic it was published on, ``attempt`` 1 on the first delivery and one more for
    each ``nack``. ``notes`` are the string notes the bus passed to the last ``nack``
    (kept with the retry), empty on a first delivery. Transports may subclass it.
    """

    __slots__ = ("attempt", "id", "message", "notes", "topic")

    def __init__(
        self,
        id: str,
        topic: str,
        message: Message,
        attempt: int = 1,
        notes: Mapping[str, str] | None = None,
    ) -> None:
        self.id = id
        self.topic = topic
        self.message = message
        self.attempt = attempt
        self.notes: Mapping[str, str] = notes or _NO_NOTES

    def __repr__(self) -> str:
        return f"Delivery(id={self.id!r}, topic={self.topic!r}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as the transport keeps it: the message, its group and the bus's notes.

    ``id`` names the dead letter; ``message_id`` is the id the message was published with.
    """

    id: str
    message_id: str
    group: str
    topic: str
    message: Message
    attempt: int
    notes: Mapping[str, str]


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


@runtime_checkable
class Subscription(Protocol):
    """One consumer of one group on one topic. Safe to share between tasks of one bus."""

    async def receive(self) -> Delivery | None:
        """Wait for the next delivery; ``None`` once the subscription is closed.

        Due retries come before new messages.
        """

    async def ack(self, delivery: Delivery) -> None:
        """The group is done with the message; it is never delivered to it again."""

    async def nack(self, delivery: Delivery, delay: float, notes: Mapping[str, str]) -> None:
        """Deliver the message to the group again after ``delay`` seconds, attempt + 1."""

    async def dead_letter(self, delivery: Delivery, notes: Mapping[str, str]) -> None:
        """Move the message to the group's dead letters with ``notes``, and ack it."""

    async def aclose(self) -> None:
        """Stop receiving; unacked deliveries go back to the group. Idempotent."""


@runtime_checkable
class Connection(Protocol):
    """One bus's link to the transport. Closing it closes its subscriptions."""

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """Store ``message`` for every group of ``topic``; return its id.

        Returns only once the transport accepted it; raises ``PublishTimeoutError`` when
        a bounded transport had no room within ``timeout``, ``TransportClosedError``
        after ``aclose()``, ``TransportError`` on a backend failure.
        """

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """Store each ``(topic, message)`` in order, in as few round trips as the backend
        allows; return their ids. On an error, a first part of the batch may be stored."""

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Create the group on the topic when missing and join it as a new consumer."""

    async def wait_idle(self) -> None:
        """Return once every group of this transport has no unfinished message
        (unread, in flight, or waiting for a retry)."""

    async def dead_letters(self, group: str | None = None) -> Sequence[StoredDeadLetter]:
        """The dead letters of ``group`` (of every group when None), oldest first."""

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Deliver these dead letters (all when ``ids`` is None) again to their own
        group only, as attempt 1; remove them from the dead letters; return the count."""

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Delete these dead letters (all when ``ids`` is None); return the count."""

    async def serve(self) -> None:
        """Background work of the connection, such as keeping the leases of long-running
        deliveries. The bus runs it in a task while the connection is open and cancels
        it before ``aclose()``. May return at once when there is nothing to do."""

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
