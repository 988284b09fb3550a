"""The whole bus over a private redis-server: the README flow, retries, dead letters."""

from __future__ import annotations

import logging
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from eventbus import ConfigurationError, Context, EventBus, RetryPolicy
from eventbus.testing import capture, drain
from eventbus.transports import Message
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid, UserBanned
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def transport(redis_server: RedisServer) -> RedisTransport:
    """A Redis transport on a fresh key prefix."""
    return RedisTransport(redis_server.url, prefix=f"b{secrets.token_hex(4)}", block=0.2)


async def test_readme_flow_runs_on_redis(transport: RedisTransport) -> None:
    """Publish, handle in two groups, drain, no dead letters: the README example."""
    bus = EventBus(transport=transport)
    seen: list[tuple[str, str]] = []

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=5))
    async def send_confirmation(event: OrderCreated) -> None:
        seen.append(("email", event.order_id))

    @bus.subscribe(group="stock")
    async def reserve(event: OrderCreated) -> None:
        seen.append(("stock", event.order_id))

    async with bus:
        with capture(bus) as published:
            await bus.publish(OrderCreated(order_id="o-1", total=Decimal("9.90")))
        await drain(bus, timeout=10)
        assert await bus.dead_letters() == []
    assert sorted(seen) == [("email", "o-1"), ("stock", "o-1")]
    assert len(published) == 1


async def test_retries_and_dead_letters_live_in_redis(transport: RedisTransport) -> None:
    """A failing handler is retried through Redis, then dead-lettered, then replayed."""
    bus = EventBus(transport=transport)
    attempts: list[int] = []
    broken = True

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=3, initial_delay=0.05))
    async def flaky(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        if broken:
            raise ConnectionError("smtp down")

    async with bus:
        envelope = await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False, timeout=10)
        (dead,) = await bus.dead_letters("email")
        assert (dead.reason, dead.attempts, dead.envelope and dead.envelope.id) == (
            "retries-exhausted",
            3,
            envelope.id,
        )
        assert dead.event == OrderCreated(order_id="o-1")
        broken = False
        assert await bus.replay_dead_letters("email") == 1
        await drain(bus, timeout=10)
        assert await bus.dead_letters() == []
    assert attempts == [1, 2, 3, 1]


async def test_entries_from_other_programs_are_dead_lettered(
    transport: RedisTransport, redis_server: RedisServer
) -> None:
    """Malformed entries written straight to the stream are dead-lettered; work goes on
    (a newer version at once too, with ``newer_versions=RetryPolicy.none()``)."""
    bus = EventBus(transport=transport, newer_versions=RetryPolicy.none())
    handled: list[str] = []

    @bus.subscribe(group="stock")
    async def stock(event: OrderPaid) -> None:
        handled.append(event.order_id)

    stream = f"{transport._settings.prefix}:{{OrderPaid}}"
    good: dict[Any, Any] = {
        "id": "x",
        "name": "OrderPaid",
        "version": "1",
        "time": "2026-01-01T00:00Z",
    }
    async with bus:
        raw = aioredis.Redis.from_url(redis_server.url)
        await raw.xadd(stream, {**good, "payload": b"{not json"})
        await raw.xadd(stream, {"payload": b"{}"})
        await raw.xadd(stream, {**good, "name": b"\xff\xfe", "payload": b"{}"})
        await raw.xadd(stream, {**good, "version": "2", "payload": b'{"order_id": "a"}'})
        await raw.xadd(stream, {**good, "payload": b'{"order_id": "ok"}'})
        await raw.aclose()
        await drain(bus, reraise=False, timeout=10)
        dead = await bus.dead_letters("stock")
    assert handled == ["ok"]
    assert [d.reason for d in dead] == ["malformed", "malformed", "unknown-event", "wrong-version"]
    assert dead[0].body == b"{not json"


async def test_urgent_event_skips_a_background_backlog_on_redis(
    transport: RedisTransport,
) -> None:
    """With 2,000 events queued for a subscriber, its urgent one, published last, goes early."""
    order: list[str] = []

    async def on_event(event: OrderCreated | UserBanned) -> None:
        order.append("ban" if isinstance(event, UserBanned) else "order")

    async with EventBus(transport=transport) as producer:
        worker = EventBus(transport=transport)
        worker.subscribe(group="auth")(on_event)
        async with worker:  # creates the groups, then the producer fills the backlog
            pass
        for i in range(2000):
            await producer.publish(OrderCreated(order_id=str(i)))
        await producer.publish(UserBanned(user_id="u-1"))  # the last one published
        worker = EventBus(transport=transport)
        worker.subscribe(group="auth")(on_event)
        async with worker:
            await drain(worker, timeout=30)
    assert order.count("order") == 2000
    # The background consumer goes on with batches of its prefetch (64 entries) while
    # the ban's consumer starts and reads (a few round trips: 3 to 5 batches measured on
    # a loaded machine); the ban never waits for the backlog of 2,000.
    assert order.index("ban") < 8 * 64


