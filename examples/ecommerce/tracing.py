"""``TraceRecorder``: the demo's OpenTelemetry traces, kept in memory and printed as a tree
(``python -m examples.ecommerce demo --trace``)."""

from typing import TextIO

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus.opentelemetry import OpenTelemetryMiddleware

__all__ = ["TraceRecorder"]


class TraceRecorder:
    """An OpenTelemetry middleware whose spans stay in memory, for one trace's printout."""

    def __init__(self) -> None:
        self._spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self._spans))
        self.middleware = OpenTelemetryMiddleware(tracer_provider=provider)

    def print_first(self, event_name: str, out: TextIO) -> None:
        """Print the trace of the first ``event_name`` published, as a tree of spans."""
        spans = self._spans.get_finished_spans()
        roots = [s for s in spans if s.name == f"send {event_name}" and s.parent is None]
        if not roots:
            print(f"no trace of {event_name}", file=out)
            return
        root = min(roots, key=lambda s: s.start_time or 0)
        assert root.context is not None
        trace = [s for s in spans if s.context and s.context.trace_id == root.context.trace_id]
        print(f"\nThe trace of the first {event_name} ({len(trace)} spans):", file=out)
        _print_tree(root, trace, 0, out)


def _print_tree(span: ReadableSpan, trace: list[ReadableSpan], depth: int, out: TextIO) -> None:
    attributes = span.attributes or {}
    group = attributes.get("messaging.consumer.group.name")
    attempt = attributes.get("eventbus.attempt")
    where = f"  group {group}, attempt {attempt}" if group else ""
    took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    failed = "  FAILED" if span.status.status_code.name == "ERROR" else ""
    print(f"  {'   ' * depth}{span.name}{where}  {took:.1f} ms{failed}", file=out)
    assert span.context is not None
    children = [s for s in trace if s.parent and s.parent.span_id == span.context.span_id]
    for child in sorted(children, key=lambda s: s.start_time or 0):
        _print_tree(child, trace, depth + 1, out)
