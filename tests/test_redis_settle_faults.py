"""Settling under faults on Redis: entries deleted while their handler runs, settle
writes that Redis refuses, consumers of dead workers."""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

import pytest

from eventbus import EventBus, RetryPolicy
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
