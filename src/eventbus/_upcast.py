"""Upcasters: functions that turn an older version's payload into the next version's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import ConfigurationError, MalformedMessageError, VersionMismatchError
from ._event import Event

__all__ = ["Upcaster", "upcast", "upcaster"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes the payload of one version (a dict, as decoded from JSON) and returns the
payload of the next version."""

U = TypeVar("U", bound=Upcaster)

_REGISTRY = "__eventbus_upcasters__"  # on each Event subclass: {from_version: function}


def upcaster(event_type: type[Event], *, from_version: int) -> Callable[[U], U]:
    """Register a function that turns a ``from_version`` payload of ``event_type`` into
    a ``from_version + 1`` payload::

        @upcaster(OrderCreated, from_version=1)
        def add_currency(payload: dict[str, Any]) -> dict[str, Any]:
            return {**payload, "currency": "EUR"}

    Chains apply in order (1 -> 2 -> 3) before validation, wherever an event arrives as
    bytes: every transport, replayed dead letters. The function is kept on the event
    class. Raises ``ConfigurationError`` for something that is not an event class, a
    ``from_version`` that is not below the class's version, or a second upcaster for
    the same version.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise ConfigurationError(f"upcaster() takes an Event class, not {event_type!r}")
    name, current = event_type.event_name, event_type.event_version
    if isinstance(from_version, bool) or not isinstance(from_version, int):
        raise ConfigurationError(f"upcaster(from_version=...) of {name} must be an int")
    if not 1 <= from_version < current:
        raise ConfigurationError(
            f"upcaster(from_version={from_version}) of {name}: the version must be at "
            f"least 1 and below the class's version {current}"
        )

    def register(function: U) -> U:
        if not callable(function):
            raise ConfigurationError(f"upcaster of {name} must decorate a function")
        chain: dict[int, Upcaster] = event_type.__dict__.get(_REGISTRY, {})
        if from_version in chain:
            raise ConfigurationError(
                f"{name} already has an upcaster from version {from_version}: "
                f"{_label(chain[from_version])}"
            )
        setattr(event_type, _REGISTRY, {**chain, from_version: function})
        return function

    return register


def upcast(event_type: type[Event], version: int, payload: object) -> object:
    """``payload`` of ``version`` turned into the class's version by its upcasters.

    Raises ``VersionMismatchError`` when a link of the chain is missing, and
    ``MalformedMessageError`` when an upcaster fails or returns something other than a
    dict (the message names the upcaster, never the payload).
    """
    chain: dict[int, Upcaster] = event_type.__dict__.get(_REGISTRY, {})
    name, current = event_type.event_name, event_type.event_version
    for step in range(version, current):
        function = chain.get(step)
        if function is None:
            raise VersionMismatchError(
                f"{name} arrived as version {version}, this application knows version "
                f"{current} and has no upcaster from version {step}"
            )
        if not isinstance(payload, dict):
            raise MalformedMessageError(f"the payload of {name} v{step} is not a JSON object")
        try:
            payload = function(payload)
        except Exception as exc:
            raise MalformedMessageError(
                f"upcaster {_label(function)} of {name} v{step} failed: {type(exc).__name__}"
            ) from None
        if not isinstance(payload, dict):
            raise MalformedMessageError(
                f"upcaster {_label(function)} of {name} v{step} returned "
                f"{type(payload).__name__}, not a dict"
            )
    return payload


def _label(function: object) -> str:
    module = getattr(function, "__module__", "?")
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"
