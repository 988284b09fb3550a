"""Redis out of memory (``maxmemory`` with ``noeviction``): writes that may grow memory
are refused with ``OOM`` (XADD, ZADD, SADD, XGROUP CREATE, SET, scripts that call one),
while XREADGROUP, XACK, XDEL, XCLAIM and reads are not. The group keeps flowing; what
cannot be written waits, is reported, and completes once memory is freed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from eventbus import Context, EventBus, RetryPolicy, TransportError
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

GROUP = "email"
NEW = [f"new-{i}" for i in range(5)]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test: its memory limit changes."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def run_out_of_memory(admin: Any) -> None:
    """Set ``maxmemory`` below the memory Redis uses, with ``noeviction``; check that a
    write is refused with OOM."""
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", used // 2)
    with pytest.raises(OutOfMemoryError):
        await admin.set("probe", "x")


async def free_memory(admin: Any) -> None:
    """Lift the memory limit."""
    await admin.config_set("maxmemory", 0)


def worker(url: str, prefix: str) -> EventBus:
    """A bus on ``prefix`` with short reads (0.1 s) and a short claim timeout (its leases
    are renewed every 2 s, promotions refused are tried again within 1.5 s)."""
    return EventBus(transport=RedisTransport(url, prefix=prefix, block=0.1, claim_timeout=6))


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def promotion_refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The log lines that report a refused promotion of due retries."""
    return [m for m in _messages(caplog) if "refused to move due retries" in m]


async def test_group_flows_under_oom_and_a_refused_retry_promotion_completes_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: under OOM a due retry whose promotion was refused stopped all reads of its group."""
    admin: Any = aioredis.Redis.from_url(redis_server.url)
    prefix = f"m{secrets.token_hex(4)}"
    retry_key = f"{prefix}:{{OrderCreated}}:retry:{GROUP}"
    stream = f"{prefix}:{{OrderCreated}}"
    bus = worker(redis_server.url, prefix)
    gate, gated = anyio.Event(), anyio.Event()
    handled: list[tuple[str, int]] = []
    retry = RetryPolicy(max_attempts=3, initial_delay=600, max_delay=600)

    async def send(event: OrderCreated, context: Context) -> None:
        handled.append((event.order_id, context.attempt))
        if event.order_id == "retried" and context.attempt == 1:
            raise ConnectionError("smtp down")
        if event.order_id == "gate":
            gated.set()
            await gate.wait()  # the one loop is busy: what is published now stays unread

    bus.subscribe(group=GROUP, retry=retry, concurrency=1)(send)
    try:
        async with bus:
            await bus.publish(OrderCreated(order_id="retried"))
            await wait_for(lambda: _scheduled(admin, retry_key), 10, "the retry to be scheduled")
            await bus.publish(OrderCreated(order_id="gate"))
            with anyio.fail_after(10):
                await gated.wait()
            for order in NEW:
                await bus.publish(OrderCreated(order_id=order))
            (member,) = await admin.zrange(retry_key, 0, 0)
            await admin.zadd(retry_key, {member: 0}, xx=True)  # due now, not yet promoted
            # its last read was over a block ago: the next fetch tries the promotion first
            await wait_for(lambda: _silent(admin, stream), 10, "the consumer to be silent")

            await run_out_of_memory(admin)
            refused_before = await oom_refusals(admin)  # the probe's
            gate.set()
            await wait_for(lambda: {(o, 1) for o in NEW} <= set(handled), 10, "new events")
            await wait_for(lambda: _nothing_pending(admin, stream), 10, "their acks (XACK)")
            await wait_for(
                lambda: _refused_since(admin, refused_before, 3), 10, "3 refused promotions"
            )
            assert await admin.zcard(retry_key) == 1  # refused: still waiting, not lost

            second = worker(redis_server.url, prefix)  # the group exists: it starts
            second.subscribe(group=GROUP, retry=retry, concurrency=1)(send)
            async with second:
                await free_memory(admin)
                await drain(bus, timeout=10)
    finally:
        await free_memory(admin)
        await admin.aclose()
    assert handled.count(("retried", 2)) == 1
    expected = [("retried", 1), ("gate", 1), *((o, 1) for o in NEW), ("retried", 2)]
    assert sorted(handled) == sorted(expected)
    (refusal,) = promotion_refusals(caplog)  # reported once, not on every try or read
    assert "OutOfMemoryError" in refusal
    assert retry_key in refusal
    assert "retried" not in refusal  # no payload


async def oom_refusals(admin: Any) -> int:
    """How many commands Redis refused with OOM so far (INFO errorstats)."""
    stats = await admin.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def _refused_since(admin: Any, before: int, count: int) -> bool:
    return await oom_refusals(admin) >= before + count


async def _scheduled(admin: Any, key: str) -> bool:
    return int(await admin.zcard(key)) == 1


async def _silent(admin: Any, stream: str) -> bool:
    """Whether the group's one consumer has not read (nor renewed) for 300 ms."""
    (consumer,) = await admin.xinfo_consumers(stream, GROUP)
    return int(consumer["idle"]) >= 300


async def _nothing_pending(admin: Any, stream: str) -> bool:
    return int((await admin.xpending(stream, GROUP))["pending"]) == 0


async def test_worker_of_a_group_missing_under_oom_fails_to_start_naming_the_cause(
    redis_server: RedisServer,
) -> None:
    """A group that does not exist and cannot be created under OOM: TransportError naming it."""
    admin: Any = aioredis.Redis.from_url(redis_server.url)
    bus = worker(redis_server.url, f"m{secrets.token_hex(4)}")

    @bus.subscribe(group="audit")
    async def audit(event: OrderCreated) -> None:
        pass

    try:
        await run_out_of_memory(admin)
        with pytest.raises(TransportError) as raised:
            async with bus:
                pass
    finally:
        await free_memory(admin)
        await admin.aclose()
    message = str(raised.value)
    assert "OutOfMemoryError" in message
    assert "audit" in message
    assert "create" in message


async def test_worker_starts_under_oom_when_its_group_exists_but_is_not_listed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing group whose listing OOM refuses: the worker starts, logs it, lists it later."""
    admin: Any = aioredis.Redis.from_url(redis_server.url)
    prefix = f"m{secrets.token_hex(4)}"
    first = worker(redis_server.url, prefix)
    first.subscribe(group=GROUP)(_noop)
    async with first:  # creates the group and lists it
        pass
    await admin.delete(f"{prefix}:groups")  # the listing is lost; the group stays
    bus = worker(redis_server.url, prefix)
    handled: list[str] = []

    @bus.subscribe(group=GROUP)
    async def send(event: OrderCreated) -> None:
        handled.append(event.order_id)

    try:
        await run_out_of_memory(admin)
        async with bus:
            refused = [m for m in _messages(caplog) if f"{prefix}:groups" in m]
            await free_memory(admin)
            await wait_for(lambda: _listed(admin, prefix), 10, "the group to be listed again")
            await bus.publish(OrderCreated(order_id="o-1"))
            await drain(bus, timeout=10)
    finally:
        await free_memory(admin)
        await admin.aclose()
    assert handled == ["o-1"]
    assert len(refused) == 1
    assert "OutOfMemoryError" in refused[0]


async def _noop(event: OrderCreated) -> None:
    pass


async def _listed(admin: Any, prefix: str) -> bool:
    return bool(await admin.smembers(f"{prefix}:groups"))
