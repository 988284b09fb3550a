"""A bus's connection to Redis: publish, subscribe, wait, dead letters, leases."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus._errors import (
    PublishOutcomeUnknownError,
    PublishTimeoutError,
    TransportClosedError,
    TransportError,
)

from ._protocol import Message, StoredDeadLetter
from ._redis_commands import XaddCommand
from ._redis_dead_letters import DeadLetterStore
from ._redis_links import Links, ensure_connected, round_trip
from ._redis_scripts import (
    ACK,
    CLAIM_IDS,
    DEAD_LETTER,
    IDLE,
    PROMOTE,
    REPLAY,
    RETRY,
    Keys,
)
from ._redis_subscription import RedisSubscription

__all__ = ["RedisConnection", "Settings", "wrapped"]

logger = logging.getLogger("eventbus.redis")
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)
_SEP = "\x1f"


@asynccontextmanager
async def wrapped(doing: str) -> AsyncIterator[None]:
    """Turn redis-py's exceptions into ``TransportError`` (the original is the cause)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise TransportError(f"Redis failed while {doing}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Settings:
    """The options of a ``RedisTransport`` (see its docstring)."""

    url: str = field(repr=False)  # may hold a password
    prefix: str
    claim_timeout: float
    block: float
    prefetch: int
    delivery_limit: int
    maxlen: int | None
    publish_retry_for: float
    socket_timeout: float | None


