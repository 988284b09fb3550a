"""The codec: event + envelope to bytes and string headers, and back.

The wire format (see ``docs/wire-format.md``): the body is the event's JSON; the headers
are ``id``, ``name``, ``version``, ``time``, ``correlation_id``, optional
``causation_id`` and optional ``headers`` (a JSON object of strings). The delivery
attempt is kept by the transport, not in the headers.

On a transport that carries references (``ReferencePublishing``), an event travels as
the tuple ``(event, envelope)``, never turned into bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from pydantic import ValidationError

from ._envelope import Envelope
from ._errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    MalformedMessageError,
    PayloadTooLargeError,
    UnknownEventError,
    VersionMismatchError,
)
from ._event import Event
from ._upcast import upcast
from .transports._contract import Message

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "Codec"]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MAX_FIELD = 200


class Codec:
    """Encodes events for transports and decodes what transports deliver.

    Decoding only ever builds event types that were registered here (by wire name): the
    wire never names code. Every decoding problem raises a ``DecodeError`` subclass.
    """

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
            raise ConfigurationError("max_payload_bytes must be an int")
        if max_payload_bytes < 1:
            raise ConfigurationError("max_payload_bytes must be >= 1")
        self.max_payload_bytes = max_payload_bytes
        self._types: dict[str, type[Event]] = {}

    def register(self, event_types: Iterable[type[Event]]) -> None:
        """Make these event types decodable; a second class with a taken name is an error."""
        merged = dict(self._types)
        for event_type in event_types:
            known = merged.setdefault(event_type.event_name, event_type)
            if known is not event_type:
                raise ConfigurationError(
                    f"two event classes share the name {event_type.event_name!r}: "
                    f"{known.__module__}.{known.__qualname__} and "
                    f"{event_type.__module__}.{event_type.__qualname__}"
                )
        self._types = merged

    def event_type(self, name: str) -> type[Event] | None:
        """The registered class for a wire name, or None."""
        return self._types.get(name)

    def encode(self, event: Event, envelope: Envelope) -> Message:
        """The event as a message; raises ``PayloadTooLargeError`` past the size limit and
        ``EncodeError`` when a field cannot be serialized."""
        return Message(self.encode_body(event), self.encode_headers(envelope))

    def encode_body(self, event: Event) -> bytes:
        """The event's JSON; raises ``PayloadTooLargeError`` past the size limit and
        ``EncodeError`` when a field cannot be serialized."""
        try:
            body = event.__pydantic_serializer__.to_json(event, by_alias=True)
        except ValueError:  # pydantic's PydanticSerializationError, which may quote data
            raise _encode_error(event) from None
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{event.event_name} encodes to {len(body)} bytes, more than the limit of "
                f"{self.max_payload_bytes} (max_payload_bytes). The limit holds wherever an "
                "event becomes bytes; events passed by reference on the in-memory "
                "transport never do (InMemoryTransport(serialize=True) checks them too)"
            )
        return body

    @staticmethod
    def encode_headers(envelope: Envelope) -> dict[str, str]:
        """The envelope as wire headers."""
        headers = {
            "id": envelope.id,
            "name": envelope.name,
            "version": str(envelope.version),
            "time": envelope.occurred_at.isoformat().replace("+00:00", "Z"),
            "correlation_id": envelope.correlation_id,
        }
        if envelope.causation_id is not None:
            headers["causation_id"] = envelope.causation_id
        if envelope.headers:
            headers["headers"] = json.dumps(dict(envelope.headers), separators=(",", ":"))
        return headers

    def decode(self, message: Message, attempt: int = 1) -> tuple[Event, Envelope]:
        """Turn a delivered message back into its event and envelope.

        An older version goes through the event type's upcasters before validation; a
        newer one raises ``VersionMismatchError`` with ``newer`` set. Raises
        ``UnknownEventError``, ``VersionMismatchError`` or ``MalformedMessageError``,
        never another exception.
        """
        envelope = self.decode_envelope(message.headers, attempt)
        event_type = self._types.get(envelope.name)
        if event_type is None:
            raise UnknownEventError(f"no registered event type is named {envelope.name!r}")
        if envelope.version > event_type.event_version:
            raise VersionMismatchError(
                f"{envelope.name} arrived as version {envelope.version}, "
                f"this application knows version {event_type.event_version}",
                newer=True,
            )
        body = message.body
        if not isinstance(body, bytes | bytearray | memoryview):
            raise MalformedMessageError("the body is not bytes")
        if len(body) > self.max_payload_bytes:
            raise MalformedMessageError(
                f"the body has {len(body)} bytes, more than the limit of {self.max_payload_bytes}"
            )
        try:
            if envelope.version == event_type.event_version:
                event: Event = event_type.__pydantic_validator__.validate_json(bytes(body))
            else:  # an older version: its upcasters first
                payload = upcast(event_type, envelope.version, json.loads(bytes(body)))
                event = event_type.__pydantic_validator__.validate_python(payload)
        except (ValidationError, ValueError, RecursionError) as exc:
            if isinstance(exc, DecodeError):
                raise

            raise MalformedMessageError(
                f"the payload is not a valid {envelope.name}: {_summary(exc, event_type)}"
            ) from None
        return event, envelope

    def decode_reference(self, reference: object, attempt: int = 1) -> tuple[Event, Envelope]:
        """The event and envelope of a reference ``(event, envelope)``, as ``decode``
        would give them.

        An event whose class is not the one registered under its name (another bus of
        the process registered another class) goes through bytes, as on the wire.
        """
        if not (
            type(reference) is tuple
            and len(reference) == 2
            and isinstance(reference[0], Event)
            and isinstance(reference[1], Envelope)
        ):
            raise MalformedMessageError("the reference is not an eventbus event")
        event, envelope = reference
        if self._types.get(envelope.name) is type(event):
            return event, envelope.with_attempt(attempt)
        try:
            body = event.__pydantic_serializer__.to_json(event, by_alias=True)
        except ValueError as exc:
            raise MalformedMessageError(f"the event cannot be encoded: {exc}") from None
        return self.decode(Message(body, self.encode_headers(envelope)), attempt)

    @staticmethod
    def decode_envelope(headers: Mapping[str, str], attempt: int = 1) -> Envelope:
        """The envelope of wire headers; raises ``MalformedMessageError`` when invalid."""
        if type(headers) is not dict and not isinstance(headers, Mapping):
            raise MalformedMessageError("the headers are not a mapping")
        get = headers.get
        event_id, name, version, time = get("id"), get("name"), get("version"), get("time")
        correlation, causation = get("correlation_id", event_id), get("causation_id")
        if not (
            type(event_id) is str
            and type(name) is str
            and type(version) is str
            and type(time) is str
            and type(correlation) is str
            and 0 < len(event_id) <= _MAX_FIELD
            and 0 < len(name) <= _MAX_FIELD
            and 0 < len(version) <= _MAX_FIELD
            and 0 < len(time) <= _MAX_FIELD
            and 0 < len(correlation) <= _MAX_FIELD
            and (causation is None or _short_str(causation))
        ):
            return _checked_envelope(headers, attempt)  # slower, and says what is wrong
        raw_headers = get("headers")
        return Envelope(
            event_id,
            name,
            _version(version),
            _time(time),
            correlation,
            causation,
            _NO_HEADERS if raw_headers is None else _user_headers(raw_headers),
            attempt,
        )


def _checked_envelope(headers: Mapping[str, str], attempt: int) -> Envelope:
    """The envelope, each header checked in turn: the first wrong one is named."""
    event_id = _field(headers, "id")
    correlation = headers.get("correlation_id", event_id)
    if not _short_str(correlation):
        raise MalformedMessageError("the correlation_id header is not a short string")
    causation = headers.get("causation_id")
    if causation is not None and not _short_str(causation):
        raise MalformedMessageError("the causation_id header is not a short string")
    return Envelope(
        event_id,
        _field(headers, "name"),
        _version(_field(headers, "version")),
        _time(_field(headers, "time")),
        correlation,
        causation,
        _user_headers(headers.get("headers")),
        attempt,
    )


def _short_str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_FIELD


def _field(headers: Mapping[str, str], key: str) -> str:
    value = headers.get(key)
    if isinstance(value, str) and 0 < len(value) <= _MAX_FIELD:
        return value
    raise MalformedMessageError(f"the {key!r} header is missing or not a short string")


def _version(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 9 or int(value) < 1:
        raise MalformedMessageError(f"the version header {value!r} is not a positive integer")
    return int(value)


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is UTC:
            return parsed
        if parsed.tzinfo is None:
            raise MalformedMessageError(f"the time header {value!r} has no timezone")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise MalformedMessageError(
            f"the time header {value!r} is not an ISO 8601 UTC time"
        ) from None


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _user_headers(raw: object) -> Mapping[str, str]:
    if raw is None:
        return _NO_HEADERS
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise MalformedMessageError("the headers header is not a JSON object of strings")
    return MappingProxyType(parsed)


def _encode_error(event: Event) -> EncodeError:
    """Which field of ``event`` cannot be encoded, and how, without quoting its value."""
    serializer = event.__pydantic_serializer__
    for name in type(event).model_fields:
        try:
            serializer.to_json(event, include={name}, by_alias=True)
        except ValueError as exc:
            kind = (
                "a string that is not valid Unicode (a lone surrogate)"
                if "surrogate" in str(exc)
                else "a value that pydantic cannot serialize"
            )
            return EncodeError(
                f"{event.event_name} cannot be encoded: its field {name!r} holds {kind}",
                event_name=event.event_name,
                field=name,
            )
    return EncodeError(
        f"{event.event_name} cannot be encoded (pydantic cannot serialize it)",
        event_name=event.event_name,
        field=None,
    )


def _summary(exc: BaseException, event_type: type[Event]) -> str:
    """What went wrong, without quoting the payload (it holds personal data).

    Only the error kind and the top-level field name are kept: pydantic's messages and
    deeper locations may quote values or dict keys from the payload.
    """
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False, include_context=False)[:1]
        if not first:
            return "invalid"
        loc = first[0]["loc"]
        field = loc[0] if loc and loc[0] in event_type.model_fields else "(payload)"
        return f"{exc.error_count()} error(s), first at {field}: {first[0]['type']}"
    return type(exc).__name__
