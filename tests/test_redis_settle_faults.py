"""Settling under faults on Redis: entries deleted while their handler runs, settle
writes that Redis refuses, consumers of dead workers."""

from __future__ import annotations

import secrets
import traceback
from decimal import Decimal
from typing import Any

import pytest

from eventbus import Context, EventBus, RetryPolicy
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

GROUP = "email"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix."""
    return f"s{secrets.token_hex(4)}"


def stream_of(prefix: str) -> str:
    """The stream key of OrderCreated under ``prefix``."""
    return f"{prefix}:{{OrderCreated}}"


async def pending_count(admin: Any, key: str) -> int:
    """How many entries of ``key`` the group has pending."""
    return int((await admin.xpending(key, GROUP))["pending"])


async def delete_all(admin: Any, key: str) -> None:
    """XDEL every entry of ``key``."""
    ids = [entry_id for entry_id, _ in await admin.xrange(key)]
    await admin.xdel(key, *ids)


@pytest.mark.parametrize("retry", [RetryPolicy(max_attempts=3), RetryPolicy.none()])
async def test_entry_deleted_while_its_handler_runs_is_dead_lettered_with_its_body(
    redis_server: RedisServer, redis_admin: Any, prefix: str, retry: RetryPolicy
) -> None:
    """A handler whose entry is XDEL'd meanwhile, then fails: one 'deleted' letter, body kept."""
    bus = EventBus(transport=RedisTransport(redis_server.url, prefix=prefix, block=0.2))
    stream = stream_of(prefix)

    @bus.subscribe(group=GROUP, retry=retry)
    async def send(event: OrderCreated) -> None:
        await delete_all(redis_admin, stream)
        raise ConnectionError("smtp down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1", total=Decimal("2.50")))
        await drain(bus, reraise=False, timeout=10)
        (dead,) = await bus.dead_letters(GROUP)
    expected = "deleted" if retry.max_attempts > 1 else "retries-exhausted"
    assert dead.reason == expected
    assert dead.event == OrderCreated(order_id="o-1", total=Decimal("2.50"))
    assert b"o-1" in dead.body


async def test_entry_trimmed_and_dropped_by_the_lease_renewal_is_dead_lettered(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """XTRIM during the handler, the renewal's XCLAIM drops it from the pending list: kept."""
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.2, claim_timeout=0.3)
    bus = EventBus(transport=transport)
    stream = stream_of(prefix)

    @bus.subscribe(group=GROUP, retry=RetryPolicy(max_attempts=3))
    async def send(event: OrderCreated) -> None:
        await redis_admin.xtrim(stream, maxlen=0)
        await wait_for(
            lambda: _no_pending(redis_admin, stream), 10, "the renewal to drop the entry"
        )
        raise ConnectionError("smtp down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-2"))
        await drain(bus, reraise=False, timeout=10)
        (dead,) = await bus.dead_letters(GROUP)
    assert (dead.reason, dead.event) == ("deleted", OrderCreated(order_id="o-2"))


async def _no_pending(admin: Any, key: str) -> bool:
    return await pending_count(admin, key) == 0


def settle_refusals(caplog: pytest.LogCaptureFixture, error: str) -> int:
    """How many log records tell of a settle (retry or dead-letter move) that Redis
    refused with ``error`` (in its message, or in its exception and traceback; any case)."""
    count = 0
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)
            text += f" {type(exc).__name__}: {exc} " + " ".join(frame.name for frame in frames)
        count += error.lower() in text.lower() and "settle" in text
    return count


@pytest.mark.parametrize("broken", ["retry", "dead"])
async def test_settle_refused_by_redis_completes_once_the_cause_is_removed(
    redis_server: RedisServer,
    redis_admin: Any,
    prefix: str,
    broken: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retry (or dead-letter) move refused with WRONGTYPE happens, once, after the fix."""
    bus = EventBus(transport=RedisTransport(redis_server.url, prefix=prefix, block=0.2))
    key = f"{stream_of(prefix)}:{broken}:{GROUP}"
    attempts: list[int] = []
    retry = RetryPolicy(max_attempts=3, initial_delay=0.05) if broken == "retry" else None

    @bus.subscribe(group=GROUP, retry=retry or RetryPolicy.none())
    async def send(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt == 1:
            await redis_admin.set(key, "not a zset or stream")
            raise ConnectionError("smtp down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-3"))
        await wait_for(lambda: settle_refusals(caplog, "WRONGTYPE") > 0, 10, "a refused settle")
        await redis_admin.delete(key)
        await drain(bus, reraise=False, timeout=10)
        dead = await bus.dead_letters(GROUP)
    if broken == "retry":
        assert (attempts, dead) == ([1, 2], [])
    else:
        assert attempts == [1]
        assert [(d.attempts, d.event) for d in dead] == [(1, OrderCreated(order_id="o-3"))]


async def test_settle_half_refused_by_an_acl_happens_once_after_the_grant(
    redis_server: RedisServer, redis_admin: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry whose XACK an ACL refuses writes nothing (no copy for the group's other
    readers to promote); once XACK is granted it happens exactly once."""
    user = f"settle-{secrets.token_hex(3)}"
    await redis_admin.execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">pw", "~*", "&*", "+@all", "-xack"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
    bus = EventBus(transport=RedisTransport(url, prefix=prefix, block=0.2))
    attempts: list[int] = []

    @bus.subscribe(
        group=GROUP, retry=RetryPolicy(max_attempts=5, initial_delay=0.01), concurrency=2
    )
    async def send(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise ConnectionError("smtp down")

    try:
        async with bus:
            await bus.publish(OrderCreated(order_id="o-4"))
            await wait_for(
                lambda: settle_refusals(caplog, "can't run") >= 3,
                10,
                "three refusals (time for the other slot to promote a half-done retry)",
            )
            await redis_admin.execute_command("ACL", "SETUSER", user, "+xack")
            await drain(bus, reraise=False, timeout=10)
            assert await bus.dead_letters(GROUP) == []
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert attempts == [1, 2]


async def consumer_names(admin: Any, key: str) -> set[str]:
    """The consumers of the group on ``key``."""
    return {c["name"].decode() for c in await admin.xinfo_consumers(key, GROUP)}


async def test_consumers_of_dead_workers_are_removed_once_they_hold_nothing(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """Idle consumers that hold nothing go; one holding an entry goes once it is taken over."""
    stream = stream_of(prefix)
    transport = RedisTransport(
        redis_server.url, prefix=prefix, block=0.1, claim_timeout=0.3, consumer_name="live"
    )
    bus = EventBus(transport=transport)
    handled: list[str] = []

    @bus.subscribe(group=GROUP)
    async def send(event: OrderCreated) -> None:
        handled.append(event.order_id)

    await redis_admin.xadd(stream, {"stray": "not an event"})
    await redis_admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await redis_admin.xgroup_createconsumer(stream, GROUP, "dead-empty")
    await redis_admin.xreadgroup(GROUP, "dead-holding", {stream: ">"}, count=1)
    async with bus:
        await bus.publish(OrderCreated(order_id="o-5"))
        await wait_for(
            lambda: _only_live(redis_admin, stream), 10, "the dead consumers to be removed"
        )
        await drain(bus, reraise=False, timeout=10)
        dead = await bus.dead_letters(GROUP)
    assert handled == ["o-5"]
    assert [d.reason for d in dead] == ["malformed"]  # the stray entry, taken over


async def _only_live(admin: Any, key: str) -> bool:
    return await consumer_names(admin, key) <= {"live"}