async def test_urgent_event_does_not_wait_for_the_busy_background_handler_on_redis(
    transport: RedisTransport,
) -> None:
    """Concurrency 1: an urgent event is handled while the background handler is blocked."""
    bus = EventBus(transport=transport)
    order_started, banned, release = anyio.Event(), anyio.Event(), anyio.Event()
    handled: list[str] = []

    @bus.subscribe(group="auth", concurrency=1)
    async def on_event(event: OrderCreated | UserBanned) -> None:
        if isinstance(event, OrderCreated):
            order_started.set()
            await release.wait()
            handled.append(event.order_id)
        else:
            handled.append(event.user_id)
            banned.set()

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with anyio.fail_after(10):
            await order_started.wait()
        await bus.publish(UserBanned(user_id="u-1"))
        with anyio.move_on_after(10):  # a guard against a hang, not a bound on speed
            await banned.wait()
        handled_while_blocked = list(handled)
        release.set()
        await drain(bus, timeout=10)
    assert handled_while_blocked == ["u-1"]
    assert handled == ["u-1", "o-1"]


async def test_start_warns_about_eviction_and_missing_persistence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connecting warns when Redis may evict streams or keeps nothing on disk."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    try:
        admin = aioredis.Redis.from_url(server.url)
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        await admin.aclose()
        async with EventBus(transport=RedisTransport(server.url)):
            pass
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "eventbus.redis"]
    assert any("allkeys-lru" in w and "noeviction" in w for w in warnings)
    assert any("persists nothing" in w for w in warnings)


