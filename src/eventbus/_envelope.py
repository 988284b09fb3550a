"""The envelope: the metadata that travels with every event, its id generator and the
factory that makes the envelope of each new event."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple

from ._errors import EncodeError, PublishError
from ._event import Event

__all__ = ["Envelope", "EnvelopeFactory", "EventIdGenerator"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Envelope(NamedTuple):
    """Metadata of one published event (an immutable named tuple).

    - ``id``: unique and time-ordered (a UUIDv7 string); ids from one bus sort in
      publish order.
    - ``name`` / ``version``: the event type on the wire.
    - ``occurred_at``: when ``publish()`` was called, timezone-aware UTC.
    - ``correlation_id``: shared by every event of one flow; the id of the first event
      of the flow unless given.
    - ``causation_id``: the id of the event whose handler published this one, or None.
    - ``headers``: free-form ``str`` to ``str`` metadata (tracing ids, tenant, ...).
    - ``attempt``: 1 on first delivery, incremented by every retry of the same group.
    """

    id: str
    name: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None
    headers: Mapping[str, str] = _EMPTY
    attempt: int = 1

    def with_attempt(self, attempt: int) -> Envelope:
        """Return a copy with ``attempt`` set (itself when it already has it)."""
        return self if attempt == self.attempt else self._replace(attempt=attempt)


class EventIdGenerator:
    """Makes UUIDv7 strings: 48 bits of Unix milliseconds, a 12-bit sequence, then 62
    random bits drawn once per generator.

    Ids of one generator strictly increase (the sequence carries over to the next
    millisecond when more than 4,096 ids fall in one); two generators differ in their
    random bits. Not thread-safe: each bus owns one.
    """

    __slots__ = ("_last_ms", "_prefix", "_seq", "_suffix")

    def __init__(self) -> None:
        tail = (0b10 << 62) | (int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1))
        hex_tail = f"{tail:016x}"
        self._suffix = f"-{hex_tail[:4]}-{hex_tail[4:]}"
        self._last_ms = -1
        self._seq = 0
        self._prefix = ""

    def __call__(self) -> str:
        """Return the next id."""
        return self.next_id()

    def next_id(self) -> str:
        """Return the next id."""
        ms = time.time_ns() // 1_000_000
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
            self._prefix = _prefix(ms)
        else:
            self._seq += 1
            if self._seq > 0xFFF:
                self._last_ms, self._seq = self._last_ms + 1, 0
                self._prefix = _prefix(self._last_ms)
        return self._prefix + _SEQUENCE[self._seq] + self._suffix


_MAX_ID = 200


class EnvelopeFactory:
    """Makes the envelope of each event a bus publishes; checks the event type once per
    class, and the headers and ids of every call (``PublishError`` when wrong)."""

    __slots__ = ("_next_id", "_wire")

    def __init__(self) -> None:
        self._next_id = EventIdGenerator().next_id
        self._wire: dict[type[Event], tuple[str, int]] = {}

    def make(
        self,
        event: Event,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Envelope:
        """The envelope of a new event, with a new id and the current time."""
        event_type = type(event)
        wire = self._wire.get(event_type)
        if wire is None:
            if isinstance(event, type) and issubclass(event, Event):
                raise PublishError(
                    f"publish() takes an event instance, not the class {event.__name__}: "
                    f"publish({event.__name__}(...))"
                )
            if not isinstance(event, Event) or event_type is Event:
                raise PublishError(
                    f"publish() takes an Event subclass instance, not {event_type!r}"
                )
            wire = self._wire[event_type] = (event_type.event_name, event_type.event_version)
        if correlation_id is not None or causation_id is not None:
            _check_ids(correlation_id, causation_id, wire[0])
        event_id = self._next_id()
        return Envelope(
            event_id,
            wire[0],
            wire[1],
            datetime.now(UTC),
            correlation_id or event_id,
            causation_id,
            _EMPTY if headers is None else _checked_headers(headers),
        )


def _checked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise PublishError("headers must map non-empty str keys to str values")
    return MappingProxyType(dict(headers))


def _check_ids(correlation_id: str | None, causation_id: str | None, event_name: str) -> None:
    """Ids that every transport can carry: short strings of valid Unicode (checked here,
    so that the in-memory transport refuses what Redis would)."""
    for name, value in (("correlation_id", correlation_id), ("causation_id", causation_id)):
        if value is None:
            continue
        if not (isinstance(value, str) and 0 < len(value) <= _MAX_ID):
            raise PublishError(f"{name} must be a non-empty string of at most {_MAX_ID} characters")
        if not value.isascii() and not _valid_unicode(value):
            raise EncodeError(
                f"{event_name} cannot be sent: its {name} is not valid Unicode (a lone surrogate)",
                event_name=event_name,
                field=name,
            )


def _valid_unicode(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


_SEQUENCE = tuple(f"{0x7000 | seq:04x}" for seq in range(0x1000))


def _prefix(ms: int) -> str:
    h = f"{ms & 0xFFFFFFFFFFFF:012x}"
    return f"{h[:8]}-{h[8:]}-"
