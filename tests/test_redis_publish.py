"""Publishing to Redis when something goes wrong: unencodable events, an unreachable
server, a batch that fails part-way."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from eventbus import EncodeError, EventBus
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer

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
