"""The exceptions eventbus raises, all under one root.

::

    EventBusError
    ├── ConfigurationError          a subscriber, registry or policy is set up wrongly
    │   └── DuplicateSubscriberError    two handlers for one event type in one group
    ├── BusStateError               publish on a bus that is not started or already closed
    ├── PublishError                publish() did not accept the event
    │   ├── PublishTimeoutError         the transport stayed full past publish(timeout=)
    │   ├── PublishOutcomeUnknownError  sent, but no reply: the event may or may not be stored
    │   ├── PayloadTooLargeError        the encoded event exceeds the size limit
    │   └── EncodeError                 a field or header cannot be turned into bytes
    ├── ImmediateHandlerError       an immediate subscriber failed inside publish()
    ├── HandlerTimeoutError         a handler attempt ran past its subscriber timeout
    ├── DecodeError                 bytes from a transport are not a valid event
    │   ├── UnknownEventError           the name is not a registered event type
    │   ├── VersionMismatchError        the version differs from the registered one
    │   └── MalformedMessageError       bad JSON, missing envelope fields, schema violation
    ├── TransportError              the transport failed (the backend error is the __cause__)
    │   ├── TransportClosedError        the transport connection was closed
    │   └── PublishRefusedError         the backend refused events; .stored_ids says which
    └── Retry                       raised by a handler to ask for another attempt

pydantic's ``ValidationError`` is raised unchanged when an event is constructed with
invalid fields; it is not wrapped, so that it behaves exactly as pydantic documents.
"""

from __future__ import annotations

__all__ = [
    "BusStateError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateSubscriberError",
    "EncodeError",
    "EventBusError",
    "HandlerTimeoutError",
    "ImmediateHandlerError",
    "MalformedMessageError",
    "PayloadTooLargeError",
    "PublishError",
    "PublishOutcomeUnknownError",
    "PublishRefusedError",
    "PublishTimeoutError",
    "Retry",
    "TransportClosedError",
    "TransportError",
    "UnknownEventError",
    "VersionMismatchError",
]


class EventBusError(Exception):
    """Root of every exception that eventbus raises on purpose."""


class ConfigurationError(EventBusError, TypeError, ValueError):
    """A subscriber, registry, policy or bus option was declared wrongly.

    It is also a ``TypeError`` and a ``ValueError``: raised at decoration, include or
    construction time, for a signature that does not fit or a value out of range.
    """


class DuplicateSubscriberError(ConfigurationError):
    """Two subscribers of one group take the same event type."""


class BusStateError(EventBusError, RuntimeError):
    """The bus was used outside ``async with bus:`` (not started, or already closed)."""


class PublishError(EventBusError):
    """``publish()`` did not accept the event; nothing was written."""


class PublishTimeoutError(PublishError, TimeoutError):
    """The transport had no room for the event within ``publish(timeout=...)``."""


class PublishOutcomeUnknownError(PublishError):
    """The event was sent but the reply was lost: it may or may not have been stored.
    Also when it was stored but fewer replicas than asked for (``RedisTransport(...,
    replicas=N)``) confirmed it: a failover may lose it.

    Retrying blindly may publish it twice; consumers should be idempotent, or the
    application can check before publishing again.

    ``stored``: how many of the first events of a ``publish_many`` batch are known to be
    stored (their replies came before the failure); the outcome of the others is unknown.
    Republishing ``events[stored:]`` repeats none of the known ones. 0 for ``publish()``.
    """

    def __init__(self, message: str, *, stored: int = 0) -> None:
        super().__init__(message)
        self.stored = stored

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_outcome_unknown, (str(self), self.stored)


class PayloadTooLargeError(PublishError, ValueError):
    """The encoded payload is larger than the configured maximum."""


