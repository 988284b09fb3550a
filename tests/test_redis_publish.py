"""Publishing to Redis when something goes wrong: unencodable events, an unreachable
server, a batch that fails part-way."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventbus import (
    EncodeError,
    Envelope,
    Event,
    EventBus,
    Middleware,
    Next,
    PublishOutcomeUnknownError,
    PublishRefusedError,
    TransportError,
)
from eventbus.transports import Message
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated, OrderPaid
from tests.redis_server import RedisServer
from tests.tcp_proxy import running_proxy

pytestmark = pytest.mark.anyio

SECRET = "jane.doe@example.com"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix."""
    return f"p{secrets.token_hex(4)}"


@pytest.fixture
def transport(redis_server: RedisServer, prefix: str) -> RedisTransport:
    """A Redis transport on a fresh key prefix."""
    return RedisTransport(redis_server.url, prefix=prefix, block=0.2)


async def test_unencodable_fields_and_headers_raise_encode_error_and_store_nothing(
    transport: RedisTransport, redis_admin: Any, prefix: str
) -> None:
    """A lone surrogate in a field or an id header: EncodeError naming it, nothing stored."""
    bad_ids: list[dict[str, Any]] = [
        {"correlation_id": f"{SECRET}\ud800"},
        {"causation_id": f"{SECRET}\ud800"},
    ]
    errors: list[EncodeError] = []
    async with EventBus(transport=transport) as bus:
        with pytest.raises(EncodeError) as raised:
            await bus.publish(OrderCreated(order_id=f"{SECRET}\ud800"))
        errors.append(raised.value)
        for ids in bad_ids:
            with pytest.raises(EncodeError) as raised:
                await bus.publish(OrderCreated(order_id="o-1"), **ids)
            errors.append(raised.value)
            with pytest.raises(EncodeError) as raised:
                await bus.publish_many([OrderCreated(order_id="o-2")], **ids)
            errors.append(raised.value)
        await bus.publish(OrderCreated(order_id="o-3"), headers={"note": "\ud800"})  # JSON-escaped
    fields = [(e.event_name, e.field) for e in errors]
    assert fields == [("OrderCreated", "order_id")] + [
        ("OrderCreated", name) for name in ("correlation_id", "causation_id") for _ in "12"
    ]
    assert all(SECRET not in str(e) and e.__cause__ is None for e in errors)
    assert await redis_admin.xlen(f"{prefix}:{{OrderCreated}}") == 1


class SkippedWaits:
    """Stands in for ``anyio.current_time`` and ``anyio.sleep``: time runs as usual, but a
    wait is skipped (the clock jumps by it at once), and where it ends is recorded, from
    the clock reading that scheduled it."""

    def __init__(self) -> None:
        self._real_time, self._real_sleep = anyio.current_time, anyio.sleep
        self._skipped = 0.0
        self.readings: list[float] = []
        self.wait_ends: list[float] = []

    def current_time(self) -> float:
        """Real time plus the waits skipped so far."""
        self.readings.append(self._real_time() + self._skipped)
        return self.readings[-1]

    async def sleep(self, delay: float) -> None:
        """Skip the wait; let other tasks run once."""
        self.wait_ends.append(self.readings[-1] + delay)
        self._skipped += delay
        await self._real_sleep(0)


async def test_publish_retry_for_is_a_deadline_the_backoff_never_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped: no wait between attempts ends past publish_retry_for; then it raises."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        transport = RedisTransport(server.url, publish_retry_for=0.5)
        conn = await transport.connect()
    finally:
        server.stop()
    clock = SkippedWaits()
    monkeypatch.setattr(anyio, "current_time", clock.current_time)
    monkeypatch.setattr(anyio, "sleep", clock.sleep)
    try:
        with pytest.raises(TransportError, match=r"publish_retry_for=0\.5") as raised:
            await conn.publish("OrderCreated", Message(b"{}", {"id": "e-1"}))
    finally:
        monkeypatch.undo()
        await conn.aclose()
    deadline = clock.readings[0] + 0.5  # the first reading is when the publish began
    assert not isinstance(raised.value, PublishOutcomeUnknownError)
    assert len(clock.wait_ends) >= 2  # it did retry, with backoff
    assert max(clock.wait_ends) == pytest.approx(deadline, abs=1e-6)  # the last, cut to the end
    assert all(end <= deadline + 1e-9 for end in clock.wait_ends)


