"""Start, shutdown with a grace period, backpressure and drain."""

from __future__ import annotations

import anyio
import pytest

from eventbus import ConfigurationError, EventBus, InMemoryTransport, PublishTimeoutError
from eventbus.testing import drain
from tests.events import OrderCreated

pytestmark = pytest.mark.anyio


async def test_in_flight_handler_finishes_within_the_grace_period() -> None:
    """Leaving `async with` lets a running handler finish, and its event is acked."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport, shutdown_grace=5)
    started, finished = anyio.Event(), anyio.Event()
    release = anyio.Event()

    @bus.subscribe()
    async def slow(event: OrderCreated) -> None:
        started.set()
        await release.wait()
        finished.set()

    async with anyio.create_task_group() as tg:
        async with bus:
            await bus.publish(OrderCreated(order_id="o-1"))
            await started.wait()
            tg.start_soon(_set_when_blocked, release)
        assert finished.is_set()
    async with EventBus(transport=transport) as observer:
        await drain(observer, timeout=1)


async def _set_when_blocked(event: anyio.Event) -> None:
    await anyio.wait_all_tasks_blocked()
    event.set()


async def test_handler_past_the_grace_period_is_cancelled_and_redelivered() -> None:
    """A handler still running after the grace is cancelled: not acked, not dead-lettered."""
    transport = InMemoryTransport()
    first = EventBus(transport=transport, shutdown_grace=0.05)
    started = anyio.Event()
    cancelled = False

    @first.subscribe(group="email")
    async def hangs(event: OrderCreated) -> None:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled = True

    async with first:
        await first.publish(OrderCreated(order_id="o-1"))
        await started.wait()
    assert cancelled

    second = EventBus(transport=transport)
    redelivered: list[str] = []

    @second.subscribe(group="email")
    async def works(event: OrderCreated) -> None:
        redelivered.append(event.order_id)

    async with second:
        await drain(second)
        assert await second.dead_letters() == []
    assert redelivered == ["o-1"]


async def test_events_not_started_before_shutdown_wait_for_the_next_worker() -> None:
    """Queued events that no handler took at shutdown stay for the next worker."""
    transport = InMemoryTransport()
    first = EventBus(transport=transport, shutdown_grace=0)
    gate = anyio.Event()

    @first.subscribe(group="g")
    async def blocked(event: OrderCreated) -> None:
        await gate.wait()

    async with first:
        for i in range(5):
            await first.publish(OrderCreated(order_id=str(i)))
        await anyio.wait_all_tasks_blocked()

    second = EventBus(transport=transport)
    seen: list[str] = []

    @second.subscribe(group="g")
    async def record(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async with second:
        await drain(second)
    assert seen == ["0", "1", "2", "3", "4"]


async def test_full_queue_makes_publish_time_out_without_dropping() -> None:
    """A full in-memory queue makes publish(timeout=) raise; queued events survive."""
    transport = InMemoryTransport(max_queue=3)
    bus = EventBus(transport=transport)
    gate = anyio.Event()
    seen: list[str] = []

    @bus.subscribe()
    async def slow(event: OrderCreated) -> None:
        await gate.wait()
        seen.append(event.order_id)

    async with bus:
        await bus.publish(OrderCreated(order_id="0"))
        await anyio.wait_all_tasks_blocked()  # "0" is in the handler; the queue is empty
        for i in range(1, 4):
            await bus.publish(OrderCreated(order_id=str(i)))
        with pytest.raises(PublishTimeoutError, match="max_queue=3"):
            await bus.publish(OrderCreated(order_id="lost?"), timeout=0.05)
        gate.set()
        await drain(bus)
    assert seen == ["0", "1", "2", "3"]


async def test_full_queue_makes_publish_wait_for_room() -> None:
    """Without a timeout, publish() waits until the consumer makes room."""
    bus = EventBus(transport=InMemoryTransport(max_queue=2))
    seen: list[int] = []

    @bus.subscribe()
    async def record(event: OrderCreated) -> None:
        seen.append(int(event.order_id))

    async with bus:
        for i in range(50):
            await bus.publish(OrderCreated(order_id=str(i)))
        await drain(bus)
    assert seen == list(range(50))


async def test_drain_times_out_while_work_is_stuck() -> None:
    """drain(timeout=) raises TimeoutError when a handler never finishes."""
    bus = EventBus(shutdown_grace=0)
    gate = anyio.Event()

    @bus.subscribe()
    async def stuck(event: OrderCreated) -> None:
        await gate.wait()

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with pytest.raises(TimeoutError):
            await bus.drain(timeout=0.05)


async def test_bad_bus_and_transport_options_are_rejected() -> None:
    """Negative grace, bad payload limits and queue sizes raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="shutdown_grace"):
        EventBus(shutdown_grace=-1)
    with pytest.raises(ConfigurationError, match="max_payload_bytes"):
        EventBus(max_payload_bytes=0)
    with pytest.raises(ConfigurationError, match="max_queue"):
        InMemoryTransport(max_queue=0)
    with pytest.raises(ConfigurationError, match="history"):
        InMemoryTransport(history=-1)


async def test_error_in_the_body_still_shuts_the_bus_down() -> None:
    """An exception inside `async with bus:` propagates and the bus closes."""
    bus = EventBus()
    with pytest.raises(RuntimeError, match="boom"):
        async with bus:
            raise RuntimeError("boom")
    with pytest.raises(Exception, match="closed"):
        await bus.publish(OrderCreated(order_id="o"))
