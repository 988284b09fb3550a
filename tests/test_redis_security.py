"""Credentials and size limits of the Redis transport, against a password-protected server."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from eventbus import EventBus, PayloadTooLargeError, TransportError
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-pw"
WRONG_PASSWORD = "wr0ng-pw-7"
ACL_USER, ACL_PASSWORD = "orders-app", "acl-pw-42"
SECRETS = (PASSWORD, WRONG_PASSWORD, ACL_PASSWORD)


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server that requires a password."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis-auth")), password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, the eventbus loggers included."""
    caplog.set_level(logging.DEBUG)
    for name in ("eventbus", "eventbus.redis"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def prefix() -> str:
    """A fresh key prefix."""
    return f"s{secrets.token_hex(4)}"


def url(server: RedisServer, credentials: str) -> str:
    """A redis:// URL of the server with ``credentials`` (``user:password`` or empty)."""
    at = f"{credentials}@" if credentials else ""
    return f"redis://{at}127.0.0.1:{server.port}/0"


def assert_no_secret(text: str) -> None:
    """None of the passwords of this module appear in ``text``."""
    for secret in SECRETS:
        assert secret not in text


def messages(error: BaseException) -> str:
    """The messages of an error and of every error in its chain, as a traceback shows them."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 20:
        parts += [type(seen).__name__, str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """The messages of the captured log records, with their tracebacks."""
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    return "\n".join(handler.format(record) for record in caplog.records)


async def round_trip(transport: RedisTransport) -> list[str]:
    """Publish one event through ``transport`` and return what a subscriber handled."""
    bus = EventBus(transport=transport)
    handled: list[str] = []

    @bus.subscribe(group="audit")
    async def audit(event: OrderCreated) -> None:
        handled.append(event.order_id)

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, timeout=10)
    return handled


async def test_password_in_the_url_opens_the_server(
    redis_server: RedisServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    """redis://:password@host works, and no log record carries the password."""
    transport = RedisTransport(url(redis_server, f":{PASSWORD}"), prefix=prefix(), block=0.2)

    handled = await round_trip(transport)

    assert handled == ["o-1"]
    assert_no_secret(repr(transport))
    assert_no_secret(logged(debug_logs))


def unused_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "credentials",
    [f":{WRONG_PASSWORD}", "", f"{ACL_USER}:{WRONG_PASSWORD}", "default:" + WRONG_PASSWORD],
    ids=["wrong-password", "no-password", "unknown-user", "wrong-password-of-default-user"],
)
async def test_wrong_credentials_fail_clearly_without_the_password(
    redis_server: RedisServer, debug_logs: pytest.LogCaptureFixture, credentials: str
) -> None:
    """A refused login raises a TransportError that never shows the password."""
    transport = RedisTransport(url(redis_server, credentials), prefix=prefix())

    with pytest.raises(TransportError) as raised:
        async with EventBus(transport=transport):
            pass

    assert "auth" in messages(raised.value).lower()
    assert_no_secret(messages(raised.value))
    assert_no_secret(repr(transport))
    assert_no_secret(logged(debug_logs))


async def test_unreachable_server_fails_clearly_without_the_password(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A URL with a password pointing nowhere raises a TransportError without it."""
    address = f"redis://:{PASSWORD}@127.0.0.1:{unused_port()}/0"
    transport = RedisTransport(address, prefix=prefix())

    with pytest.raises(TransportError) as raised:
        async with EventBus(transport=transport):
            pass

    assert_no_secret(messages(raised.value))
    assert_no_secret(repr(transport))
    assert_no_secret(logged(debug_logs))


async def test_acl_user_limited_to_its_keys_runs_the_bus(
    redis_server: RedisServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    """An ACL user (no admin or dangerous commands, its own key prefix) runs the bus."""
    keys = prefix()
    admin: Any = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", ACL_USER, "reset", "on", f">{ACL_PASSWORD}",
            f"~{keys}:*", "&*", "+@all", "-@admin", "-@dangerous",
        )  # fmt: skip
        transport = RedisTransport(
            url(redis_server, f"{ACL_USER}:{ACL_PASSWORD}"), prefix=keys, block=0.2
        )
        handled = await round_trip(transport)
    finally:
        await admin.execute_command("ACL", "DELUSER", ACL_USER)
        await admin.aclose()

    assert handled == ["o-1"]
    assert_no_secret(repr(transport))
    assert_no_secret(logged(debug_logs))


async def test_too_large_event_is_refused_and_nothing_is_written(
    redis_server: RedisServer,
) -> None:
    """An event above max_payload_bytes raises PayloadTooLargeError; the stream stays empty."""
    keys = prefix()
    stream = f"{keys}:{{OrderCreated}}"
    bus = EventBus(
        transport=RedisTransport(redis_server.url, prefix=keys, block=0.2), max_payload_bytes=200
    )

    @bus.subscribe(group="audit")
    async def audit(event: OrderCreated) -> None:
        """The group makes the stream exist, so that XLEN counts real entries."""

    admin: Any = aioredis.Redis.from_url(redis_server.url)
    try:
        async with bus:
            with pytest.raises(PayloadTooLargeError, match="200"):
                await bus.publish(OrderCreated(order_id="x" * 300))
            too_large_written = await admin.xlen(stream)
            await bus.publish(OrderCreated(order_id="small"))
            small_written = await admin.xlen(stream)
            await drain(bus, timeout=10)
    finally:
        await admin.aclose()

    assert (too_large_written, small_written) == (0, 1)
