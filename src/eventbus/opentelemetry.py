"""Tracing and metrics with OpenTelemetry: ``OpenTelemetryMiddleware`` (the
``opentelemetry`` extra: ``pip install "eventbus[opentelemetry]"``, opentelemetry-api).

Spans follow the OpenTelemetry messaging conventions: a PRODUCER span per publish
(``send <event>``), whose W3C trace context travels in the envelope's headers, and a
CONSUMER span per handler attempt (``process <event>``), a child of the producer's
context; events a handler publishes continue the trace. Metrics:
``messaging.client.sent.messages``, ``messaging.client.consumed.messages`` and
``messaging.process.duration`` (seconds). Nothing of OpenTelemetry is imported by
``import eventbus``.
"""

try:
    import opentelemetry.trace  # noqa: F401 - the extra is installed, or a clear error
except ImportError as exc:
    raise ImportError(
        "eventbus.opentelemetry needs the opentelemetry extra: "
        'pip install "eventbus[opentelemetry]"'
    ) from exc

from ._opentelemetry import OpenTelemetryMiddleware

__all__ = ["OpenTelemetryMiddleware"]
