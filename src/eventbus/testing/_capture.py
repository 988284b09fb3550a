"""``capture``: the events a block of code published."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from eventbus import Envelope, Event, EventBus, Observer

__all__ = ["Captured", "capture"]

E = TypeVar("E", bound=Event)


class Captured:
    """What ``capture`` recorded: events and their envelopes, in publish order, and
    ``wire_problems``: how events would not survive the wire (empty when all do)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.envelopes: list[Envelope] = []
        self.wire_problems: list[str] = []

    def of_type(self, event_type: type[E]) -> list[E]:
        """The captured events of one type (subclasses included)."""
        return [e for e in self.events if isinstance(e, event_type)]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)


class _Recorder(Observer):
    def __init__(self, into: Captured, wire: bool) -> None:
        self._into = into
        self._wire = wire

    def on_published(self, event: Event, envelope: Envelope) -> None:
        self._into.events.append(event)
        self._into.envelopes.append(envelope)
        if self._wire:
            problem = wire_problem(event)
            if problem is not None:
                self._into.wire_problems.append(problem)


@contextmanager
def capture(bus: EventBus, *, wire: bool = True) -> Iterator[Captured]:
    """Record every event that ``bus`` accepts while the block runs::

        with capture(bus) as published:
            await create_order(...)
        assert published.of_type(OrderCreated)[0].order_id == "o-1"

    Events still go to their subscribers. Only accepted events are recorded: a publish
    that raised before the transport took the event is not. It is an ``Observer`` of
    the bus: the code under test runs exactly as in production.

    ``wire`` (default True): each event is also turned into JSON and back, as on Redis;
    when one cannot be encoded, or comes back different (a ``date`` inside a
    ``dict[str, Any]`` becomes a ``str``), the block ends with an ``AssertionError``
    that names the event and the field, so that a test in memory fails where the wire
    would change or refuse the event. ``wire=False`` only records.
    """
    captured = Captured()
    recorder = _Recorder(captured, wire)
    bus.add_observer(recorder)
    try:
        yield captured
    finally:
        bus.remove_observer(recorder)
    if captured.wire_problems:
        raise AssertionError(
            "events that would not survive the wire (JSON, as on Redis):\n- "
            + "\n- ".join(captured.wire_problems)
        )


def wire_problem(event: Event) -> str | None:
    """How ``event`` changes or fails on its way through JSON; None when it survives.
    Names the field and the types, never a value."""
    name, event_type = event.event_name, type(event)
    try:
        body = event.__pydantic_serializer__.to_json(event, by_alias=True)
    except ValueError as exc:  # pydantic's PydanticSerializationError
        return f"{name} cannot be encoded: {type(exc).__name__}"
    try:
        back = event_type.__pydantic_validator__.validate_json(body)
    except ValueError as exc:  # a ValidationError: the JSON does not validate
        return f"{name} does not validate after the wire: {type(exc).__name__}"
    if back == event:
        return None
    for field in event_type.model_fields:
        before, after = getattr(event, field), getattr(back, field)
        if before != after:
            kinds = f"{type(before).__name__} -> {type(after).__name__}"
            if type(before) is type(after):
                kinds = f"{type(before).__name__} with other contents"
            return f"{name}.{field} changes on the wire ({kinds})"
    return f"{name} changes on the wire"
