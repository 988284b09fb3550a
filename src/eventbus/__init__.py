"""eventbus: typed events between the parts of a service.

Publish pydantic events; subscribers in groups handle them in the background (or inside
``publish()`` when immediate), with retries and dead letters, in memory or over Redis
Streams (``eventbus.transports.redis``, imported only when asked for).
"""

from ._bus import EventBus
from ._context import Context
from ._deadletter import DeadLetter
from ._envelope import Envelope
from ._errors import (
    BusStateError,
    ConfigurationError,
    DecodeError,
    DuplicateSubscriberError,
    EncodeError,
    EventBusError,
    HandlerTimeoutError,
    ImmediateHandlerError,
    MalformedMessageError,
    PayloadTooLargeError,
    PublishError,
    PublishOutcomeUnknownError,
    PublishRefusedError,
    PublishTimeoutError,
    Retry,
    TransportClosedError,
    TransportError,
    UnknownEventError,
    VersionMismatchError,
)
from ._event import Event
from ._middleware import Middleware, Next
from ._observer import Observer, Outcome
from ._registry import Registry
from ._retry import RetryPolicy
from ._subscriber import Subscriber
from ._upcast import upcaster
from .transports.memory import InMemoryTransport

__version__ = "0.1.0"

__all__ = [
    # the core
    "Event",
    "EventBus",
    "Registry",
    "RetryPolicy",
    "InMemoryTransport",
    "upcaster",
    # what handlers and operators see
    "Context",
    "DeadLetter",
    "Envelope",
    "Middleware",
    "Next",
    "Observer",
    "Outcome",
    "Subscriber",
    # errors (the tree is drawn in eventbus._errors)
    "EventBusError",
    "BusStateError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateSubscriberError",
    "EncodeError",
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
