"""Stream entries of the Redis transport as messages and deliveries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._protocol import Delivery, Message
from ._redis_scripts import META_ATTEMPT, META_NOTES, META_ORIGIN, PAYLOAD

__all__ = ["RedisDelivery", "by_stream", "entry_delivery", "entry_message", "text"]

_PAYLOAD = PAYLOAD.encode()


class RedisDelivery(Delivery):
    """A delivery that remembers the stream entry it came from."""

    __slots__ = ("entry_id", "from_redeliver", "slot")

    def __init__(
        self,
        id: str,
        topic: str,
        message: Message,
        attempt: int,
        notes: Mapping[str, str],
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


def entry_message(fields: Mapping[bytes, bytes]) -> tuple[Message, dict[str, str]]:
    """The message of a stream entry, and its transport fields (those starting ``_``)."""
    headers: dict[str, str] = {}
    meta: dict[str, str] = {}
    body = b""
    for key, value in fields.items():
        if key == _PAYLOAD:
            body = value
            continue
        try:
            name, decoded = key.decode(), value.decode()
        except UnicodeDecodeError:  # kept, replaced: the codec refuses it with a reason
            name, decoded = text(key), text(value)
        if name.startswith("_"):
            meta[name] = decoded
        else:
            headers[name] = decoded
    return Message(body, headers), meta


def entry_delivery(
    topic: str, stream: str, entry_id: str, fields: Mapping[bytes, bytes], *, from_redeliver: bool
) -> RedisDelivery:
    """The delivery of one entry; a redeliver entry carries its attempt, notes and origin."""
    message, meta = entry_message(fields)
    notes: Mapping[str, str] = {}
    if from_redeliver and meta.get(META_NOTES):
        try:
            loaded = json.loads(meta[META_NOTES])
            notes = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            notes = {}
    attempt_text = meta.get(META_ATTEMPT, "1") if from_redeliver else "1"
    attempt = int(attempt_text) if attempt_text.isdigit() else 1
    origin = meta.get(META_ORIGIN, entry_id) if from_redeliver else entry_id
    return RedisDelivery(origin, topic, message, attempt, notes, entry_id, from_redeliver, stream)


def by_stream(reply: Any) -> dict[str, list[tuple[bytes, dict[bytes, bytes]]]]:
    """An XREADGROUP reply as {stream key: [(entry id, fields)]}, deleted entries left out."""
    out: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
    for key, items in reply or []:
        out[text(key)] = [(i, f) for i, f in items if f is not None]
    return out