async def test_connecting_counts_against_publish_retry_for(redis_server: RedisServer) -> None:
    """A server that accepts but never answers: the connect attempt ends at the deadline."""
    async with running_proxy(redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        conn = await RedisTransport(url, publish_retry_for=0.3).connect()
        proxy.silent = True  # the pool's connection stays open; new ones hang
        try:
            with anyio.fail_after(10):  # a guard against a hang, not a bound on speed
                with pytest.raises(TransportError) as raised:
                    await conn.publish("OrderCreated", Message(b"{}", {"id": "e-1"}))
        finally:
            await conn.aclose()
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert proxy.connections == 2  # the pool's, then one attempt that used up the deadline


async def test_a_batch_refused_in_part_says_which_events_were_stored(
    transport: RedisTransport, redis_admin: Any, prefix: str
) -> None:
    """One stream key of the wrong type: PublishRefusedError gives each event's id or None."""
    await redis_admin.set(f"{prefix}:{{OrderPaid}}", "not a stream")
    batch = [OrderCreated(order_id="a"), OrderPaid(order_id="b"), OrderCreated(order_id="c")]
    async with EventBus(transport=transport) as bus:
        with pytest.raises(PublishRefusedError, match="WRONGTYPE") as raised:
            await bus.publish_many(batch)
        with pytest.raises(PublishRefusedError) as single:
            await bus.publish(OrderPaid(order_id="d"))
    entries = await redis_admin.xrange(f"{prefix}:{{OrderCreated}}")
    stored_ids = raised.value.stored_ids
    assert stored_ids[1] is None
    assert [i for i in stored_ids if i is not None] == [e[0].decode() for e in entries]
    assert [json.loads(e[1][b"payload"])["order_id"] for e in entries] == ["a", "c"]
    assert single.value.stored_ids == (None,)
    assert isinstance(raised.value, TransportError)


async def test_a_batch_cut_midway_says_how_many_first_events_are_stored(
    redis_server: RedisServer, redis_admin: Any, prefix: str
) -> None:
    """The connection closes after 4 of 10 replies: PublishOutcomeUnknownError(stored=4)."""
    batch = [OrderCreated(order_id=f"o-{i}") for i in range(10)]
    async with running_proxy(redis_server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with EventBus(transport=RedisTransport(url, prefix=prefix)) as bus:
            await bus.publish(OrderCreated(order_id="warm-up"))  # the publish link is open
            proxy.cut_after_ids(4)
            with pytest.raises(PublishOutcomeUnknownError) as raised:
                await bus.publish_many(batch)
            again = await bus.publish_many(batch[raised.value.stored :])  # the advised retry
    entries = await redis_admin.xrange(f"{prefix}:{{OrderCreated}}")
    stored = [json.loads(fields[b"payload"])["order_id"] for _, fields in entries]
    assert raised.value.stored == 4
    assert "the first 4 of 10 events are stored" in str(raised.value)
    assert stored[:5] == ["warm-up", "o-0", "o-1", "o-2", "o-3"]  # known stored: not repeated
    assert len(again) == 6


class PassOn(Middleware):
    """A middleware that passes every publish on (so publish_many goes one by one)."""

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        """Just the next step."""
        await call_next()


async def test_a_batch_sent_one_by_one_stops_at_a_refusal_and_says_what_was_stored(
    transport: RedisTransport, redis_admin: Any, prefix: str
) -> None:
    """With middleware: the ids of the events before the refused one, then None; no more."""
    await redis_admin.set(f"{prefix}:{{OrderPaid}}", "not a stream")
    batch = [OrderCreated(order_id="a"), OrderPaid(order_id="b"), OrderCreated(order_id="c")]
    async with EventBus(transport=transport, middleware=[PassOn()]) as bus:
        with pytest.raises(PublishRefusedError) as raised:
            await bus.publish_many(batch)
    entries = await redis_admin.xrange(f"{prefix}:{{OrderCreated}}")
    assert raised.value.stored_ids == (entries[0][0].decode(), None)
    assert len(entries) == 1  # "c" was not sent
