"""The Redis consumer: RESP3, stream caps, refused or lost acks, closing while blocked, leases."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
from redis.exceptions import NoPermissionError

from eventbus import EventBus, RetryPolicy
from eventbus.testing import drain
from eventbus.transports import Message
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid
from tests.redis_server import RedisServer
from tests.tcp_proxy import running_proxy
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


async def test_refused_acks_are_kept_and_reading_waits_until_they_are_taken(
    redis_server: RedisServer, redis_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """XACK refused (an ACL without it): the acks are kept, the worker reads nothing more
    meanwhile (its memory stays bounded), nothing is handled twice, and everything is
    acknowledged once Redis accepts XACK."""
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

    def refusals() -> int:
        return sum(1 for r in caplog.records if r.exc_info and r.exc_info[0] is NoPermissionError)

    async def pending() -> int:
        return int((await redis_admin.xpending(f"{keys}:{{OrderPaid}}", "mail"))["pending"])

    try:
        async with EventBus(transport=RedisTransport(redis_server.url, prefix=keys)) as producer:
            for i in range(3):  # before the worker's group exists: its first read takes all
                await producer.publish(OrderPaid(order_id=f"o-{i}"))
            async with worker:
                await wait_for(lambda: len(handled) == 3, 10, "the three events to be handled")
                await wait_for(lambda: refusals() >= 1, 10, "an XACK to be refused")
                await producer.publish(OrderPaid(order_id="o-3"))
                seen = refusals()
                await wait_for(lambda: refusals() > seen, 10, "the worker to try again")
                assert handled == ["o-0", "o-1", "o-2"]  # o-3 waits in Redis, unread
                assert await pending() == 3
                await redis_admin.execute_command("ACL", "SETUSER", user, "+xack")
                await wait_for(lambda: len(handled) == 4, 10, "o-3 to be read and handled")

                async def nothing_pending() -> bool:
                    return await pending() == 0

                await wait_for(nothing_pending, 10, "the kept acks to be sent")
    finally:
        await redis_admin.execute_command("ACL", "DELUSER", user)
    assert handled == ["o-0", "o-1", "o-2", "o-3"]


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


async def test_a_subscription_closed_while_its_acks_travel_sends_them_again(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Close while the read that carries the last acks waits on a paused Redis (writes
    paused: the XACK waits too): the close sends them again, nothing stays pending."""
    keys = prefix()
    conn = await RedisTransport(redis_server.url, prefix=keys, block=5).connect()
    try:
        sub = await conn.subscribe("OrderPaid", "mail")
        for i in range(3):
            await conn.publish("OrderPaid", Message(b"{}", {"id": f"e-{i}"}))
        for _ in range(3):
            delivery = await sub.receive()
            assert delivery is not None
            await sub.ack(delivery)
        await redis_admin.client_pause(1000, all=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.receive)  # sends the three acks with its read
            await wait_for(lambda: bool(sub._acks.sending), 5, "the acks to be sent")
            await sub.aclose()
    finally:
        await conn.aclose()
    assert (await redis_admin.xpending(f"{keys}:{{OrderPaid}}", "mail"))["pending"] == 0


async def blocked_ackers(admin: Any) -> list[int]:
    """Ids of the clients whose XACK is held (by CLIENT PAUSE WRITE)."""
    clients = await admin.client_list()
    return [int(c["id"]) for c in clients if c["cmd"] == "xack" and "b" in c["flags"]]


async def kill_blocked_ackers(admin: Any) -> None:
    """Wait for a client's XACK to be held by the pause, then kill every such client."""

    async def held() -> bool:
        return bool(await blocked_ackers(admin))

    await wait_for(held, 10, "an XACK to be held by the pause")
    for client_id in await blocked_ackers(admin):
        await admin.client_kill_filter(_id=client_id)


async def test_acks_cut_off_with_their_read_are_sent_again(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """An ack whose read is killed before Redis applies it is sent again, not left to expire."""
    keys = prefix()
    transport = RedisTransport(redis_server.url, prefix=keys, claim_timeout=120, block=30)
    bus = EventBus(transport=transport)
    handled: list[str] = []

    @bus.subscribe(group="mail")
    async def send(event: OrderPaid) -> None:
        handled.append(event.order_id)
        await redis_admin.client_pause(10_000, all=False)  # the next read, with the ack, waits

    async with bus:
        try:
            await bus.publish(OrderPaid(order_id="o-1"))
            await kill_blocked_ackers(redis_admin)
        finally:
            await redis_admin.client_unpause()
        await drain(bus, timeout=10)  # the claim timeout is 120 s
    assert handled == ["o-1"]
    assert (await redis_admin.xpending(f"{keys}:{{OrderPaid}}", "mail"))["pending"] == 0


async def test_acks_cut_off_in_a_flush_are_sent_again(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """An ack whose flush in drain() is killed before Redis applies it is sent again."""
    keys = prefix()
    transport = RedisTransport(redis_server.url, prefix=keys, claim_timeout=120, block=30)
    bus = EventBus(transport=transport)
    handled: list[str] = []
    started, release = anyio.Event(), anyio.Event()

    @bus.subscribe(group="mail", concurrency=2)
    async def send(event: OrderPaid) -> None:
        started.set()
        await release.wait()
        handled.append(event.order_id)

    async def reading() -> bool:
        clients = await redis_admin.client_list()
        return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)

    async with bus:
        await bus.publish(OrderPaid(order_id="o-1"))
        await wait_for(lambda: started.is_set(), 10, "the handler to start")
        await wait_for(reading, 10, "the other loop to block in a read")  # without the ack
        await redis_admin.client_pause(10_000, all=False)
        try:
            release.set()  # the ack is queued; drain() flushes it on a connection of the pool
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(drain, bus)
                await kill_blocked_ackers(redis_admin)
                await redis_admin.client_unpause()
        finally:
            await redis_admin.client_unpause()
    assert handled == ["o-1"]
    assert (await redis_admin.xpending(f"{keys}:{{OrderPaid}}", "mail"))["pending"] == 0


@pytest.mark.parametrize("read", ["shared", "own"])
async def test_an_entry_whose_read_lost_its_reply_is_handled_at_once(
    redis_server: RedisServer, read: str
) -> None:
    """A read Redis ran but whose reply was lost: its entry comes back within seconds."""
    async with running_proxy(redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        transport = RedisTransport(url, prefix=prefix(), claim_timeout=300, block=5)
        bus = EventBus(transport=transport)
        seen: list[str] = []

        @bus.subscribe(group="stock")
        async def reserve(event: OrderCreated) -> None:
            seen.append(event.order_id)

        async with bus:
            if read == "own":  # an event first: the next read is the subscription's own
                await bus.publish(OrderCreated(order_id="first"))
                await wait_for(lambda: seen == ["first"], 15, "the first event")
            proxy.drop_reply_with(b"lost-reply")
            await bus.publish(OrderCreated(order_id="lost-reply"))
            await wait_for(lambda: "lost-reply" in seen, 15, "the entry of the lost reply")
        assert proxy.dropped == 1
