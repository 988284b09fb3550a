"""Redis retention: workers trim only what every group acknowledged, past the window."""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from typing import Any

import pytest

from eventbus import ConfigurationError, EventBus, RetryPolicy
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderPaid
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

# A trim every 0.1 s (a quarter of the claim timeout), of everything acknowledged.
QUICK_TRIMS: dict[str, Any] = {"claim_timeout": 0.4, "block": 0.2, "retention": 0}


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


def prefix() -> str:
    """A fresh key prefix."""
    return f"ret{secrets.token_hex(4)}"


def orders(tag: str, count: int) -> list[OrderPaid]:
    """``count`` events with the order ids ``tag-0``, ``tag-1``, ..."""
    return [OrderPaid(order_id=f"{tag}-{i}") for i in range(count)]


def ids(events: list[OrderPaid]) -> list[str]:
    """The order ids of ``events``."""
    return [event.order_id for event in events]


def recording_bus(url: str, keys: str, group: str, seen: list[str], **options: Any) -> EventBus:
    """A worker of ``group`` that appends each OrderPaid's order id to ``seen``."""
    bus = EventBus(transport=RedisTransport(url, prefix=keys, **(QUICK_TRIMS | options)))

    @bus.subscribe(group=group)
    async def record(event: OrderPaid) -> None:
        seen.append(event.order_id)

    return bus


def shorter_than(admin: Any, stream: str, length: int) -> Any:
    """A condition: the stream holds fewer than ``length`` entries."""

    async def condition() -> bool:
        return int(await admin.xlen(stream)) < length

    return condition


