"""Handled records on Redis: written with the batched acks, read a batch at a time."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
from redis.exceptions import NoPermissionError

from eventbus import Context, EventBus, RetryPolicy
from eventbus.testing import drain
from eventbus.transports import (
    Delivery,
    FailureNotes,
    HandledRecord,
    IdleWaiting,
    Subscription,
)
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

GROUP = "email"
TOPIC = "OrderCreated"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix."""
    return f"h{secrets.token_hex(4)}"


def fields(event_id: str) -> dict[str, str]:
    """The fields of a stream entry holding an OrderCreated with ``event_id``."""
    return {
        "id": event_id,
        "name": TOPIC,
        "version": "1",
        "time": "2026-01-01T00:00:00Z",
        "payload": '{"order_id":"o-1","total":"9.90","items":[]}',
    }


def record_key(prefix: str, event_id: str) -> str:
    """The key of the group's handled record of ``event_id``."""
    return f"{prefix}:{{{TOPIC}}}:handled:{GROUP}:{event_id}"


async def pending(admin: Any, prefix: str) -> int:
    """How many entries of the stream the group has pending."""
    return int((await admin.xpending(f"{prefix}:{{{TOPIC}}}", GROUP))["pending"])


async def lookups(admin: Any) -> int:
    """How many MGET calls the server has run so far (a handled record's lookup)."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def record_of(sub: Subscription) -> HandledRecord:
    """The subscription as a ``HandledRecord``."""
    assert isinstance(sub, HandledRecord)
    return sub


async def receive(sub: Subscription) -> Delivery:
    """The next delivery, within 10 s."""
    with anyio.fail_after(10):
        delivery = await sub.receive()
    assert delivery is not None
    return delivery


async def test_a_record_sent_with_the_batched_ack_is_seen_by_another_consumer(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """After the flush, the entry is acked and another consumer finds its record (with TTL)."""
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.1, idempotency_ttl=30)
    first, second = await transport.connect(), await transport.connect()
    try:
        await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
        sub = await first.subscribe(TOPIC, GROUP)
        delivery = await receive(sub)
        assert not await record_of(sub).handled("e-1")
        await record_of(sub).ack_handled(delivery, "e-1")
        assert isinstance(first, IdleWaiting)
        await first.wait_idle()  # sends the queued acks
        other = record_of(await second.subscribe(TOPIC, GROUP))
        assert await other.handled("e-1")
        assert await pending(redis_admin, prefix) == 0
        assert 0 < await redis_admin.pttl(record_key(prefix, "e-1")) <= 30_000
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_batch_is_looked_up_at_once_and_answered_per_delivery(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """One MGET answers for a batch of five entries, each delivery with its own answer."""
    for handled_before in ("e-2", "e-4"):
        await redis_admin.set(record_key(prefix, handled_before), b"1", px=60_000)
    for i in range(1, 6):
        await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields(f"e-{i}"))
    conn = await RedisTransport(redis_server.url, prefix=prefix, block=0.1).connect()
    try:
        sub = await conn.subscribe(TOPIC, GROUP)
        record = record_of(sub)
        before = await lookups(redis_admin)
        answers = []
        for _ in range(5):
            event_id = (await receive(sub)).message.headers["id"]
            answers.append((event_id, await record.handled(event_id)))
        assert answers == [
            ("e-1", False),
            ("e-2", True),
            ("e-3", False),
            ("e-4", True),
            ("e-5", False),
        ]
        assert await lookups(redis_admin) - before == 1
    finally:
        await conn.aclose()


async def test_an_answer_kept_for_a_delivery_is_dropped_when_it_is_settled(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """A nacked delivery's retry is looked up again and sees the record written meanwhile."""
    for i in (1, 2):
        await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields(f"e-{i}"))
    conn = await RedisTransport(redis_server.url, prefix=prefix, block=0.1).connect()
    try:
        sub = await conn.subscribe(TOPIC, GROUP)
        record = record_of(sub)
        await receive(sub)
        assert not await record.handled("e-1")  # looks up e-2 as well
        second = await receive(sub)
        await sub.nack(second, 0.0, FailureNotes("retrying"))
        await redis_admin.set(record_key(prefix, "e-2"), b"1", px=60_000)
        retry = await receive(sub)
        assert (retry.message.headers["id"], retry.attempt) == ("e-2", 2)
        assert await record.handled("e-2")
    finally:
        await conn.aclose()


