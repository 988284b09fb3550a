"""The Redis consumer: RESP3, stream caps, refused acks, closing while blocked, leases."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
from redis.exceptions import NoPermissionError

from eventbus import EventBus, RetryPolicy
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


def prefix() -> str:
    """A fresh key prefix."""
    return f"r{secrets.token_hex(4)}"


async def test_resp3_connections_publish_retry_and_dead_letter(
    redis_server: RedisServer,
) -> None:
    """With ``protocol=3`` in the URL (map replies), the bus behaves the same."""
    transport = RedisTransport(f"{redis_server.url}?protocol=3", prefix=prefix(), block=0.2)
    bus = EventBus(transport=transport)
    seen: list[str] = []

    @bus.subscribe(group="stock", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def reserve(event: OrderCreated) -> None:
        seen.append(event.order_id)
        if event.order_id == "bad":
            raise ValueError("no stock")

    async with bus:
        for order_id in ("o-1", "bad", "o-2"):
            await bus.publish(OrderCreated(order_id=order_id))
        await drain(bus, timeout=20, reraise=False)
        dead = await bus.dead_letters()
    assert sorted(seen) == ["bad", "bad", "o-1", "o-2"]
    assert [(d.reason, d.attempts) for d in dead] == [("retries-exhausted", 2)]


async def test_maxlen_caps_the_stream_approximately(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """``maxlen=100``: 1,000 events leave about 100 entries (Redis trims whole nodes)."""
    keys = prefix()
    async with EventBus(transport=RedisTransport(redis_server.url, prefix=keys, maxlen=100)) as bus:
        for start in range(0, 1000, 100):
            await bus.publish_many(
                [OrderCreated(order_id=str(i)) for i in range(start, start + 100)]
            )
    length = await redis_admin.xlen(f"{keys}:{{OrderCreated}}")
    assert 100 <= length < 1000


async def test_refused_acks_are_kept_and_sent_once_allowed(
    redis_server: RedisServer, redis_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """XACK refused (an ACL without it): the acks wait, the events are not handled again,
    and they are acknowledged once Redis accepts XACK."""
    user, keys = f"noack-{secrets.token_hex(3)}", prefix()
    await redis_admin.execute_command(
        "ACL", "SETUSER", user, "on", "nopass", "~*", "&*", "+@all", "-xack"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:x@")
    worker = EventBus(transport=RedisTransport(url, prefix=keys, block=0.1))
    handled: list[str] = []

    @worker.subscribe(group="mail")
    async def send(event: OrderPaid) -> None:
        handled.append(event.order_id)

    stream = f"{keys}:{{OrderPaid}}"
    try:
        async with (
            worker,
            EventBus(transport=RedisTransport(redis_server.url, prefix=keys)) as producer,
        ):
            for i in range(3):
                await producer.publish(OrderPaid(order_id=f"o-{i}"))
            await wait_for(lambda: len(handled) == 3, 10, "the three events to be handled")
            await wait_for(
                lambda: any(
                    r.exc_info and r.exc_info[0] is NoPermissionError for r in caplog.records
                ),
                10,
                "an XACK to be refused",
            )
            assert (await redis_admin.xpending(stream, "mail"))["pending"] == 3
            await redis_admin.execute_command("ACL", "SETUSER", user, "+xack")

            async def nothing_pending() -> bool:
                return bool((await redis_admin.xpending(stream, "mail"))["pending"] == 0)

            await wait_for(nothing_pending, 10, "the kept acks to be sent")
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert handled == ["o-0", "o-1", "o-2"]


async def test_closing_while_a_read_waits_sends_the_acks_and_leaves_no_consumer(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Close right after handling (its acks queued, a read blocked for 5 s): nothing stays
    pending and the consumer leaves its group."""
    keys = prefix()
    bus = EventBus(transport=RedisTransport(redis_server.url, prefix=keys, block=5))
    handled: list[str] = []

    @bus.subscribe(group="mail")
    async def send(event: OrderPaid) -> None:
        handled.append(event.order_id)

    async with bus:
        for i in range(5):
            await bus.publish(OrderPaid(order_id=f"o-{i}"))
        await wait_for(lambda: len(handled) == 5, 10, "the events to be handled")
    stream = f"{keys}:{{OrderPaid}}"
    assert (await redis_admin.xpending(stream, "mail"))["pending"] == 0
    assert await redis_admin.xinfo_consumers(stream, "mail") == []


async def test_a_long_handler_keeps_its_entry_past_the_claim_timeout(
    redis_server: RedisServer,
) -> None:
    """A handler that runs four claim timeouts keeps its lease: another worker of the
    group, polling all the while, never takes the entry over."""
    keys, calls, release = prefix(), [], anyio.Event()

    def worker(name: str) -> EventBus:
        transport = RedisTransport(
            redis_server.url, prefix=keys, claim_timeout=0.6, block=0.1, consumer_name=name
        )
        bus = EventBus(transport=transport)

        @bus.subscribe(group="ship")
        async def ship(event: OrderPaid) -> None:
            calls.append((name, event.order_id))
            await release.wait()

        return bus

    first, second = worker("first"), worker("second")
    async with first:
        await first.publish(OrderPaid(order_id="long"))
        await wait_for(lambda: len(calls) == 1, 10, "the handler to start")
        async with second:
            await anyio.sleep(4 * 0.6)  # time passing is the point: nothing may happen
            assert calls == [("first", "long")]
            release.set()
            await drain(first, timeout=10)
    assert calls == [("first", "long")]