async def test_a_stopped_group_loses_nothing_while_another_group_acks_and_trims(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """A stopped group gets every entry later, though another group acked all and trims ran."""
    keys, first, later = prefix(), orders("a", 300), orders("b", 300)
    stream = f"{keys}:{{OrderPaid}}"
    slow_seen: list[str] = []
    fast_seen: list[str] = []
    async with recording_bus(redis_server.url, keys, "fast", fast_seen) as fast:
        async with recording_bus(redis_server.url, keys, "slow", slow_seen):
            await fast.publish_many(first)
            await wait_for(lambda: len(slow_seen) == 300, 10, "the slow group to handle a-*")
        await fast.publish_many(later)  # the slow group's worker has stopped
        await wait_for(lambda: len(fast_seen) == 600, 10, "the fast group to handle all")
        await wait_for(shorter_than(redis_admin, stream, 600), 10, "a trim of a-*")
    async with recording_bus(redis_server.url, keys, "slow", slow_seen) as slow:
        await wait_for(lambda: len(slow_seen) == 600, 10, "the slow group to catch up")
        assert await slow.dead_letters() == []
    assert slow_seen == ids(first) + ids(later)


async def test_entries_older_than_the_window_go_and_newer_ones_stay_for_a_new_group(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Acked entries older than the window are trimmed; newer ones stay for a new group."""
    keys, recent = prefix(), orders("new", 300)
    stream = f"{keys}:{{OrderPaid}}"
    async with redis_admin.pipeline(transaction=False) as pipe:
        for i in range(1, 301):  # entry ids of 1970, the first second
            pipe.xadd(stream, old_entry(f"old-{i}"), id=f"1000-{i}")
        await pipe.execute()
    first_seen: list[str] = []
    late_seen: list[str] = []
    async with recording_bus(redis_server.url, keys, "first", first_seen, retention=3600) as bus:
        await bus.publish_many(recent)
        await wait_for(lambda: len(first_seen) == 600, 10, "the first group to handle all")
        await wait_for(shorter_than(redis_admin, stream, 600), 10, "a trim of the old entries")
    async with recording_bus(redis_server.url, keys, "late", late_seen, retention=3600) as late:
        await drain(late, timeout=10)
    assert late_seen[-300:] == ids(recent)
    assert len(late_seen) < 600  # the old ones went before the late group existed


def old_entry(order_id: str) -> dict[str, str]:
    """The wire fields of an OrderPaid (``docs/wire-format.md``)."""
    return {
        "id": f"ev-{order_id}",
        "name": "OrderPaid",
        "version": "1",
        "time": "1970-01-01T00:00:01Z",
        "payload": json.dumps({"order_id": order_id}),
    }


async def test_entries_pending_in_a_group_are_not_trimmed(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Entries a consumer holds unacknowledged stay in the stream through trims."""
    keys, events = prefix(), orders("o", 600)
    stream = f"{keys}:{{OrderPaid}}"
    await redis_admin.xgroup_create(stream, "slow", id="0", mkstream=True)
    async with EventBus(transport=RedisTransport(redis_server.url, prefix=keys)) as producer:
        await producer.publish_many(events)
    read = await redis_admin.xreadgroup("slow", "c1", {stream: ">"}, count=100)
    entry_ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_admin.xack(stream, "slow", *entry_ids[:50])  # 50 stay pending
    fast_seen: list[str] = []
    async with recording_bus(redis_server.url, keys, "fast", fast_seen):
        await wait_for(lambda: len(fast_seen) == 600, 10, "the fast group to handle all")
        await wait_for(shorter_than(redis_admin, stream, 600), 10, "a trim of what both acked")
        for entry_id in entry_ids[50:]:
            assert await redis_admin.xrange(stream, entry_id, entry_id)
    slow_seen: list[str] = []
    async with recording_bus(redis_server.url, keys, "slow", slow_seen, consumer_name="c1"):
        await wait_for(lambda: len(slow_seen) == 550, 10, "the slow group to handle the rest")
    assert slow_seen == ids(events)[50:]


async def test_a_scheduled_retry_survives_the_trim_of_its_entry(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """A scheduled retry is delivered after its stream entry was trimmed."""
    keys = prefix()
    stream, retries = f"{keys}:{{OrderPaid}}", f"{keys}:{{OrderPaid}}:retry:mail"
    bus = EventBus(transport=RedisTransport(redis_server.url, prefix=keys, **QUICK_TRIMS))
    calls: Counter[str] = Counter()

    @bus.subscribe(group="mail", retry=RetryPolicy(max_attempts=2, initial_delay=60, jitter=0))
    async def send(event: OrderPaid) -> None:
        calls[event.order_id] += 1
        if event.order_id == "retry-me" and calls[event.order_id] == 1:
            raise ConnectionError("mail server down")

    async with bus:
        await bus.publish(OrderPaid(order_id="retry-me"))
        [(first_id, _)] = await redis_admin.xrange(stream, count=1)
        await bus.publish_many(orders("o", 299))
        await wait_for(lambda: len(calls) == 300, 10, "every event to be handled once")

        async def entry_trimmed() -> bool:
            return not await redis_admin.xrange(stream, first_id, first_id)

        await wait_for(entry_trimmed, 10, "the trim of the failed event's entry")
        [member] = await redis_admin.zrange(retries, 0, -1)
        await redis_admin.zadd(retries, {member: 0}, xx=True)  # due now, not in a minute
        await wait_for(lambda: calls["retry-me"] == 2, 10, "the retry to be delivered")
        assert await bus.dead_letters() == []


async def test_trims_that_redis_refuses_are_logged_and_the_worker_goes_on(
    redis_server: RedisServer, redis_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL without XTRIM: each refused trim is logged as an error; events are handled."""
    user, keys = f"notrim-{secrets.token_hex(3)}", prefix()
    await redis_admin.execute_command(
        "ACL", "SETUSER", user, "on", "nopass", "~*", "&*", "+@all", "-xtrim"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:x@")
    seen: list[str] = []

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("Redis refused to trim")]

    try:
        async with recording_bus(url, keys, "mail", seen) as bus:
            await bus.publish_many(orders("a", 10))
            await wait_for(lambda: len(refusals()) >= 2, 10, "two refused trims")
            await bus.publish_many(orders("b", 10))
            await wait_for(lambda: len(seen) == 20, 10, "every event to be handled")
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert {r.levelno for r in refusals()} == {logging.ERROR}


def test_bad_retention_values_raise_configuration_error() -> None:
    """retention must be None or a finite number of seconds >= 0; the message names it."""
    for value in (-1, float("nan"), float("inf"), True, "1h"):
        with pytest.raises(ConfigurationError, match="retention"):
            RedisTransport(retention=value)  # type: ignore[arg-type]
    RedisTransport(retention=None)
    RedisTransport(retention=0)


async def test_maxlen_is_warned_about_at_connect(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """maxlen= may drop unread entries: connecting says so, and names retention=."""
    transport = RedisTransport(redis_server.url, prefix=prefix(), maxlen=1000)
    async with EventBus(transport=transport):
        pass
    [warning] = [r for r in caplog.records if "maxlen=1000" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "retention=" in warning.getMessage()