async def test_a_retried_delivery_is_recorded_and_its_redelivered_copy_acked(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """A success on a retry writes the record, then acks and deletes the redelivered copy."""
    bus = EventBus(transport=RedisTransport(redis_server.url, prefix=prefix, block=0.1))
    attempts: list[int] = []

    @bus.subscribe(
        group=GROUP, idempotent=True, retry=RetryPolicy(max_attempts=2, initial_delay=0.01)
    )
    async def send(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise ConnectionError("smtp down")

    async with bus:
        await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
        await drain(bus, timeout=10)
    redeliver = f"{prefix}:{{{TOPIC}}}:redeliver:{GROUP}"
    assert attempts == [1, 2]
    assert await redis_admin.exists(record_key(prefix, "e-1"))
    assert await redis_admin.xlen(redeliver) == 0
    assert int((await redis_admin.xpending(redeliver, GROUP))["pending"]) == 0


async def test_a_key_this_consumer_recorded_needs_no_lookup_until_it_expires(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """A key recorded here is answered without Redis until idempotency_ttl passes."""
    await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.1, idempotency_ttl=0.5)
    conn = await transport.connect()
    try:
        sub = await conn.subscribe(TOPIC, GROUP)
        record = record_of(sub)
        delivery = await receive(sub)
        assert not await record.handled("e-1")
        await record.ack_handled(delivery, "e-1")
        before = await lookups(redis_admin)
        assert await record.handled("e-1")
        assert await lookups(redis_admin) == before

        async def forgotten() -> bool:
            return not await record.handled("e-1")

        await wait_for(forgotten, 10, "the record to expire")
    finally:
        await conn.aclose()


def refusals(caplog: pytest.LogCaptureFixture) -> int:
    """How many logged errors carry a ``NoPermissionError`` (Redis's NOPERM)."""
    return sum(
        record.exc_info is not None and isinstance(record.exc_info[1], NoPermissionError)
        for record in caplog.records
    )


async def test_a_refused_record_keeps_its_ack_back_until_redis_takes_both(
    redis_server: RedisServer, redis_admin: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused record keeps its ack back; once SET is granted both land, and a repeat skips."""
    user = f"norecord-{secrets.token_hex(3)}"
    await redis_admin.execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">pw", "~*", "&*", "+@all", "-set"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
    bus = EventBus(transport=RedisTransport(url, prefix=prefix, block=0.1))
    sent: list[str] = []

    @bus.subscribe(group=GROUP, idempotent=True)
    async def send(event: OrderCreated) -> None:
        sent.append(event.order_id)

    try:
        async with bus:
            await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
            await wait_for(lambda: refusals(caplog) >= 2, 10, "refusals")
            assert sent == ["o-1"]
            assert await pending(redis_admin, prefix) == 1
            assert not await redis_admin.exists(record_key(prefix, "e-1"))
            await redis_admin.execute_command("ACL", "SETUSER", user, "+set")
            await drain(bus, timeout=10)
            assert await pending(redis_admin, prefix) == 0
            assert await redis_admin.exists(record_key(prefix, "e-1"))
            await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
            await drain(bus, timeout=10)
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert sent == ["o-1"]


async def test_a_refused_lookup_is_tried_again_and_the_entry_kept_meanwhile(
    redis_server: RedisServer, redis_admin: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused lookup is tried again, the entry kept, and handled once MGET is granted."""
    user = f"nolookup-{secrets.token_hex(3)}"
    await redis_admin.execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">pw", "~*", "&*", "+@all", "-mget"
    )
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
    bus = EventBus(transport=RedisTransport(url, prefix=prefix, block=0.1))
    sent: list[str] = []

    @bus.subscribe(group=GROUP, idempotent=True)
    async def send(event: OrderCreated) -> None:
        sent.append(event.order_id)

    def lookup_refusals() -> int:
        return sum("refused to read the handled records" in r.getMessage() for r in caplog.records)

    try:
        async with bus:
            await redis_admin.xadd(f"{prefix}:{{{TOPIC}}}", fields("e-1"))
            await wait_for(lambda: lookup_refusals() >= 2, 10, "refused lookups")
            assert sent == []
            assert await pending(redis_admin, prefix) == 1
            await redis_admin.execute_command("ACL", "SETUSER", user, "+mget")
            await drain(bus, timeout=10)
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert sent == ["o-1"]
    assert await redis_admin.exists(record_key(prefix, "e-1"))


async def test_a_record_reaches_redis_before_the_handler_takes_its_next_event(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """Each record is in Redis before the handler's next delivery of the same batch runs."""
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.1, prefetch=16)
    bus = EventBus(transport=transport)
    seen_before: list[bool] = []
    ids: list[str] = []

    @bus.subscribe(group=GROUP, idempotent=True)
    async def send(event: OrderCreated, context: Context) -> None:
        if ids:
            seen_before.append(bool(await redis_admin.exists(record_key(prefix, ids[-1]))))
        ids.append(context.envelope.id)

    async with EventBus(transport=transport) as publisher:
        await publisher.publish_many([OrderCreated(order_id=f"o-{i}") for i in range(5)])
    async with bus:
        await drain(bus, timeout=10)
    assert seen_before == [True, True, True, True]
