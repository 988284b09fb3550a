"""Stream entries of the Redis transport as messages and deliveries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from eventbus.transports._contract import HEADER_FIELDS, Delivery, FailureNotes, Message

from ._scripts import META_ATTEMPT, META_NOTES, META_ORIGIN, PAYLOAD

__all__ = [
    "Fields",
    "RedisDelivery",
    "entry_delivery",
    "entry_message",
    "message_fields",
    "read_entries",
    "read_notes",
    "text",
]

_PAYLOAD = PAYLOAD.encode()

Fields = Mapping[bytes, bytes] | Sequence[bytes]
"""The fields of an entry: a mapping (parsed by redis-py) or Redis's flat list."""


class RedisDelivery(Delivery):
    """A delivery that remembers the stream entry it came from."""

    __slots__ = ("entry_id", "from_redeliver", "slot")

    def __init__(
        self,
        id: str,
        topic: str,
        message: Message,
        attempt: int,
        notes: FailureNotes | None,
        entry_id: str,
        from_redeliver: bool,
        stream: str,
    ) -> None:
        super().__init__(id, topic, message, attempt, notes)
        self.entry_id = entry_id
        self.from_redeliver = from_redeliver
        self.slot = (stream, entry_id)  # where it is held: ids repeat across streams


def text(value: bytes | str) -> str:
    """Bytes from Redis as text (invalid UTF-8 replaced, never raised)."""
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def _pairs(fields: Fields) -> Iterable[tuple[bytes, bytes]]:
    if isinstance(fields, Mapping):
        return fields.items()
    flat = iter(fields)
    return zip(flat, flat, strict=False)  # Redis keeps fields in pairs


# The envelope's field names, decoded once (the rest are decoded per entry).
_HEADER_NAMES = {n.encode(): n for n in HEADER_FIELDS}


def entry_message(fields: Fields) -> tuple[Message, dict[str, str]]:
    """The message of a stream entry, and its transport fields (those starting ``_``)."""
    headers: dict[str, str] = {}
    meta: dict[str, str] = {}
    body = b""
    known = _HEADER_NAMES
    for key, value in _pairs(fields):
        if key == _PAYLOAD:
            body = value
            continue
        name = known.get(key)
        try:
            if name is not None:
                headers[name] = value.decode()
                continue
            name, decoded = key.decode(), value.decode()
        except UnicodeDecodeError:  # kept, replaced: the codec refuses it with a reason
            name, decoded = text(key), text(value)
        if name.startswith("_"):
            meta[name] = decoded
        else:
            headers[name] = decoded
    return Message(body, headers), meta


def message_fields(message: Message) -> list[str | bytes]:
    """The fields of an entry holding ``message``, flat (name, value, ...): its headers,
    then its body as ``payload``."""
    out: list[str | bytes] = []
    for name, value in message.headers.items():
        out += [name, value]
    return [*out, PAYLOAD, message.body]


def entry_delivery(
    topic: str, stream: str, entry_id: str, fields: Fields, *, from_redeliver: bool
) -> RedisDelivery:
    """The delivery of one entry; a redeliver entry carries its attempt, notes and origin."""
    message, meta = entry_message(fields)
    notes = read_notes(meta.get(META_NOTES, "")) if from_redeliver else None
    attempt_text = meta.get(META_ATTEMPT, "1") if from_redeliver else "1"
    attempt = int(attempt_text) if attempt_text.isdigit() else 1
    origin = meta.get(META_ORIGIN, entry_id) if from_redeliver else entry_id
    return RedisDelivery(origin, topic, message, attempt, notes, entry_id, from_redeliver, stream)


def read_notes(stored: str) -> FailureNotes | None:
    """Notes kept as JSON by ``FailureNotes.as_dict``; None when absent or unreadable."""
    try:
        loaded = json.loads(stored) if stored else None
    except ValueError:
        return None
    return FailureNotes.from_dict(loaded) if isinstance(loaded, dict) else None


def read_entries(reply: Any) -> Iterator[tuple[str, str, Fields]]:
    """(stream key, entry id, fields) of an unparsed XREADGROUP reply, in order.

    The reply is Redis's own: nil, or per stream ``[key, [[id, [field, value, ...]]]]``
    (a map of keys under RESP3). Deleted entries (nil fields) are left out.
    """
    streams = reply.items() if isinstance(reply, Mapping) else reply or ()
    for key, items in streams:
        name = text(key)
        for entry_id, fields in items:
            if fields is not None:
                yield name, text(entry_id), fields