class _Scripts:
    """The Lua scripts, registered on one client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.ack = client.register_script(ACK)
        self.retry = client.register_script(RETRY)
        self.promote = client.register_script(PROMOTE)
        self.dead_letter = client.register_script(DEAD_LETTER)
        self.replay = client.register_script(REPLAY)
        self.idle = client.register_script(IDLE)
        self.claim_ids = client.register_script(CLAIM_IDS)


class RedisConnection:
    """One bus's link to Redis: its own client (connection pool) and consumer name."""

    connection_errors = _CONNECTION_ERRORS

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.settings = settings
        self.consumer = consumer
        # redis-py types its commands for sync and async clients at once; Any keeps the
        # awaited results usable under mypy --strict.
        self.client: Any = aioredis.Redis.from_url(
            settings.url,
            decode_responses=False,
            retry=RedisRetry(NoBackoff(), 0),
            health_check_interval=1,
            socket_connect_timeout=5,
            socket_timeout=settings.socket_timeout,
            socket_keepalive=True,
        )
        self.scripts = _Scripts(self.client)
        self.links = Links(self.client)
        self._xadd = XaddCommand(settings.prefix, settings.maxlen)
        self._dead = DeadLetterStore(
            self.client, settings.prefix, self.scripts.replay, self._groups
        )
        self._subs: list[RedisSubscription] = []
        self._closed = False

    # -- publishing ----------------------------------------------------------------

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """XADD the message to the topic's stream; return the entry id.

        Raises ``PublishOutcomeUnknownError`` when the command was sent but no reply came
        (the event may or may not be stored), ``PublishTimeoutError`` when Redis could not
        be reached within ``timeout``, ``TransportError`` for other failures.
        """
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
        command = self._xadd.pack(topic, message)
        (reply,) = await self._send_with_timeout([command], timeout)
        return reply

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """XADD every message in one round trip (a pipeline, not a transaction)."""
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
        commands = [self._xadd.pack(topic, message) for topic, message in items]
        return await self._send_with_timeout(commands, timeout) if commands else []

    async def _send_with_timeout(self, commands: list[bytes], timeout: float | None) -> list[str]:
        sent: list[bool] = []
        if timeout is None:
            return await self._send(commands, sent)
        try:
            with anyio.fail_after(timeout):
                return await self._send(commands, sent)
        except TimeoutError:
            if sent:
                raise PublishOutcomeUnknownError(
                    f"Redis did not confirm within {timeout} s after the event was sent; "
                    "it may or may not be stored"
                ) from None
            raise PublishTimeoutError(
                f"Redis did not accept the event within {timeout} s"
            ) from None

    async def _send(self, commands: list[bytes], sent: list[bool]) -> list[str]:
        failures = 0
        give_up = anyio.current_time() + self.settings.publish_retry_for
        packed = b"".join(commands)
        while True:
            conn = self.links.take()  # raises once the connection is closed
            try:
                try:
                    await ensure_connected(conn)
                except _CONNECTION_ERRORS as exc:  # nothing was sent: safe to try again
                    failure: BaseException = exc
                else:
                    replies = await self._send_on(conn, packed, len(commands), sent)
                    break
            finally:
                await self.links.give_back(conn)
            failures += 1
            if anyio.current_time() >= give_up:
                raise TransportError("cannot reach Redis to publish") from failure
            await self.backoff(failures, "publishing")
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise TransportError(f"Redis refused an event: {reply}")
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]

    async def _send_on(self, conn: Any, packed: bytes, count: int, sent: list[bool]) -> list[Any]:
        try:
            sent.append(True)  # from here on, Redis may have the commands
            return await round_trip(conn, packed, count)
        except _CONNECTION_ERRORS as exc:
            await conn.disconnect()
            raise PublishOutcomeUnknownError(
                "the connection to Redis broke after the event was sent; "
                "it may or may not be stored"
            ) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()  # a late reply must not reach the next command
            raise

    # -- subscribing ---------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> RedisSubscription:
        """Create the group (from the stream's start) when missing and join it."""
        if self._closed:
            raise TransportClosedError("subscribe on a closed connection")
        sub = RedisSubscription(self, topic, group, self.consumer)
        async with wrapped("creating a consumer group"):
            await self._retrying(lambda: self.register_group(topic, group), "creating a group")
        self._subs.append(sub)
        return sub

    @property
    def _registry_key(self) -> str:
        return f"{self.settings.prefix}:groups"

    async def register_group(self, topic: str, group: str) -> None:
        """Create the group (when missing) and list it in the ``prefix:groups`` set."""
        await self.create_group(Keys.of(self.settings.prefix, topic, group), group)
        await self.client.sadd(self._registry_key, f"{topic}{_SEP}{group}")

    async def create_group(self, keys: Keys, group: str) -> None:
        """XGROUP CREATE ... 0 MKSTREAM on the stream and the redeliver stream."""
        for key in (keys.stream, keys.redeliver):
            try:
                await self.client.xgroup_create(key, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def release(self, held: Mapping[str, list[str]], group: str) -> None:
        """Make held entries claimable at once by the group's other consumers."""
        idle = int(self.settings.claim_timeout * 1000) + 1
        for key, ids in held.items():
            if ids:
                await self.client.xclaim(key, group, self.consumer, 0, ids, idle=idle, justid=True)

    async def forget_consumer(self, keys: Keys, group: str) -> None:
        """Delete this consumer from the group when it holds nothing (a clean close)."""
        for key in (keys.stream, keys.redeliver):
            summary = await self.client.xpending_range(
                key, group, min="-", max="+", count=1, consumername=self.consumer
            )
            if not summary:
                await self.client.xgroup_delconsumer(key, group, self.consumer)

    # -- background work -----------------------------------------------------------

    async def serve(self) -> None:
        """Keep the leases of held entries: XCLAIM them to ourselves every so often."""
        while not self._closed:
            await anyio.sleep(self.settings.claim_timeout / 3)
            for sub in list(self._subs):
                for key, ids in sub.held_entries().items():
                    if ids:
                        try:
                            await self.client.xclaim(
                                key, sub.group, self.consumer, 0, ids, justid=True
                            )
                        except (RedisError, OSError):
                            logger.warning("could not renew the lease of %d entries", len(ids))

    # -- waiting and dead letters ----------------------------------------------------

    async def _groups(self, group: str | None = None) -> list[tuple[str, str]]:
        members = await self.client.smembers(self._registry_key)
        pairs = [m.decode().split(_SEP, 1) for m in members]
        return sorted((t, g) for t, g in pairs if group is None or g == group)

    async def wait_idle(self) -> None:
        """Poll until every known group has no unread, pending or scheduled entry.

        Rides out connection failures (with backoff); other Redis errors raise
        ``TransportError``.
        """
        failures = 0
        while True:
            try:
                async with wrapped("waiting for the groups to finish"):
                    for sub in self._subs:
                        await sub.flush_acks()
                    if await self._idle():
                        return
                failures = 0
                await anyio.sleep(0.02)  # Redis has no idle notification: poll
            except TransportError as exc:
                if not isinstance(exc.__cause__, _CONNECTION_ERRORS):
                    raise
                failures += 1
                await self.backoff(failures, "waiting for the groups to finish")

    async def _idle(self) -> bool:
        for topic, group in await self._groups():
            keys = Keys.of(self.settings.prefix, topic, group)
            idle = await self.scripts.idle(
                keys=[keys.stream, keys.redeliver, keys.retry], args=[group]
            )
            if not idle:
                return False
        return True

    async def dead_letters(self, group: str | None = None) -> list[StoredDeadLetter]:
        """Every dead letter of ``group`` (all groups when None), oldest first."""
        async with wrapped("listing dead letters"):
            return await self._dead.listed(group)

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Move dead letters back to their group's redeliver stream as attempt 1."""
        async with wrapped("replaying dead letters"):
            return await self._dead.replay(group, ids)

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """XDEL the chosen dead letters."""
        async with wrapped("purging dead letters"):
            return await self._dead.purge(group, ids)

    # -- plumbing --------------------------------------------------------------------

    async def backoff(self, failures: int, doing: str) -> None:
        """Sleep a capped, jittered, growing delay after a connection failure."""
        delay = min(5.0, 0.25 * 2 ** min(failures - 1, 5)) * (0.5 + random.random() / 2)
        logger.warning(
            "Redis unreachable while %s (failure %d); retrying in %.2f s", doing, failures, delay
        )
        await anyio.sleep(delay)

    async def _retrying(self, call: Any, doing: str) -> Any:
        failures = 0
        while True:
            try:
                return await call()
            except _CONNECTION_ERRORS:
                failures += 1
                if failures > 8:
                    raise
                await self.backoff(failures, doing)

    async def check_server(self) -> None:
        """Warn when Redis may evict streams or keeps nothing on disk."""
        await self.client.ping()  # raises when Redis is unreachable or refuses the login
        try:
            policy = await self.client.config_get("maxmemory-policy")
            aof = await self.client.config_get("appendonly")
            save = await self.client.config_get("save")
        except ResponseError:  # CONFIG not allowed for this user: nothing to check
            return
        value = _first(policy)
        if value and value != "noeviction":
            logger.warning(
                "Redis maxmemory-policy is %s: it may evict streams; use noeviction", value
            )
        if _first(aof) != "yes" and not _first(save):
            logger.warning(
                "Redis persists nothing (appendonly no, no save): a restart loses events"
            )

    async def aclose(self) -> None:
        """Close the subscriptions (handing back held entries), then the client."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                for sub in self._subs:
                    await _closed_quietly(sub)
            finally:
                self._subs.clear()
                try:
                    await self.links.aclose()
                finally:
                    await self.client.aclose()


async def _closed_quietly(sub: RedisSubscription) -> None:
    try:
        await sub.aclose()
    except Exception:  # one subscription's failure must not keep the others open
        logger.exception("closing the Redis subscription of %s failed", sub.group)


def _first(reply: Mapping[Any, Any]) -> str:
    for value in reply.values():
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""
