"""``Observer``: a hook told what the bus published and what became of each delivery."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

from ._envelope import Envelope
from ._errors import ConfigurationError
from ._event import Event

__all__ = ["Action", "DeadLetterErrors", "Observer", "Observers", "Outcome"]

logger = logging.getLogger("eventbus")

Action = Literal["ack", "retry", "dead-letter", "raise", "duplicate"]
_SUCCESSES = ("ack", "duplicate")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one handler attempt, or of a message that could not be decoded.

    - ``action``: ``"ack"`` (handled), ``"retry"`` (after ``delay`` seconds),
      ``"dead-letter"`` (with ``reason``), ``"raise"`` (an immediate subscriber gave
      up and its error reaches the publisher as ``ImmediateHandlerError``), or
      ``"duplicate"`` (an idempotent subscriber's group handled this event id already:
      acked without calling the handler).
    - ``group`` / ``handler``: who handled it (``handler`` is None for undecodable input).
    - ``envelope`` / ``event``: None when the message could not be decoded.
    - ``attempt``: the attempt's number; ``error``: its exception, None on ``"ack"``.
    - ``immediate``: whether the subscriber runs inside ``publish()``.
    """

    action: Action
    group: str
    handler: str | None
    envelope: Envelope | None
    event: Event | None
    attempt: int
    error: BaseException | None = None
    delay: float | None = None
    reason: str | None = None
    immediate: bool = False


class Observer:
    """Subclass and override the hooks you need; give instances to
    ``EventBus(observers=[...])`` or ``bus.add_observer()``.

    - ``on_published``: the transport accepted an event (before immediate subscribers).
    - ``on_outcome``: one handler attempt ended (ack, retry, dead letter, or an
      immediate subscriber giving up), or an undecodable message was dead-lettered.
    - ``on_failure``: the same, for failures only (every outcome but ``"ack"`` and
      ``"duplicate"``).

    Hooks are plain functions called in the bus's task: keep them short, never block.
    An exception from a hook is logged and ignored. Once every observer heard of a dead
    letter, the bus keeps its error for ``take_dead_letter_errors()`` without its
    traceback (so that no frame, nor the payload in its locals, is held): read the
    traceback inside the hook, not later. A hook that is not overridden costs
    nothing (``on_failure`` alone adds no work to successful deliveries). Observers see
    events: they must not log payloads, which hold personal data.
    """

    def on_published(self, event: Event, envelope: Envelope) -> None:
        """After the transport accepted ``event``."""

    def on_outcome(self, outcome: Outcome) -> None:
        """After each handler attempt, successful or not."""

    def on_failure(self, outcome: Outcome) -> None:
        """After each failed attempt or undecodable message."""


class Observers:
    """The bus's observers, sorted by the hooks they override (for the hot paths)."""

    __slots__ = ("_added", "_last", "failure", "outcome", "published")

    def __init__(self, last: Observer) -> None:
        self._added: tuple[Observer, ...] = ()
        self._last = last
        """Told after every added observer (it may change what it is told)."""
        self.published: tuple[Observer, ...] = ()
        self.outcome: tuple[Observer, ...] = ()
        self.failure: tuple[Observer, ...] = ()
        self._sort()

    def add(self, observer: Observer) -> None:
        """Add an observer (after the others)."""
        if not isinstance(observer, Observer):
            raise ConfigurationError(f"an observer must be an eventbus.Observer, not {observer!r}")
        self._added = (*self._added, observer)
        self._sort()

    def remove(self, observer: Observer) -> None:
        """Remove an observer (nothing happens when it is not there)."""
        self._added = tuple(o for o in self._added if o is not observer)
        self._sort()

    def _sort(self) -> None:
        every = (*self._added, self._last)
        for name in ("failure", "outcome", "published"):
            setattr(self, name, tuple(o for o in every if _overrides(o, f"on_{name}")))

    def published_event(self, event: Event, envelope: Envelope) -> None:
        """Tell the observers of publishes."""
        for observer in self.published:
            try:
                observer.on_published(event, envelope)
            except Exception:
                logger.exception("observer %r failed in on_published", observer)

    def listening(self, action: Action) -> bool:
        """Whether any observer wants to hear of an outcome with this action."""
        return bool(self.outcome) or (action not in _SUCCESSES and bool(self.failure))

    def ended(self, outcome: Outcome) -> None:
        """Tell the observers of outcomes (and of failures, when it is one)."""
        for observer in self.outcome:
            try:
                observer.on_outcome(outcome)
            except Exception:
                logger.exception("observer %r failed in on_outcome", observer)
        if outcome.action in _SUCCESSES:
            return
        for observer in self.failure:
            try:
                observer.on_failure(outcome)
            except Exception:
                logger.exception("observer %r failed in on_failure", observer)


class DeadLetterErrors(Observer):
    """Keeps the errors of the last 100 dead letters, without their tracebacks (so that
    no frame, and no payload in its locals, is held). Told last: other observers still
    see the traceback."""

    def __init__(self) -> None:
        self._errors: deque[BaseException] = deque(maxlen=100)

    def on_failure(self, outcome: Outcome) -> None:
        """Keep the error of a dead letter."""
        if outcome.action == "dead-letter" and outcome.error is not None:
            self._errors.append(outcome.error.with_traceback(None))

    def take(self) -> list[BaseException]:
        """The kept errors, oldest first; they are forgotten."""
        errors = list(self._errors)
        self._errors.clear()
        return errors


def _overrides(observer: Observer, hook: str) -> bool:
    return getattr(type(observer), hook) is not getattr(Observer, hook)
