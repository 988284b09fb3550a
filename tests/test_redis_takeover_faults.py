"""Takeovers on Redis: a worker restarting under its old name while another worker takes
over the entries that name held. One entry is held by one consumer at a time, and its
delivery count counts real deliveries only.

The race is driven through the transport API in a fixed order: the old incarnation of
consumer ``w`` is played by an admin client (it read three entries and died long ago).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from eventbus.transports import Delivery
from eventbus.transports.redis import RedisTransport
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

GROUP = "ship"
TOPIC = "orders"
LONG_AGO_MS = 100_000  # how long the old incarnation of ``w`` has been silent


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


class Race:
    """Three entries held by the dead incarnation of consumer ``w``, and the consumers
    that come after it."""

    def __init__(self, url: str, admin: Any, stack: AsyncExitStack) -> None:
        self.url = url
        self.admin = admin
        self.prefix = f"t{secrets.token_hex(4)}"
        self.stream = f"{self.prefix}:{{{TOPIC}}}"
        self.ids: list[str] = []
        self._stack = stack

    async def leave_entries_to_a_dead_w(self) -> None:
        """XADD three entries; ``w`` reads them and falls silent long ago."""
        for i in range(3):
            self.ids.append((await self.admin.xadd(self.stream, {"i": str(i)})).decode())
        await self.admin.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        await self.admin.xreadgroup(GROUP, "w", {self.stream: ">"}, count=3)
        await self.admin.xclaim(self.stream, GROUP, "w", 0, self.ids, idle=LONG_AGO_MS, justid=True)

    async def consumer(self, name: str, claim_timeout: float) -> tuple[Any, Any]:
        """A connection under consumer name ``name`` (one suspect at a time: prefetch 1)
        and its subscription to the group; both closed at the end of the test."""
        transport = RedisTransport(
            self.url, prefix=self.prefix, consumer_name=name, prefetch=1,
            claim_timeout=claim_timeout, block=0.1,
        )  # fmt: skip
        conn = await transport.connect()
        self._stack.push_async_callback(conn.aclose)
        sub = await conn.subscribe(TOPIC, GROUP)
        return conn, sub

    async def owner_and_count(self, entry_id: str) -> tuple[str, int]:
        """The consumer holding ``entry_id``, and its delivery count."""
        (row,) = await self.admin.xpending_range(self.stream, GROUP, entry_id, entry_id, 1)
        return row["consumer"].decode(), int(row["times_delivered"])

    async def idle_ms(self, entry_id: str) -> int:
        """How long ``entry_id`` has been idle, in ms."""
        (row,) = await self.admin.xpending_range(self.stream, GROUP, entry_id, entry_id, 1)
        return int(row["time_since_delivered"])


@asynccontextmanager
async def race(redis_server: RedisServer, redis_admin: Any) -> AsyncIterator[Race]:
    """A ``Race`` under a fresh prefix, its consumers closed on the way out."""
    async with AsyncExitStack() as stack:
        scene = Race(redis_server.url, redis_admin, stack)
        await scene.leave_entries_to_a_dead_w()
        yield scene


async def received(sub: Any) -> Delivery:
    """The next delivery of ``sub`` (within 10 s)."""
    with anyio.fail_after(10):
        delivery = await sub.receive()
    assert isinstance(delivery, Delivery)
    return delivery


async def test_restarted_consumer_does_not_take_an_entry_another_consumer_took_over(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Fault: restarted ``w`` took unconditionally an entry ``b`` had claimed: both ran it."""
    async with race(redis_server, redis_admin) as scene:
        first, second, third = scene.ids
        _, restarted = await scene.consumer("w", claim_timeout=60)
        taken_by_w = await received(restarted)  # w lists all three as its own, takes one
        _, heir = await scene.consumer("b", claim_timeout=60)
        taken_by_b = await received(heir)  # b claims the next, idle for long, and takes it
        await restarted.ack(taken_by_w)
        next_of_w = await received(restarted)
        owner, deliveries = await scene.owner_and_count(second)
    assert [d.id for d in (taken_by_w, taken_by_b, next_of_w)] == [first, second, third]
    assert (owner, deliveries) == ("b", 2)  # read by the old w, then by b: never by both


async def test_lease_renewal_does_not_take_back_an_entry_another_consumer_took_over(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Fault: restarted ``w`` renewed the lease of an entry ``b`` had claimed, taking it back."""
    async with race(redis_server, redis_admin) as scene:
        _, second, third = scene.ids
        conn, restarted = await scene.consumer("w", claim_timeout=0.3)  # renews every 0.1 s
        await received(restarted)
        _, heir = await scene.consumer("b", claim_timeout=60)
        taken_by_b = await received(heir)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.serve)
            await wait_for(
                lambda: _renewed(scene, third), 10, "w to renew the leases of what it holds"
            )
            owner, deliveries = await scene.owner_and_count(second)
            tg.cancel_scope.cancel()
    assert taken_by_b.id == second
    assert (owner, deliveries) == ("b", 2)


async def _renewed(scene: Race, entry_id: str) -> bool:
    return await scene.idle_ms(entry_id) < LONG_AGO_MS // 2


async def test_restarted_consumer_takes_its_own_entries_once(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Alone, the restarted ``w`` takes each of its own entries once, counting one delivery."""
    async with race(redis_server, redis_admin) as scene:
        _, restarted = await scene.consumer("w", claim_timeout=60)
        seen = []
        for _ in scene.ids:
            delivery = await received(restarted)
            seen.append(delivery.id)
            assert await scene.owner_and_count(delivery.id) == ("w", 2)
            await restarted.ack(delivery)
    assert seen == scene.ids


async def test_message_of_a_taken_entry_is_its_fields(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """A taken suspect carries the entry's fields as its message."""
    async with race(redis_server, redis_admin) as scene:
        _, restarted = await scene.consumer("w", claim_timeout=60)
        delivery = await received(restarted)
    assert (delivery.message.headers, delivery.message.body) == ({"i": "0"}, b"")