class EncodeError(PublishError, ValueError):
    """The event cannot be turned into bytes: a field pydantic cannot serialize, or a
    string that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) in a field
    or a header. Nothing was written.

    ``event_name`` is the event's wire name and ``field`` the field or header at fault
    (``None`` when it could not be told). The message names them and the kind of
    problem, never the value (payloads hold personal data).
    """

    def __init__(self, message: str, *, event_name: str, field: str | None) -> None:
        super().__init__(message)
        self.event_name = event_name
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_encode_error, (str(self), self.event_name, self.field)


class ImmediateHandlerError(EventBusError):
    """An immediate subscriber failed inside ``publish()``.

    The event itself was accepted (background groups still receive it); the failure of
    the immediate handler is the ``__cause__``.
    """

    def __init__(self, message: str, *, event_id: str, handler: str) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.handler = handler

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_immediate_error, (str(self), self.event_id, self.handler)


class HandlerTimeoutError(EventBusError, TimeoutError):
    """A handler attempt ran longer than its subscriber's ``timeout``; the attempt failed."""


class DecodeError(EventBusError, ValueError):
    """Bytes from a transport could not be turned into an event.

    ``reason`` is a short machine-readable word kept with the dead letter.
    """

    reason = "undecodable"


class UnknownEventError(DecodeError):
    """The message names an event type that the application did not register."""

    reason = "unknown-event"


class VersionMismatchError(DecodeError):
    """The message carries a version the registered event type cannot take: a newer
    one (``newer`` is True), or an older one without upcasters up to the current."""

    reason = "wrong-version"

    def __init__(self, message: str, *, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_version_mismatch, (str(self), self.newer)


class MalformedMessageError(DecodeError):
    """Invalid JSON, missing or bad envelope fields, a schema violation, or too large."""

    reason = "malformed"


class TransportError(EventBusError):
    """The transport failed; the backend's exception is the ``__cause__``."""


class TransportClosedError(TransportError):
    """The transport connection, or the subscription, was already closed."""


class PublishRefusedError(TransportError):
    """The backend answered, refusing one or more events (Redis: ``WRONGTYPE``, ``OOM``,
    ``NOPERM``); the others of the batch may be stored.

    ``stored_ids`` has one item per event sent, in the batch's order: the id under which
    it was stored, or None where it was refused. Events of the batch past
    ``len(stored_ids)`` were not sent (publishing one by one stops at the first refusal).
    Republishing the events whose item is None (and those past the end) duplicates none.
    """

    def __init__(self, message: str, *, stored_ids: tuple[str | None, ...]) -> None:
        super().__init__(message)
        self.stored_ids = stored_ids

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_refused, (str(self), self.stored_ids)


class Retry(EventBusError):  # noqa: N818 - a request, not an error: `raise Retry(delay=5)`
    """Raise from a handler to ask for another attempt.

    ``delay`` (seconds) overrides the retry policy's backoff for this attempt. The attempt
    still counts against ``max_attempts``.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        if delay is not None and not (delay >= 0 and delay != float("inf")):
            raise ConfigurationError("Retry(delay=...) must be a finite number of seconds >= 0")
        super().__init__(message)
        self.delay = delay


def _rebuild_outcome_unknown(message: str, stored: int) -> PublishOutcomeUnknownError:
    return PublishOutcomeUnknownError(message, stored=stored)


def _rebuild_refused(message: str, stored_ids: tuple[str | None, ...]) -> PublishRefusedError:
    return PublishRefusedError(message, stored_ids=stored_ids)


def _rebuild_version_mismatch(message: str, newer: bool) -> VersionMismatchError:
    return VersionMismatchError(message, newer=newer)


def _rebuild_encode_error(message: str, event_name: str, field: str | None) -> EncodeError:
    return EncodeError(message, event_name=event_name, field=field)


def _rebuild_immediate_error(message: str, event_id: str, handler: str) -> ImmediateHandlerError:
    return ImmediateHandlerError(message, event_id=event_id, handler=handler)


for _name in __all__:
    globals()[_name].__module__ = "eventbus"  # shown as eventbus.X in tracebacks and logs
del _name
