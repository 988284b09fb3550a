"""A worker application for the subprocess tests (`python -m eventbus worker ...`).

Configured through the environment: ``EVENTBUS_TEST_REDIS_URL``, ``EVENTBUS_TEST_PREFIX``,
``EVENTBUS_TEST_LEDGER`` (a file that gets one line per handled event, written with
O_APPEND so that it survives ``kill -9``) and ``EVENTBUS_TEST_CLAIM_TIMEOUT``.

What the handler does depends on the order id: ``crash-*`` kills the process
(``os._exit``) before the handler finishes, ``slow-*`` takes ``EVENTBUS_TEST_SLOW``
seconds (default 2), ``hang-*`` never finishes (the subscriber timeout cuts it), anything
else is handled at once.
"""

from __future__ import annotations

import os

import anyio

from eventbus import EventBus, RetryPolicy
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated


def _ledger(line: str) -> None:
    fd = os.open(os.environ["EVENTBUS_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def make_bus() -> EventBus:
    """The bus of one worker process."""
    transport = RedisTransport(
        os.environ["EVENTBUS_TEST_REDIS_URL"],
        prefix=os.environ.get("EVENTBUS_TEST_PREFIX", "eventbus"),
        claim_timeout=float(os.environ.get("EVENTBUS_TEST_CLAIM_TIMEOUT", "2")),
        block=0.2,
        delivery_limit=3,
    )
    grace = float(os.environ.get("EVENTBUS_TEST_GRACE", "5"))
    bus = EventBus(transport=transport, shutdown_grace=grace)

    @bus.subscribe(
        group="ledger",
        concurrency=int(os.environ.get("EVENTBUS_TEST_CONCURRENCY", "4")),
        timeout=float(os.environ.get("EVENTBUS_TEST_HANDLER_TIMEOUT", "1")),
        retry=RetryPolicy(max_attempts=2, initial_delay=0.05),
    )
    async def record(event: OrderCreated) -> None:
        order = event.order_id
        _ledger(f"start {order} {os.getpid()}")
        if order.startswith("crash"):
            os._exit(17)
        if order.startswith("slow"):
            await anyio.sleep(float(os.environ.get("EVENTBUS_TEST_SLOW", "2")))
        if order.startswith("hang"):
            await anyio.sleep_forever()
        _ledger(f"done {order} {os.getpid()}")

    return bus
