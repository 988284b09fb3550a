"""OpenTelemetry: spans per publish and per handler attempt, trace context in the
envelope's headers, and the messaging metrics, read with the SDK's in-memory readers."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventbus import Context, EventBus, InMemoryTransport, RetryPolicy
from eventbus.opentelemetry import OpenTelemetryMiddleware
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid
from tests.redis_server import RedisServer
from tests.test_worker_cli import Process
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


class Telemetry:
    """An SDK tracer and meter provider with in-memory readers."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def middleware(self) -> OpenTelemetryMiddleware:
        """The middleware on these providers."""
        return OpenTelemetryMiddleware(self.tracer_provider, self.meter_provider)

    def points(self, name: str) -> list[Any]:
        """The data points of the metric ``name``."""
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Telemetry:
    """Fresh providers for one test."""
    return Telemetry()


@pytest.mark.parametrize("serialize", [False, True], ids=["by-reference", "bytes"])
async def test_a_publish_and_its_handling_are_one_trace(
    telemetry: Telemetry, serialize: bool
) -> None:
    """A PRODUCER span per publish, a CONSUMER child per attempt, with the attributes."""
    bus = EventBus(
        transport=InMemoryTransport(serialize=serialize), middleware=[telemetry.middleware()]
    )

    @bus.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    async with bus:
        envelope = await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    consumer, producer = sorted(telemetry.spans.get_finished_spans(), key=lambda s: s.name)
    assert (consumer.name, producer.name) == ("process OrderCreated", "send OrderCreated")
    assert (producer.kind, consumer.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes is not None
    assert dict(consumer.attributes) == {
        "messaging.system": "eventbus",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "OrderCreated",
        "messaging.message.id": envelope.id,
        "messaging.message.conversation_id": envelope.correlation_id,
        "messaging.consumer.group.name": "email",
        "eventbus.attempt": 1,
    }
    assert "traceparent" in envelope.headers


async def test_each_attempt_has_its_span_and_a_failure_its_error_type(
    telemetry: Telemetry,
) -> None:
    """Two attempts, the first failing: two CONSUMER spans, the first with ERROR."""
    bus = EventBus(middleware=[telemetry.middleware()])

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def send(event: OrderCreated, context: Context) -> None:
        if context.attempt == 1:
            raise ConnectionError("smtp down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    process = [s for s in telemetry.spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert [s.attributes["eventbus.attempt"] for s in process if s.attributes] == [1, 2]
    assert [s.status.status_code for s in process] == [StatusCode.ERROR, StatusCode.UNSET]
    assert process[0].attributes is not None
    assert process[0].attributes["error.type"] == "builtins.ConnectionError"


async def test_an_event_published_by_a_handler_continues_the_trace(telemetry: Telemetry) -> None:
    """The follow-up's send span is a child of the handler's process span."""
    bus = EventBus(middleware=[telemetry.middleware()])

    @bus.subscribe(group="billing")
    async def bill(event: OrderCreated, context: Context) -> None:
        await context.publish(OrderPaid(order_id=event.order_id))

    @bus.subscribe(group="shipping")
    async def ship(event: OrderPaid) -> None:
        pass

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    spans = telemetry.spans.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    by_name = {s.name: s for s in spans}
    follow_up = by_name["send OrderPaid"]
    assert follow_up.parent is not None
    assert follow_up.parent.span_id == by_name["process OrderCreated"].context.span_id


async def test_the_messaging_metrics_count_and_time(telemetry: Telemetry) -> None:
    """sent and consumed counters, and one duration point per attempt."""
    bus = EventBus(middleware=[telemetry.middleware()])

    @bus.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    async with bus:
        for i in range(3):
            await bus.publish(OrderCreated(order_id=f"o-{i}"))
        await drain(bus)
    assert sum(p.value for p in telemetry.points("messaging.client.sent.messages")) == 3
    assert sum(p.value for p in telemetry.points("messaging.client.consumed.messages")) == 3
    (duration,) = telemetry.points("messaging.process.duration")
    assert duration.count == 3
    assert duration.attributes["messaging.consumer.group.name"] == "email"


def test_import_eventbus_does_not_import_opentelemetry() -> None:
    """Without the middleware, nothing of OpenTelemetry is imported."""
    code = "import sys, eventbus; assert 'opentelemetry' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_one_trace_across_two_processes_on_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """Published here, handled by a worker process: its process span is a child of this
    process's send span, in the same trace."""
    telemetry = Telemetry()
    spans_file = tmp_path / "worker-spans"
    env = {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": f"otel{secrets.token_hex(3)}",
        "EVENTBUS_TEST_LEDGER": str(tmp_path / "ledger"),
        "EVENTBUS_TEST_SPANS": str(spans_file),
    }
    worker = Process(tmp_path, env, "tests.worker_app:traced")
    transport = RedisTransport(redis_server.url, prefix=env["EVENTBUS_TEST_PREFIX"])

    async def publish() -> None:
        await wait_for(lambda: worker.ready(), 20, "the worker")
        async with EventBus(transport=transport, middleware=[telemetry.middleware()]) as bus:
            await bus.publish(OrderCreated(order_id="o-1"))
        await wait_for(lambda: spans_file.exists() and "process" in spans_file.read_text(),
                       20, "the worker's span")  # fmt: skip

    try:
        anyio.run(publish)
    finally:
        worker.stop()
    (send,) = telemetry.spans.get_finished_spans()
    assert send.context is not None
    trace_id, parent, *name = spans_file.read_text().splitlines()[0].split()
    assert name == ["process", "OrderCreated"]
    assert trace_id == f"{send.context.trace_id:032x}"
    assert parent == f"{send.context.span_id:016x}"


async def test_the_group_gauges_report_what_refresh_read(telemetry: Telemetry) -> None:
    """A group nobody consumes for: its lag gauge reads 2 after a refresh."""
    middleware = telemetry.middleware()
    bus = EventBus(middleware=[middleware], consume=False)

    @bus.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    async with bus:
        await bus.publish_many([OrderCreated(order_id="o-1"), OrderCreated(order_id="o-2")])
        await middleware.refresh(bus)
    (lag,) = telemetry.points("eventbus.group.lag")
    assert lag.value == 2
    assert lag.attributes["messaging.consumer.group.name"] == "email"
    assert telemetry.points("eventbus.group.oldest_pending_age") == []  # nothing in flight


async def test_observe_keeps_the_gauges_current(telemetry: Telemetry) -> None:
    """observe(bus, every) in a task of the bus refreshes the gauges until cancelled."""
    middleware = telemetry.middleware()
    bus = EventBus(middleware=[middleware], consume=False)

    @bus.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    async with bus, anyio.create_task_group() as tasks:
        tasks.start_soon(middleware.observe, bus, 0.01)
        await bus.publish(OrderCreated(order_id="o-1"))

        def lag_is_one() -> bool:
            return [p.value for p in telemetry.points("eventbus.group.lag")] == [1]

        await wait_for(lag_is_one, 5, "the gauge to read 1")
        tasks.cancel_scope.cancel()