async def test_no_warning_for_a_safe_server(
    transport: RedisTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """A server with append-only on and noeviction gives no warning."""
    async with EventBus(transport=transport):
        pass
    assert [r for r in caplog.records if r.name == "eventbus.redis"] == []


async def test_flushed_redis_is_reported_and_the_group_recreated(tmp_path: Path) -> None:
    """After FLUSHALL the worker logs that Redis lost state, recreates its group, goes on."""
    lost = anyio.Event()
    watcher = logging.Handler()
    watcher.emit = lambda record: lost.set() if "lost the consumer" in record.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("eventbus.redis").addHandler(watcher)
    server = RedisServer(tmp_path)
    server.start()
    try:
        transport = RedisTransport(server.url, block=0.1)
        bus = EventBus(transport=transport)
        seen: list[str] = []

        @bus.subscribe(group="stock")
        async def record(event: OrderPaid) -> None:
            seen.append(event.order_id)

        async with bus:
            await bus.publish(OrderPaid(order_id="before"))
            await drain(bus, timeout=10)
            admin = aioredis.Redis.from_url(server.url)
            await admin.flushall()
            await admin.aclose()
            with anyio.fail_after(10):
                await lost.wait()
            await bus.publish(OrderPaid(order_id="after"))
            await drain(bus, timeout=10)
    finally:
        server.stop()
        logging.getLogger("eventbus.redis").removeHandler(watcher)
    assert seen == ["before", "after"]


async def test_entry_deleted_while_pending_becomes_a_dead_letter(
    transport: RedisTransport, redis_server: RedisServer
) -> None:
    """An entry XDEL'd while a dead consumer held it is recorded as a 'deleted' letter."""
    conn = await transport.connect()
    stream = transport._settings.prefix + ":{orders}"
    sub = await conn.subscribe("orders", "g")
    entry = await conn.publish("orders", Message(b"{}", {"i": "1"}))
    assert await sub.receive() is not None
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.xdel(stream, entry)
    await admin.aclose()
    other = RedisTransport(redis_server.url, prefix=transport._settings.prefix, claim_timeout=0.05)
    async with EventBus(transport=other) as bus:
        taker = await bus._open_connection().subscribe("orders", "g")
        with anyio.fail_after(10):
            while not await bus.dead_letters("g"):
                with anyio.move_on_after(0.1):
                    await taker.receive()
        (dead,) = await bus.dead_letters("g")
    await conn.aclose()
    assert dead.reason == "deleted"
    assert dead.first_failed_at.year >= 2026


async def test_clean_close_removes_the_consumer_from_its_group(
    transport: RedisTransport, redis_server: RedisServer
) -> None:
    """A bus that closes holding nothing leaves no consumer behind in its groups."""
    bus = EventBus(transport=transport)

    @bus.subscribe(group="g")
    async def record(event: OrderPaid) -> None:
        pass

    for _ in range(3):
        bus = EventBus(transport=transport)
        bus.subscribe(group="g")(record)
        async with bus:
            await bus.publish(OrderPaid(order_id="o"))
            await drain(bus, timeout=10)
    admin = aioredis.Redis.from_url(redis_server.url)
    consumers = await admin.xinfo_consumers(f"{transport._settings.prefix}:{{OrderPaid}}", "g")
    await admin.aclose()
    assert consumers == []


def test_transport_options_and_url_are_checked_at_construction() -> None:
    """Bad options or a URL with a bad port raise ConfigurationError without the password."""
    for options in (
        {"claim_timeout": float("nan")},
        {"block": True},
        {"publish_retry_for": -1},
        {"maxlen": True},
        {"prefetch": 0},
        {"prefix": "has space"},
        {"consumer_name": "a b"},
    ):
        with pytest.raises(ConfigurationError):
            RedisTransport("redis://localhost:6379/0", **options)
    with pytest.raises(ConfigurationError) as raised:
        RedisTransport("redis://user:s3cret@localhost:notaport/0")
    assert "s3cret" not in str(raised.value)


def test_settings_never_show_the_password() -> None:
    """The transport's repr and its settings' repr hide the URL."""
    transport = RedisTransport("redis://user:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(transport)
    assert "s3cret" not in repr(transport._settings)


async def test_acks_queued_during_a_flush_are_sent_by_the_next_one(
    transport: RedisTransport, redis_server: RedisServer
) -> None:
    """An ack queued while a flush waits on Redis is not lost when that flush ends."""
    conn = await transport.connect()
    sub = await conn.subscribe("orders", "g")
    await conn.publish_many([("orders", Message(b"{}", {"i": str(i)})) for i in range(2)])
    first, second = await sub.receive(), await sub.receive()
    assert first is not None
    assert second is not None
    admin = aioredis.Redis.from_url(redis_server.url)
    await sub.ack(first)
    await admin.client_pause(300, all=False)  # writes wait, reads go on
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.flush_acks)  # held by the pause
        await anyio.wait_all_tasks_blocked()
        await sub.ack(second)  # queued while the first flush waits
    await sub.flush_acks()
    pending = await admin.xpending(f"{transport._settings.prefix}:{{orders}}", "g")
    await admin.aclose()
    await conn.aclose()
    assert pending["pending"] == 0


async def test_inspect_shows_what_waits_for_a_stopped_group_on_redis(
    transport: RedisTransport,
) -> None:
    """A group whose worker stopped shows the events published since as waiting, and a
    dead letter of another group is counted with its group."""
    worker = EventBus(transport=transport)

    @worker.subscribe(group="email")
    async def send(event: OrderCreated) -> None:
        pass

    @worker.subscribe(group="audit", retry=RetryPolicy.none())
    async def audit(event: OrderPaid) -> None:
        raise ValueError("audit store refused it")

    async with worker:
        await worker.publish(OrderPaid(order_id="o-0"))
        await drain(worker, reraise=False, timeout=10)
    async with EventBus(transport=transport) as producer:
        await producer.publish_many([OrderCreated(order_id=str(i)) for i in range(3)])
        stats = {(s.topic, s.group): s for s in await producer.inspect()}
    email, audited = stats["OrderCreated", "email"], stats["OrderPaid", "audit"]
    assert (email.waiting, email.in_flight, email.scheduled, email.dead_letters) == (3, 0, 0, 0)
    assert (audited.waiting, audited.in_flight, audited.dead_letters) == (0, 0, 1)


async def test_inspect_on_redis_gives_length_consumers_and_the_oldest_pending_age(
    transport: RedisTransport,
) -> None:
    """An entry held unacknowledged: the oldest pending entry's age, the consumer's idle."""
    conn = await transport.connect()
    try:
        sub = await conn.subscribe("OrderCreated", "email")
        await conn.publish("OrderCreated", Message(b"{}", {"id": "a"}))
        await conn.publish("OrderCreated", Message(b"{}", {"id": "b"}))
        held = await sub.receive()
        assert held is not None
        (stats,) = await conn.inspect()
    finally:
        await conn.aclose()
    assert (stats.stream_length, stats.consumers, stats.in_flight) == (2, 1, 2)
    assert stats.oldest_pending_age is not None
    assert 0 <= stats.oldest_pending_age < 60
    ((name, idle),) = stats.idle
    assert name  # the connection's consumer name
    assert 0 <= idle < 60
