"""``DeadLetter``: an event a group gave up on, with why and when."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ._codec import Codec
from ._envelope import Envelope
from ._errors import DecodeError, PayloadTooLargeError
from ._event import Event
from .transports._contract import FailureNotes, StoredDeadLetter

__all__ = ["DeadLetter", "failure_notes", "from_stored"]

_TRACEBACK_LIMIT = 8000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that a group could not handle, kept to be inspected, replayed or purged.

    - ``id``: the dead letter's id (pass it to ``replay_dead_letters`` / ``purge_...``).
    - ``group`` / ``handler``: who gave up (``handler`` is None for undecodable input).
    - ``reason``: ``"retries-exhausted"``, ``"non-retryable"``, or for input that could
      not be decoded ``"unknown-event"``, ``"wrong-version"`` or ``"malformed"``.
    - ``error_type`` / ``error_message`` / ``traceback``: the last failure.
    - ``attempts``: how many attempts were made.
    - ``first_failed_at`` / ``last_failed_at``: UTC times of the first and last failure.
    - ``envelope`` / ``event``: decoded when possible, else None.
    - ``headers`` / ``body``: the raw message, always present.
    """

    id: str
    group: str
    handler: str | None
    reason: str
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    envelope: Envelope | None
    event: Event | None
    headers: Mapping[str, str]
    body: bytes


def failure_notes(
    error: BaseException, *, reason: str, handler: str | None, first_failed_at: str | None
) -> FailureNotes:
    """The notes the bus stores with a retry or a dead letter."""
    now = datetime.now(UTC).isoformat()
    return FailureNotes(
        reason=reason,
        error_type=f"{type(error).__module__}.{type(error).__qualname__}",
        error_message=str(error)[:2000],
        handler=handler or "",
        traceback="".join(traceback.format_exception(error))[-_TRACEBACK_LIMIT:],
        first_failed_at=first_failed_at or now,
        last_failed_at=now,
    )


def from_stored(stored: StoredDeadLetter, codec: Codec) -> DeadLetter:
    """Build the public record, decoding the event when this codec can."""
    notes, message = stored.notes, stored.message
    envelope: Envelope | None = None
    event: Event | None = None
    body, headers = bytes(message.body), dict(message.headers)
    try:
        if stored.reference is not None:  # never left the process: no bytes to decode
            event, envelope = codec.decode_reference(stored.reference, stored.attempt)
            body, headers = _body_or_empty(codec, event), codec.encode_headers(envelope)
        else:
            event, envelope = codec.decode(message, stored.attempt)
    except DecodeError:
        try:
            envelope = codec.decode_envelope(message.headers, stored.attempt)
        except DecodeError:
            envelope = None
    return DeadLetter(
        id=stored.id,
        group=stored.group,
        handler=notes.handler or None,
        reason=notes.reason or "unknown",
        error_type=notes.error_type,
        error_message=notes.error_message,
        traceback=notes.traceback,
        attempts=stored.attempt,
        first_failed_at=_parse_time(notes.first_failed_at),
        last_failed_at=_parse_time(notes.last_failed_at),
        envelope=envelope,
        event=event,
        headers=headers,
        body=body,
    )


def _body_or_empty(codec: Codec, event: Event) -> bytes:
    """The event's bytes; empty when it is over the size limit (it never needed bytes)."""
    try:
        return codec.encode_body(event)
    except PayloadTooLargeError:
        return b""


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value) if value else datetime.fromtimestamp(0, UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
