"""The public surface: exported names, docstrings, lazy optional backends, typing marker."""

from __future__ import annotations

import importlib
import importlib.resources
import subprocess
import sys
import types

import pytest

import eventbus
from eventbus import EventBusError, _errors

EXPECTED_ALL = {
    "eventbus": {
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
        # errors
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
    },
    "eventbus.testing": {"Captured", "VirtualClock", "capture", "drain"},
    "eventbus.testing.conformance": {
        "BOUNDED_CAPACITY",
        "TransportConformance",
        "connected",
        "message",
        "receive_and_ack",
    },
    "eventbus.outbox": {"Inbox", "Outbox"},
    "eventbus.opentelemetry": {"OpenTelemetryMiddleware"},
    "eventbus.transports": {
        "BatchPublishing",
        "Connection",
        "DeadLetterStore",
        "Delivery",
        "FailureNotes",
        "GroupListing",
        "GroupManagement",
        "Features",
        "GroupStats",
        "HandledRecord",
        "IdleWaiting",
        "Inspection",
        "InMemoryTransport",
        "Message",
        "ReferencePublishing",
        "Serving",
        "StoredDeadLetter",
        "Subscription",
        "Transport",
    },
}

# The tree drawn in the docstring of eventbus._errors: each exception and its parent.
EXCEPTION_PARENTS: dict[str, str] = {
    "ConfigurationError": "EventBusError",
    "DuplicateSubscriberError": "ConfigurationError",
    "BusStateError": "EventBusError",
    "PublishError": "EventBusError",
    "PublishTimeoutError": "PublishError",
    "PublishOutcomeUnknownError": "PublishError",
    "PayloadTooLargeError": "PublishError",
    "EncodeError": "PublishError",
    "ImmediateHandlerError": "EventBusError",
    "HandlerTimeoutError": "EventBusError",
    "DecodeError": "EventBusError",
    "UnknownEventError": "DecodeError",
    "VersionMismatchError": "DecodeError",
    "MalformedMessageError": "DecodeError",
    "TransportError": "EventBusError",
    "TransportClosedError": "TransportError",
    "PublishRefusedError": "TransportError",
    "Retry": "EventBusError",
}

PUBLIC_MODULES = sorted(EXPECTED_ALL)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_exactly_the_intended_set(module_name: str) -> None:
    """__all__ lists exactly the intended names: nothing leaked, nothing missing."""
    module = importlib.import_module(module_name)

    assert set(module.__all__) == EXPECTED_ALL[module_name]
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_attribute_is_listed_in_all(module_name: str) -> None:
    """No public (non-underscore) attribute other than a submodule is left out of __all__."""
    module = importlib.import_module(module_name)

    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert public <= set(module.__all__)


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(module, name) for module in PUBLIC_MODULES for name in sorted(EXPECTED_ALL[module])],
)
def test_every_exported_name_is_importable_and_documented(module_name: str, name: str) -> None:
    """Each name in __all__ can be imported from its module and has its own docstring."""
    module = importlib.import_module(module_name)

    imported = getattr(module, name)

    doc = imported.__dict__.get("__doc__") if isinstance(imported, type) else imported.__doc__
    assert isinstance(doc, str)
    assert doc.strip()


def test_import_eventbus_does_not_import_redis_or_sqlalchemy() -> None:
    """`import eventbus` leaves the optional redis client and SQLAlchemy unimported."""
    code = (
        "import sys, eventbus, eventbus.testing, eventbus.transports; "
        "assert 'redis' not in sys.modules, 'redis was imported'; "
        "assert not [m for m in sys.modules if m.startswith('redis.')]; "
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy was imported'"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr


def test_package_ships_py_typed() -> None:
    """eventbus ships the PEP 561 py.typed marker."""
    assert importlib.resources.files("eventbus").joinpath("py.typed").is_file()


def test_package_has_a_version() -> None:
    """eventbus.__version__ is a non-empty string."""
    assert isinstance(eventbus.__version__, str)
    assert eventbus.__version__


@pytest.mark.parametrize(
    ("module_name", "name"),
    [
        (module, name)
        for module in PUBLIC_MODULES
        for name in sorted(EXPECTED_ALL[module])
        if isinstance(getattr(importlib.import_module(module), name), type)
        and issubclass(getattr(importlib.import_module(module), name), BaseException)
    ],
)
def test_every_exported_exception_is_an_event_bus_error(module_name: str, name: str) -> None:
    """Every exception that eventbus exports can be caught with `except EventBusError`."""
    exported = getattr(importlib.import_module(module_name), name)

    assert issubclass(exported, EventBusError)


@pytest.mark.parametrize(("child", "parent"), sorted(EXCEPTION_PARENTS.items()))
def test_exception_tree_matches_the_documented_one(child: str, parent: str) -> None:
    """Each exception sits under the parent drawn in the eventbus._errors docstring."""
    child_class = getattr(eventbus, child)
    parent_class = getattr(eventbus, parent)

    assert issubclass(child_class, parent_class)
    assert child in (_errors.__doc__ or "")


def test_every_exported_exception_is_in_the_documented_tree() -> None:
    """No exported exception is missing from the tree in the errors module docstring."""
    exported = {
        name
        for name in eventbus.__all__
        if isinstance(getattr(eventbus, name), type)
        and issubclass(getattr(eventbus, name), BaseException)
    }

    assert exported == set(EXCEPTION_PARENTS) | {"EventBusError"}


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("ConfigurationError", TypeError),
        ("ConfigurationError", ValueError),
        ("BusStateError", RuntimeError),
        ("PublishTimeoutError", TimeoutError),
        ("PayloadTooLargeError", ValueError),
        ("HandlerTimeoutError", TimeoutError),
        ("DecodeError", ValueError),
    ],
)
def test_exceptions_also_subclass_the_matching_builtin(
    name: str, builtin: type[BaseException]
) -> None:
    """Exceptions are also the builtin a caller would naturally catch."""
    assert issubclass(getattr(eventbus, name), builtin)
