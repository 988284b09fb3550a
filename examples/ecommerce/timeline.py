"""``Timeline``: a middleware that prints one line per publish and per handler attempt.

::

      ms  event            correlation    group      try  outcome
    12.4  OrderCreated     o-3f9a1c2e5b   orders       -  published
    12.9  OrderCreated     o-3f9a1c2e5b   email        1  failed (MailServerError), will retry

The correlation id follows one flow (an order, a user) across events and groups.
Colour is used only when asked for (the CLI asks when stdout is a terminal).
"""

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TextIO

from eventbus import Context, Envelope, Event, Middleware, Subscriber

__all__ = ["Timeline"]

Next = Callable[[], Awaitable[None]]

COLUMNS = (("ms", 8), ("event", 15), ("correlation", 13), ("group", 9), ("try", 3))
STYLES = {
    "time": "2",
    "heading": "1",
    "note": "35",
    "published": "36",
    "handled": "32",
    "retry": "33",
    "dead": "31;1",
}


class Timeline(Middleware):
    """Prints the flow of events as it happens, and counts what it saw in ``counts``.

    Call ``watch(bus.subscribers)`` once the bus is composed, so that a failed attempt
    is shown as retried or given up exactly as the subscriber's retry policy decides.
    """

    def __init__(self, out: TextIO, *, colour: bool = False, start: float | None = None) -> None:
        self.out = out
        self.colour = colour
        self.start = time.perf_counter() if start is None else start
        self.counts: Counter[str] = Counter()
        self._subscribers: dict[tuple[str, type[Event]], Subscriber] = {}

    def watch(self, subscribers: Iterable[Subscriber]) -> None:
        """Learn the subscribers' groups, modes and retry policies."""
        for sub in subscribers:
            for event_type in sub.event_types:
                self._subscribers[(sub.group, event_type)] = sub

    def header(self) -> None:
        """Print the column titles."""
        titles = "  ".join(f"{t:>{w}}" if t in ("ms", "try") else f"{t:<{w}}" for t, w in COLUMNS)
        rules = "  ".join("-" * w for _, w in COLUMNS)
        self._print(f"{titles}  outcome")
        self._print(f"{rules}  {'-' * 40}")

    def note(self, text: str, *, heading: bool = False) -> None:
        """Print a line of the story: a heading (what happens next) or what the API said."""
        style = "heading" if heading else "note"
        self._print(f"{self._style('time', self._ms())}  {self._style(style, text)}")

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        """One line when an event is published (before its immediate subscribers run)."""
        self.counts["published"] += 1
        lane = ", urgent" if type(event).event_urgent else ""
        source = envelope.headers.get("source", "?")
        self._row(envelope, source, "-", "published", f"published{lane}")
        await call_next()

    async def on_handle(self, event: Event, context: Context, call_next: Next) -> None:
        """One line per handler attempt: handled, failed and retried, or given up."""
        sub = self._subscribers.get((context.group, type(event)))
        immediate = sub is not None and sub.mode == "immediate"
        try:
            await call_next()
        except Exception as exc:
            self._failed(context, sub, exc, immediate)
            raise
        self.counts["handled"] += 1
        where = (
            " inside publish()" if immediate else (" (urgent lane)" if event.event_urgent else "")
        )
        self._row(
            context.envelope, context.group, str(context.attempt), "handled", f"handled{where}"
        )

    def _failed(
        self, context: Context, sub: Subscriber | None, exc: Exception, immediate: bool
    ) -> None:
        error = type(exc).__name__
        if sub is not None and sub.retry.should_retry(exc, context.attempt):
            self.counts["retried"] += 1
            outcome, style = f"failed ({error}), will retry", "retry"
        elif immediate:
            self.counts["failed"] += 1
            outcome, style = f"failed ({error}): publish() raises", "dead"
        else:
            self.counts["dead letters"] += 1
            outcome, style = f"dead letter after {context.attempt} attempt(s) ({error})", "dead"
        self._row(context.envelope, context.group, str(context.attempt), style, outcome)

    def _row(self, envelope: Envelope, group: str, attempt: str, style: str, outcome: str) -> None:
        cells = (envelope.name, envelope.correlation_id[:13], group, attempt)
        widths = [w for _, w in COLUMNS[1:]]
        text = "  ".join(
            f"{c:>{w}}" if i == 3 else f"{c:<{w}.{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        self._print(f"{self._style('time', self._ms())}  {text}  {self._style(style, outcome)}")

    def _ms(self) -> str:
        return f"{(time.perf_counter() - self.start) * 1000:8.1f}"

    def _style(self, name: str, text: str) -> str:
        return f"\033[{STYLES[name]}m{text}\033[0m" if self.colour else text

    def _print(self, line: str) -> None:
        print(line.rstrip(), file=self.out, flush=True)
