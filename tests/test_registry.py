"""Registry.subscribe: event types from annotations, option checks, defaults, duplicates.

This module deliberately does not use ``from __future__ import annotations``, so that the
handlers below carry real class objects as annotations; string annotations are covered
by importing a module that does use it (see ``_import_module``).
"""

import importlib.util
import sys
import textwrap
import typing
import uuid
from pathlib import Path
from types import ModuleType

import pydantic
import pytest

from eventbus import (
    ConfigurationError,
    Context,
    DuplicateSubscriberError,
    Event,
    EventBus,
    Registry,
    RetryPolicy,
    Subscriber,
)
from eventbus._errors import BusStateError
from tests.events import OrderCreated, OrderPaid, UserBanned


class NotAnEvent(pydantic.BaseModel):
    """A pydantic model that is not an Event."""

    order_id: str


class OrderCreatedElsewhere(Event, name="OrderCreated"):
    """Another class that claims the wire name of tests.events.OrderCreated."""

    order_id: str


async def module_level_handler(event: OrderCreated) -> None:
    """A handler defined at module level, for the default group name."""


def _only_subscriber(registry: Registry) -> Subscriber:
    """The single subscriber of ``registry``."""
    [subscriber] = list(registry)
    return subscriber


def _import_module(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``source`` as a fresh module file, as an application module would be."""
    name = f"handlers_{uuid.uuid4().hex}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


# -- event type inference -------------------------------------------------------------


def test_single_event_class_annotation() -> None:
    """A handler annotated with one Event class takes exactly that type."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated) -> None: ...

    assert _only_subscriber(registry).event_types == (OrderCreated,)


def test_pipe_union_annotation_takes_every_member() -> None:
    """`A | B` subscribes the handler to both event types."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated | UserBanned) -> None: ...

    assert set(_only_subscriber(registry).event_types) == {OrderCreated, UserBanned}


def test_typing_union_annotation_takes_every_member() -> None:
    """`typing.Union[A, B]` subscribes the handler to both event types."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: typing.Union[OrderCreated, OrderPaid]) -> None: ...  # noqa: UP007 - the old spelling is what this test checks

    assert set(_only_subscriber(registry).event_types) == {OrderCreated, OrderPaid}


def test_quoted_annotation_is_resolved() -> None:
    """A string annotation naming an Event class is resolved to the class."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: "OrderCreated") -> None: ...

    assert _only_subscriber(registry).event_types == (OrderCreated,)


def test_string_annotations_under_future_import_are_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `from __future__ import annotations`, class, `A | B` and Union all resolve."""
    module = _import_module(
        """
        from __future__ import annotations

        import typing

        from eventbus import Event, Registry
        from tests.events import OrderCreated, OrderPaid

        class OrderShipped(Event):
            order_id: str

        registry = Registry()

        @registry.subscribe(group="single")
        async def single(event: OrderShipped) -> None: ...

        @registry.subscribe(group="pipe")
        async def pipe(event: OrderCreated | OrderPaid) -> None: ...

        @registry.subscribe(group="union")
        async def union(event: typing.Union[OrderCreated, OrderShipped]) -> None: ...
        """,
        tmp_path,
        monkeypatch,
    )

    types_by_group = {sub.group: set(sub.event_types) for sub in module.registry}

    assert types_by_group == {
        "single": {module.OrderShipped},
        "pipe": {OrderCreated, OrderPaid},
        "union": {OrderCreated, module.OrderShipped},
    }


def test_context_type_imported_only_for_type_checking_does_not_break_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unresolvable annotation on the context parameter does not hide the event type."""
    module = _import_module(
        """
        from __future__ import annotations

        from typing import TYPE_CHECKING

        from eventbus import Registry
        from tests.events import OrderCreated

        if TYPE_CHECKING:
            from eventbus import Context

        registry = Registry()

        @registry.subscribe()
        async def handler(event: OrderCreated, context: Context) -> None: ...
        """,
        tmp_path,
        monkeypatch,
    )

    assert _only_subscriber(module.registry).event_types == (OrderCreated,)


def test_repeated_union_members_are_taken_once() -> None:
    """A union that names a type twice subscribes to it once."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: typing.Union[OrderCreated, OrderCreated, OrderPaid]) -> None: ...  # noqa: UP007 - the old spelling allows the repetition under test

    assert sorted(t.event_name for t in _only_subscriber(registry).event_types) == [
        "OrderCreated",
        "OrderPaid",
    ]


# -- signature errors -----------------------------------------------------------------


def test_missing_annotation_raises_configuration_error() -> None:
    """A first parameter without annotation is refused, naming the handler."""
    registry = Registry()

    async def unannotated(event) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(ConfigurationError, match=r"unannotated.*annotate its first parameter"):
        registry.subscribe()(unannotated)


@pytest.mark.parametrize(
    "annotation",
    [
        pytest.param(int, id="int"),
        pytest.param(str, id="str"),
        pytest.param(NotAnEvent, id="plain-pydantic-model"),
        pytest.param(Event, id="event-base"),
        pytest.param(OrderCreated | None, id="optional"),
        pytest.param(OrderCreated | NotAnEvent, id="union-with-non-event"),
        pytest.param(list[OrderCreated], id="list-of-events"),
    ],
)
def test_non_event_annotation_raises_configuration_error(annotation: object) -> None:
    """The first parameter must be an Event subclass or a union of them."""
    registry = Registry()

    async def handler(event: typing.Any) -> None: ...

    handler.__annotations__["event"] = annotation

    with pytest.raises(ConfigurationError, match="must be an Event subclass"):
        registry.subscribe()(handler)


def test_configuration_error_is_a_type_error() -> None:
    """Signature problems raise an error that `except TypeError` also catches."""
    registry = Registry()

    async def handler(event: int) -> None: ...

    with pytest.raises(TypeError):
        registry.subscribe()(handler)


def test_sync_handler_raises_configuration_error() -> None:
    """A plain `def` handler is refused: handlers must be `async def`."""
    registry = Registry()

    def handler(event: OrderCreated) -> None: ...

    with pytest.raises(ConfigurationError, match="must be an `async def` function"):
        registry.subscribe()(handler)  # type: ignore[type-var]


def test_async_generator_handler_raises_configuration_error() -> None:
    """An async generator is not a coroutine function, and is refused."""
    registry = Registry()

    async def handler(event: OrderCreated) -> typing.AsyncIterator[None]:
        yield

    with pytest.raises(ConfigurationError, match="async def"):
        registry.subscribe()(handler)  # type: ignore[type-var]


def test_handler_without_parameters_raises_configuration_error() -> None:
    """A handler that takes no event is refused."""
    registry = Registry()

    async def handler() -> None: ...

    with pytest.raises(ConfigurationError, match="must take the event"):
        registry.subscribe()(handler)


def test_handler_with_three_required_parameters_raises_configuration_error() -> None:
    """A handler needs the event and at most a context; a third parameter is refused."""
    registry = Registry()

    async def handler(event: OrderCreated, context: Context, extra: int) -> None: ...

    with pytest.raises(ConfigurationError, match="must take the event"):
        registry.subscribe()(handler)


def test_handler_with_required_keyword_only_parameter_raises_configuration_error() -> None:
    """A required keyword-only parameter could never be filled, and is refused."""
    registry = Registry()

    async def handler(event: OrderCreated, *, flag: bool) -> None: ...

    with pytest.raises(ConfigurationError, match="must take the event"):
        registry.subscribe()(handler)


def test_optional_keyword_only_parameter_is_allowed() -> None:
    """Keyword-only parameters with defaults do not count against the signature."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated, *, dry_run: bool = False) -> None: ...

    assert _only_subscriber(registry).takes_context is False


# -- option errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"group": ""}, id="group-empty"),
        pytest.param({"group": "e mail"}, id="group-space"),
        pytest.param({"group": "email\t"}, id="group-tab"),
        pytest.param({"group": "email\n"}, id="group-newline"),
        pytest.param({"group": "{email}"}, id="group-braces"),
        pytest.param({"group": "g" * 201}, id="group-too-long"),
        pytest.param({"group": 5}, id="group-int"),
        pytest.param({"concurrency": 0}, id="concurrency-zero"),
        pytest.param({"concurrency": -1}, id="concurrency-negative"),
        pytest.param({"concurrency": True}, id="concurrency-bool"),
        pytest.param({"concurrency": 1.5}, id="concurrency-float"),
        pytest.param({"timeout": 0}, id="timeout-zero"),
        pytest.param({"timeout": -1}, id="timeout-negative"),
        pytest.param({"timeout": "5"}, id="timeout-str"),
        pytest.param({"mode": "later"}, id="mode-unknown"),
        pytest.param({"mode": "Immediate"}, id="mode-wrong-case"),
        pytest.param({"retry": {"max_attempts": 3}}, id="retry-dict"),
        pytest.param({"retry": 3}, id="retry-int"),
    ],
)
def test_invalid_options_raise_configuration_error(options: dict[str, object]) -> None:
    """A bad group, concurrency, timeout, mode or retry is refused, naming the handler."""
    registry = Registry()

    async def misconfigured(event: OrderCreated) -> None: ...

    with pytest.raises(ConfigurationError, match="misconfigured") as caught:
        registry.subscribe(**options)(misconfigured)  # type: ignore[arg-type]

    assert isinstance(caught.value, TypeError)
    assert len(registry) == 0


def test_boolean_timeout_is_refused() -> None:
    """timeout=True is not a number of seconds, as concurrency=True is not a count."""
    registry = Registry()

    async def handler(event: OrderCreated) -> None: ...

    with pytest.raises(ConfigurationError, match="timeout"):
        registry.subscribe(timeout=True)(handler)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"group": "g" * 200}, id="group-200-chars"),
        pytest.param({"group": "orders.email:v2-<eu>"}, id="group-punctuation"),
        pytest.param({"concurrency": 50}, id="concurrency-50"),
        pytest.param({"timeout": 0.001}, id="timeout-small"),
        pytest.param({"timeout": 5}, id="timeout-int"),
        pytest.param({"mode": "immediate"}, id="mode-immediate"),
        pytest.param({"retry": RetryPolicy.none()}, id="retry-none"),
    ],
)
def test_valid_options_are_kept(options: dict[str, object]) -> None:
    """Valid options end up on the subscriber as given."""
    registry = Registry()

    @registry.subscribe(**options)  # type: ignore[arg-type]
    async def handler(event: OrderCreated) -> None: ...

    subscriber = _only_subscriber(registry)
    for option, value in options.items():
        assert getattr(subscriber, option) == value


# -- defaults -------------------------------------------------------------------------


def test_defaults() -> None:
    """Without options: concurrency 1, no timeout, background mode, RetryPolicy()."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated) -> None: ...

    subscriber = _only_subscriber(registry)
    assert subscriber.concurrency == 1
    assert subscriber.timeout is None
    assert subscriber.mode == "background"
    assert subscriber.retry == RetryPolicy()
    assert subscriber.takes_context is False
    assert subscriber.handler is handler


def test_default_group_is_the_module_qualified_name() -> None:
    """The default group is `module.qualname`, stable across restarts."""
    registry = Registry()

    registry.subscribe()(module_level_handler)

    assert _only_subscriber(registry).group == "tests.test_registry.module_level_handler"


def test_default_group_of_a_nested_handler_includes_its_qualname() -> None:
    """A handler defined in a function gets its full qualified name as group."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated) -> None: ...

    assert _only_subscriber(registry).group == (
        "tests.test_registry.test_default_group_of_a_nested_handler_includes_its_qualname"
        ".<locals>.handler"
    )


def test_second_parameter_means_the_handler_takes_a_context() -> None:
    """A handler with a second parameter is marked to receive the Context."""
    registry = Registry()

    @registry.subscribe()
    async def handler(event: OrderCreated, context: Context) -> None: ...

    assert _only_subscriber(registry).takes_context is True


def test_decorator_returns_the_handler_unchanged() -> None:
    """@registry.subscribe returns the very same function, still callable in tests."""
    registry = Registry()

    async def handler(event: OrderCreated) -> None: ...

    assert registry.subscribe()(handler) is handler


def test_timeout_is_stored_as_float_seconds() -> None:
    """An int timeout is kept as the same number of seconds, as a float."""
    registry = Registry()

    @registry.subscribe(timeout=2)
    async def handler(event: OrderCreated) -> None: ...

    timeout = _only_subscriber(registry).timeout
    assert isinstance(timeout, float)
    assert timeout == 2.0


# -- duplicates -----------------------------------------------------------------------


def test_same_group_same_event_type_is_a_duplicate() -> None:
    """A second handler for one event type in one group raises DuplicateSubscriberError."""
    registry = Registry()

    @registry.subscribe(group="email")
    async def first(event: OrderCreated) -> None: ...

    async def second(event: OrderCreated) -> None: ...

    with pytest.raises(DuplicateSubscriberError, match=r"'email'.*OrderCreated"):
        registry.subscribe(group="email")(second)
    assert [s.handler for s in registry] == [first]


def test_overlapping_unions_in_one_group_are_duplicates() -> None:
    """Two handlers of one group whose event types overlap clash on the shared type."""
    registry = Registry()

    @registry.subscribe(group="audit")
    async def first(event: OrderCreated | OrderPaid) -> None: ...

    async def second(event: OrderPaid | UserBanned) -> None: ...

    with pytest.raises(DuplicateSubscriberError, match="OrderPaid"):
        registry.subscribe(group="audit")(second)


def test_duplicate_subscriber_error_is_a_configuration_error() -> None:
    """DuplicateSubscriberError is caught by `except ConfigurationError` and TypeError."""
    assert issubclass(DuplicateSubscriberError, ConfigurationError)
    assert issubclass(DuplicateSubscriberError, TypeError)


def test_same_group_different_event_types_is_fine() -> None:
    """One group may have one handler per event type."""
    registry = Registry()

    @registry.subscribe(group="email")
    async def on_created(event: OrderCreated) -> None: ...

    @registry.subscribe(group="email")
    async def on_paid(event: OrderPaid) -> None: ...

    assert [s.handler for s in registry] == [on_created, on_paid]


def test_different_groups_same_event_type_is_fine() -> None:
    """Several groups may take the same event type (pub/sub)."""
    registry = Registry()

    @registry.subscribe(group="email")
    async def email(event: OrderCreated) -> None: ...

    @registry.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None: ...

    assert [s.group for s in registry] == ["email", "stock"]


def test_registry_include_detects_duplicates_across_registries() -> None:
    """Registry.include raises DuplicateSubscriberError when the registries clash."""
    orders, billing = Registry(), Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @billing.subscribe(group="email")
    async def invoice(event: OrderCreated) -> None: ...

    with pytest.raises(DuplicateSubscriberError):
        orders.include(billing)


def test_failed_registry_include_leaves_the_registry_unchanged() -> None:
    """A clash in Registry.include adds none of the other registry's subscribers."""
    orders, billing = Registry(), Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @billing.subscribe(group="email")
    async def receipt(event: OrderPaid) -> None: ...

    @billing.subscribe(group="email")
    async def invoice(event: OrderCreated) -> None: ...

    with pytest.raises(DuplicateSubscriberError):
        orders.include(billing)
    assert [s.handler for s in orders] == [confirm]


def test_registry_include_adds_the_other_subscribers() -> None:
    """Registry.include composes registries without clashes into one."""
    orders, billing = Registry(), Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @billing.subscribe(group="email")
    async def receipt(event: OrderPaid) -> None: ...

    orders.include(billing)

    assert [s.handler for s in orders] == [confirm, receipt]


def test_bus_is_composed_outside_an_event_loop() -> None:
    """EventBus() and include() work at import time, before any event loop runs."""
    orders = Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    bus = EventBus()
    bus.include(orders)

    assert [s.handler for s in bus.subscribers] == [confirm]


def test_bus_include_detects_duplicates_across_registries() -> None:
    """EventBus.include raises DuplicateSubscriberError and keeps its subscribers."""
    orders, billing = Registry(), Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @billing.subscribe(group="email")
    async def receipt(event: OrderPaid) -> None: ...

    @billing.subscribe(group="email")
    async def invoice(event: OrderCreated) -> None: ...

    bus = EventBus()
    bus.include(orders)

    with pytest.raises(DuplicateSubscriberError):
        bus.include(billing)
    assert [s.handler for s in bus.subscribers] == [confirm]


def test_bus_subscribe_detects_duplicates_with_included_registries() -> None:
    """@bus.subscribe clashes with an included registry like include does."""
    orders = Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    bus = EventBus()
    bus.include(orders)

    async def again(event: OrderCreated) -> None: ...

    with pytest.raises(DuplicateSubscriberError):
        bus.subscribe(group="email")(again)


def test_including_the_same_registry_twice_is_a_no_op() -> None:
    """Including one registry twice into a bus adds its subscribers once, without error."""
    orders = Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    bus = EventBus()
    bus.include(orders)

    bus.include(orders)

    assert [s.handler for s in bus.subscribers] == [confirm]


def test_one_registry_may_be_included_into_several_buses() -> None:
    """A registry is plain data: two buses can include it."""
    orders = Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    first, second = EventBus(), EventBus()
    first.include(orders)
    second.include(orders)

    assert [s.handler for s in first.subscribers] == [confirm]
    assert [s.handler for s in second.subscribers] == [confirm]


def test_two_event_classes_with_one_wire_name_in_one_bus_are_refused() -> None:
    """Two Event classes with the same wire name cannot both be included into a bus."""
    orders, legacy = Registry(), Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @legacy.subscribe(group="legacy")
    async def legacy_confirm(event: OrderCreatedElsewhere) -> None: ...

    bus = EventBus()
    bus.include(orders)

    with pytest.raises(ConfigurationError, match="share the name 'OrderCreated'"):
        bus.include(legacy)
    assert [s.handler for s in bus.subscribers] == [confirm]


def test_two_event_classes_with_one_wire_name_in_one_registry_are_refused_by_the_bus() -> None:
    """A registry holding both classes of one wire name fails when included into a bus."""
    registry = Registry()

    @registry.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    @registry.subscribe(group="legacy")
    async def legacy_confirm(event: OrderCreatedElsewhere) -> None: ...

    with pytest.raises(ConfigurationError, match="OrderCreated"):
        EventBus().include(registry)


# -- bus state ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_include_after_the_bus_started_raises_bus_state_error() -> None:
    """EventBus.include inside `async with bus:` raises BusStateError."""
    orders = Registry()

    @orders.subscribe(group="email")
    async def confirm(event: OrderCreated) -> None: ...

    async with EventBus() as bus:
        with pytest.raises(BusStateError):
            bus.include(orders)
        assert bus.subscribers == []


@pytest.mark.anyio
async def test_subscribe_after_the_bus_started_raises_bus_state_error() -> None:
    """@bus.subscribe inside `async with bus:` raises BusStateError."""
    async with EventBus() as bus:

        async def late(event: OrderCreated) -> None: ...

        with pytest.raises(BusStateError):
            bus.subscribe()(late)


@pytest.mark.anyio
async def test_include_after_the_bus_closed_raises_bus_state_error() -> None:
    """A closed bus refuses include() too."""
    bus = EventBus()
    async with bus:
        pass

    with pytest.raises(BusStateError):
        bus.include(Registry())


def test_an_unresolvable_annotation_names_the_missing_name() -> None:
    """A string annotation naming nothing in the handler's module says which name."""
    registry = Registry()

    async def handle(event: "NotDefinedAnywhere") -> None:  # type: ignore[name-defined]  # noqa: F821 - the mistake under test
        pass

    with pytest.raises(ConfigurationError, match="names 'NotDefinedAnywhere', which is not"):
        registry.subscribe(group="g")(handle)
