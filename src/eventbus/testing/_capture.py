"""``capture``: the events a block of code published."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from eventbus import Envelope, Event, EventBus, Observer

__all__ = ["Captured", "capture"]

E = TypeVar("E", bound=Event)


class Captured:
    """What ``capture`` recorded: events and their envelopes, in publish order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.envelopes: list[Envelope] = []

    def of_type(self, event_type: type[E]) -> list[E]:
        """The captured events of one type (subclasses included)."""
        return [e for e in self.events if isinstance(e, event_type)]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)


class _Recorder(Observer):
    def __init__(self, into: Captured) -> None:
        self._into = into

    def on_published(self, event: Event, envelope: Envelope) -> None:
        self._into.events.append(event)
        self._into.envelopes.append(envelope)


@contextmanager
def capture(bus: EventBus) -> Iterator[Captured]:
    """Record every event that ``bus`` accepts while the block runs::

        with capture(bus) as published:
            await create_order(...)
        assert published.of_type(OrderCreated)[0].order_id == "o-1"

    Events still go to their subscribers. Only accepted events are recorded: a publish
    that raised before the transport took the event is not. It is an ``Observer`` of
    the bus: the code under test runs exactly as in production.
    """
    captured = Captured()
    recorder = _Recorder(captured)
    bus.add_observer(recorder)
    try:
        yield captured
    finally:
        bus.remove_observer(recorder)
