"""The transport's own Redis connections: reuse, replies in order, closed by the server."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from eventbus import EventBus
from eventbus.transports._redis_links import Links, ready, resp_command, round_trip
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A redis-py client of the private server."""
    redis_client: Any = aioredis.Redis.from_url(redis_server.url)
    yield redis_client
    await redis_client.aclose()


def closed_by_server(conn: Any) -> bool:
    """Whether the event loop has seen Redis close this connection."""
    reader = conn._reader
    return reader is None or reader.at_eof() or reader.exception() is not None


def test_resp_command_packs_binary_arguments() -> None:
    assert (
        resp_command([b"SET", b"k", b"a\r\nb"]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"
    )


async def test_round_trip_reads_every_reply_in_order_errors_included(client: Any) -> None:
    """An error reply in the middle is returned in its place; the later replies still come."""
    links = Links(client)
    conn = links.take()
    key = f"links:{secrets.token_hex(4)}"
    await ready(conn)
    packed = b"".join(
        [
            resp_command([b"SET", key.encode(), b"1"]),
            resp_command([b"LPUSH", key.encode(), b"x"]),  # wrong type: an error reply
            resp_command([b"INCR", key.encode()]),
        ]
    )
    replies = await round_trip(conn, packed, 3)
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2] == 2
    links.give_back(conn)
    assert links.take() is conn  # reused, not made again
    await links.aclose()
    assert not conn.is_connected


async def test_ready_reconnects_a_connection_redis_closed_while_idle(client: Any) -> None:
    links = Links(client)
    conn = links.take()
    await ready(conn)
    (first_id,) = await round_trip(conn, resp_command([b"CLIENT", b"ID"]), 1)
    assert await client.client_kill_filter(_id=first_id) == 1
    await wait_for(lambda: closed_by_server(conn), 5, "the loop to see the close")
    await ready(conn)
    (second_id,) = await round_trip(conn, resp_command([b"CLIENT", b"ID"]), 1)
    assert second_id != first_id
    await links.aclose()


async def test_publish_after_redis_dropped_idle_connections_is_not_outcome_unknown(
    redis_server: RedisServer, client: Any
) -> None:
    """CLIENT KILL of every idle connection: the next publish reconnects and stores the
    event; nothing was sent on the dead connection, so the outcome is known."""
    prefix = f"k{secrets.token_hex(4)}"
    transport = RedisTransport(redis_server.url, prefix=prefix)
    async with EventBus(transport=transport) as bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        links: Links = bus._conn.links  # type: ignore[union-attr]
        (spare,) = links._spare
        killed = await client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        await wait_for(lambda: closed_by_server(spare), 5, "the loop to see the close")
        await bus.publish(OrderCreated(order_id="o-2"))
    assert await client.xlen(f"{prefix}:{{OrderCreated}}") == 2
