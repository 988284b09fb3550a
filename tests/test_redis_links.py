"""The transport's own Redis connections: reuse, replies in order, closed by the server."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from redis.exceptions import ResponseError

from eventbus import (
    EventBus,
    PublishOutcomeUnknownError,
    PublishTimeoutError,
    TransportClosedError,
)
from eventbus.transports.redis import RedisTransport
from eventbus.transports.redis._commands import resp_command
from eventbus.transports.redis._links import Links, ensure_connected, round_trip
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


def closed_by_server(conn: Any) -> bool:
    """Whether the event loop has seen Redis close this connection (redis-py internals)."""
    reader = conn._reader
    return reader is None or reader.at_eof() or reader.exception() is not None


async def test_round_trip_reads_every_reply_in_order_errors_included(redis_admin: Any) -> None:
    """An error reply in the middle is returned in its place; the later replies still come."""
    links = Links(redis_admin)
    conn = links.take("k")
    key = f"links:{secrets.token_hex(4)}".encode()
    await ensure_connected(conn)
    packed = b"".join(
        [
            resp_command([b"SET", key, b"1"]),
            resp_command([b"LPUSH", key, b"x"]),  # wrong type: an error reply
            resp_command([b"INCR", key]),
        ]
    )
    replies = await round_trip(conn, packed, 3)
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2] == 2
    await links.give_back(conn)
    assert links.take("k") is conn  # reused, not made again
    assert links.count == 1
    await links.aclose()
    assert not conn.is_connected
    assert links.count == 0


async def test_ensure_connected_reopens_a_connection_redis_closed_while_idle(
    redis_admin: Any,
) -> None:
    """CLIENT KILL of an idle connection: the next command goes on a new connection."""
    links = Links(redis_admin)
    conn = links.take("k")
    await ensure_connected(conn)
    (first_id,) = await round_trip(conn, resp_command([b"CLIENT", b"ID"]), 1)
    assert await redis_admin.client_kill_filter(_id=first_id) == 1
    await wait_for(lambda: closed_by_server(conn), 5, "the loop to see the close")
    await ensure_connected(conn)
    (second_id,) = await round_trip(conn, resp_command([b"CLIENT", b"ID"]), 1)
    assert second_id != first_id
    await links.aclose()


async def test_closing_goes_on_when_one_connection_fails_to_close(redis_admin: Any) -> None:
    """A connection whose disconnect raises does not keep the others open."""
    links = Links(redis_admin)
    first, second = links.take("k"), links.take("k")
    await ensure_connected(first)
    await ensure_connected(second)

    async def broken(nowait: bool = False) -> None:
        raise OSError("cannot close")

    first.disconnect = broken
    await links.aclose()
    assert not second.is_connected
    del first.disconnect  # the real one again, to close it for good
    await first.disconnect()


async def test_after_close_no_connection_is_made_or_kept(redis_admin: Any) -> None:
    """take() refuses once closed; a connection given back then is closed, not kept."""
    links = Links(redis_admin)
    late = links.take("k")
    await links.aclose()
    await ensure_connected(late)  # a caller that was still connecting
    await links.give_back(late)
    assert not late.is_connected
    with pytest.raises(TransportClosedError):
        links.take("k")


async def test_publish_after_redis_dropped_idle_connections_is_not_outcome_unknown(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """CLIENT KILL of every idle connection: the next publish reconnects and stores the
    event; nothing was sent on the dead connection, so the outcome is known."""
    prefix = f"k{secrets.token_hex(4)}"
    transport = RedisTransport(redis_server.url, prefix=prefix)
    async with EventBus(transport=transport) as bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        links: Links = bus._conn.state.links  # type: ignore[union-attr]
        (spare,) = links._spare[""]
        killed = await redis_admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        await wait_for(lambda: closed_by_server(spare), 5, "the loop to see the close")
        await bus.publish(OrderCreated(order_id="o-2"))
    assert await redis_admin.xlen(f"{prefix}:{{OrderCreated}}") == 2


async def test_timed_out_publishes_do_not_pile_up_connections(
    redis_server: RedisServer, redis_admin: Any
) -> None:
    """Publishes that time out while Redis is paused, while sending or while logging in
    on a new connection (SELECT of database 1 waits too), each give their connection
    back: no connection is made per timeout."""
    transport = RedisTransport(f"{redis_server.url}/1", prefix=f"t{secrets.token_hex(4)}")
    errors: list[type[Exception]] = []
    async with EventBus(transport=transport) as bus:
        await bus.publish(OrderCreated(order_id="o-0"))
        links: Links = bus._conn.state.links  # type: ignore[union-attr]
        await redis_admin.client_pause(500)  # every command waits half a second
        for i in range(5):
            with pytest.raises((PublishTimeoutError, PublishOutcomeUnknownError)) as caught:
                await bus.publish(OrderCreated(order_id=f"o-{i}"), timeout=0.02)
            errors.append(caught.type)
        await bus.publish(OrderCreated(order_id="o-6"))  # waits the pause out
        assert links.count == 1
    assert PublishOutcomeUnknownError in errors  # the first: sent, no reply
    assert PublishTimeoutError in errors  # the next ones: stuck logging in
