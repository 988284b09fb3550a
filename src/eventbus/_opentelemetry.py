"""``OpenTelemetryMiddleware``: spans and metrics per publish and handler attempt (see
``eventbus.opentelemetry``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._bus import EventBus
from ._context import Context
from ._envelope import Envelope
from ._errors import EventBusError
from ._event import Event
from ._middleware import Middleware, Next
from .transports._contract import GroupStats

__all__ = ["OpenTelemetryMiddleware"]

_SYSTEM = "eventbus"


class OpenTelemetryMiddleware(Middleware):
    """Traces and counts every publish and handler attempt::

        bus = EventBus(middleware=[OpenTelemetryMiddleware()])

    - ``tracer_provider`` / ``meter_provider``: default the global ones.
    - Span attributes: ``messaging.system`` (``eventbus``), ``messaging.operation.type``
      and ``messaging.operation.name`` (``send`` / ``process``),
      ``messaging.destination.name`` (the event name), ``messaging.consumer.group.name``,
      ``messaging.message.id``, ``messaging.message.conversation_id`` (the correlation
      id) and ``eventbus.attempt``; a failed attempt records the exception, sets the
      status to ERROR and ``error.type`` to the exception's qualified type.
    - Per-group gauges ``eventbus.group.lag``, ``.pending``, ``.oldest_pending_age``,
      ``.scheduled`` and ``.dead_letters`` report what ``refresh(bus)`` last read
      (``observe(bus, every=15)`` refreshes them in a task of the running bus).
    - No payload is ever recorded: events carry personal data.
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._tracer = trace.get_tracer("eventbus", tracer_provider=tracer_provider)
        meter = metrics.get_meter("eventbus", meter_provider=meter_provider)
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="events published"
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="handler attempts started",
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="handler attempt duration"
        )
        self._groups: list[GroupStats] = []
        for name, unit, read in _GAUGES:
            meter.create_observable_gauge(
                name, callbacks=[self._gauge(read)], unit=unit, description=name
            )

    async def refresh(self, bus: EventBus) -> None:
        """Read every group's state (``bus.inspect()``) for the per-group gauges."""
        self._groups = list(await bus.inspect())

    async def observe(self, bus: EventBus, every: float = 15.0) -> None:
        """``refresh()`` every ``every`` seconds until cancelled; run it in a task of the
        running bus. A failed read is skipped (the gauges keep the last values)."""
        while True:
            with contextlib.suppress(EventBusError):
                await self.refresh(bus)
            await anyio.sleep(every)

    def _gauge(self, read: Callable[[GroupStats], float | None]) -> Callable[..., Any]:
        def observe(options: Any) -> list[Observation]:
            out = []
            for stats in self._groups:
                value = read(stats)
                if value is not None:
                    attributes = {
                        "messaging.system": _SYSTEM,
                        "messaging.destination.name": stats.topic,
                        "messaging.consumer.group.name": stats.group,
                    }
                    out.append(Observation(value, attributes))
            return out

        return observe

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        """A PRODUCER span around the publish; its context goes out in the headers."""
        metric_attributes = _metric_attributes(envelope, "send")
        attributes = _span_attributes(envelope, metric_attributes)
        with self._tracer.start_as_current_span(
            f"send {envelope.name}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            try:
                await call_next(headers=carrier)
            except Exception as exc:
                _failed(span, exc)
                raise
        self._sent.add(1, metric_attributes)

    async def on_handle(self, event: Event, context: Context, call_next: Next) -> None:
        """A CONSUMER span around one attempt, a child of the publisher's context."""
        envelope = context.envelope
        parent = propagate.extract(dict(envelope.headers))
        metric_attributes = {
            **_metric_attributes(envelope, "process"),
            "messaging.consumer.group.name": context.group,
        }
        attributes = {
            **_span_attributes(envelope, metric_attributes),
            "eventbus.attempt": context.attempt,
        }
        self._consumed.add(1, metric_attributes)
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"process {envelope.name}", context=parent, kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:  # fmt: skip
            try:
                await call_next()
            except Exception as exc:
                _failed(span, exc)
                metric_attributes["error.type"] = _error_type(exc)
                raise
            finally:
                self._duration.record(time.perf_counter() - started, metric_attributes)


_GAUGES: list[tuple[str, str, Callable[[GroupStats], float | None]]] = [
    ("eventbus.group.lag", "{message}", lambda s: s.waiting),
    ("eventbus.group.pending", "{message}", lambda s: s.in_flight),
    ("eventbus.group.oldest_pending_age", "s", lambda s: s.oldest_pending_age),
    ("eventbus.group.scheduled", "{message}", lambda s: s.scheduled),
    ("eventbus.group.dead_letters", "{message}", lambda s: s.dead_letters),
]


def _span_attributes(envelope: Envelope, metric_attributes: dict[str, Any]) -> dict[str, Any]:
    """A span's attributes: the metric attributes and the message's ids."""
    return {
        **metric_attributes,
        "messaging.message.id": envelope.id,
        "messaging.message.conversation_id": envelope.correlation_id,
    }


def _metric_attributes(envelope: Envelope, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": envelope.name,
    }


def _failed(span: Any, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute("error.type", _error_type(exc))


def _error_type(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"
