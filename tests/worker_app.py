"""A worker application for the subprocess tests (`python -m eventbus worker ...`).

Configured through the environment:

- ``EVENTBUS_TEST_REDIS_URL``, ``EVENTBUS_TEST_PREFIX``, ``EVENTBUS_TEST_CLUSTER``
  (``1``: the URL names a node of a Redis Cluster);
- ``EVENTBUS_TEST_LEDGER``: a file that gets one line per handler start and end
  (``start ORDER PID`` / ``done ORDER PID``), written with O_APPEND so that it survives
  ``kill -9``;
- transport options ``EVENTBUS_TEST_CLAIM_TIMEOUT`` (default 2), ``EVENTBUS_TEST_PREFETCH``
  (16), ``EVENTBUS_TEST_DELIVERY_LIMIT`` (3), ``EVENTBUS_TEST_BLOCK`` (0.2);
- bus options ``EVENTBUS_TEST_GRACE`` (shutdown grace, default 5) and
  ``EVENTBUS_TEST_MAX_PAYLOAD`` (max_payload_bytes, default 1 MiB);
- subscriber options ``EVENTBUS_TEST_CONCURRENCY`` (4), ``EVENTBUS_TEST_HANDLER_TIMEOUT``
  (1), ``EVENTBUS_TEST_MAX_ATTEMPTS`` (2) and ``EVENTBUS_TEST_IDEMPOTENT`` (``1``:
  ``idempotent=True``).

What the handler does depends on the order id: ``crash-*`` kills the process
(``os._exit``) before the handler finishes, ``slow-*`` takes ``EVENTBUS_TEST_SLOW``
seconds (default 2), ``hang-*`` never finishes (the subscriber timeout cuts it),
``fail-*`` raises while the file ``EVENTBUS_TEST_FAIL`` names exists, anything else is
handled at once.

``lifespan`` is the same bus inside a context that writes ``opened`` and ``closed`` lines
to the ledger, as an application would open and close its database pool.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from eventbus import EventBus, Middleware, RetryPolicy
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated


def _ledger(line: str) -> None:
    fd = os.open(os.environ["EVENTBUS_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def _broken() -> bool:
    """Whether the file ``EVENTBUS_TEST_FAIL`` names exists (the outside cause)."""
    return os.path.exists(os.environ.get("EVENTBUS_TEST_FAIL", "-"))


def _number(name: str, default: str) -> float:
    return float(os.environ.get(f"EVENTBUS_TEST_{name}", default))


def make_bus(middleware: Sequence[Middleware] = ()) -> EventBus:
    """The bus of one worker process."""
    transport = RedisTransport(
        os.environ["EVENTBUS_TEST_REDIS_URL"],
        prefix=os.environ.get("EVENTBUS_TEST_PREFIX", "eventbus"),
        claim_timeout=_number("CLAIM_TIMEOUT", "2"),
        block=_number("BLOCK", "0.2"),
        prefetch=int(_number("PREFETCH", "16")),
        delivery_limit=int(_number("DELIVERY_LIMIT", "3")),
        cluster=os.environ.get("EVENTBUS_TEST_CLUSTER") == "1",
        publish_retry_for=15.0,
    )
    bus = EventBus(
        transport=transport,
        middleware=middleware,
        newer_versions=RetryPolicy.none(),  # a newer version goes to the dead letters at once
        shutdown_grace=_number("GRACE", "5"),
        max_payload_bytes=int(_number("MAX_PAYLOAD", str(1024 * 1024))),
    )

    @bus.subscribe(
        group="ledger",
        concurrency=int(_number("CONCURRENCY", "4")),
        timeout=_number("HANDLER_TIMEOUT", "1"),
        retry=RetryPolicy(max_attempts=int(_number("MAX_ATTEMPTS", "2")), initial_delay=0.05),
        idempotent=os.environ.get("EVENTBUS_TEST_IDEMPOTENT") == "1",
    )
    async def record(event: OrderCreated) -> None:
        order = event.order_id
        _ledger(f"start {order} {os.getpid()}")
        if order.startswith("crash"):
            os._exit(17)
        if order.startswith("slow"):
            await anyio.sleep(_number("SLOW", "2"))
        if order.startswith("hang"):
            await anyio.sleep_forever()
        if order.startswith("fail") and _broken():
            raise ConnectionError("the mail server is down")
        _ledger(f"done {order} {os.getpid()}")

    return bus


@asynccontextmanager
async def lifespan() -> AsyncIterator[EventBus]:
    """``make_bus()`` with a resource around it (the ledger's ``opened``/``closed``)."""
    _ledger(f"opened - {os.getpid()}")
    try:
        yield make_bus()
    finally:
        _ledger(f"closed - {os.getpid()}")


@asynccontextmanager
async def not_a_bus() -> AsyncIterator[str]:
    """A context that yields something else: the worker refuses it."""
    yield "bus"


def two_groups() -> EventBus:
    """A bus with the groups ``email`` and ``stock``; each writes ``GROUP ORDER PID``."""
    bus = EventBus(
        transport=RedisTransport(
            os.environ["EVENTBUS_TEST_REDIS_URL"],
            prefix=os.environ.get("EVENTBUS_TEST_PREFIX", "eventbus"),
            block=0.2,
        )
    )

    @bus.subscribe(group="email")
    async def email(event: OrderCreated) -> None:
        _ledger(f"email {event.order_id} {os.getpid()}")

    @bus.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None:
        _ledger(f"stock {event.order_id} {os.getpid()}")

    return bus


def in_memory() -> EventBus:
    """A bus on the in-memory transport, which a worker process refuses."""
    bus = EventBus()

    @bus.subscribe(group="email")
    async def email(event: OrderCreated) -> None:
        pass

    return bus


def traced() -> EventBus:
    """``make_bus()`` traced with OpenTelemetry; each finished span is appended to the
    file ``EVENTBUS_TEST_SPANS`` as ``trace_id parent_span_id name``."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from eventbus.opentelemetry import OpenTelemetryMiddleware

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(os.environ["EVENTBUS_TEST_SPANS"], "a") as out:
                for span in spans:
                    assert span.context is not None
                    parent = f"{span.parent.span_id:016x}" if span.parent else "-"
                    out.write(f"{span.context.trace_id:032x} {parent} {span.name}\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    return make_bus(middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])
