"""What one connection and its subscriptions share: settings, client, scripts, links.

``RedisState`` is the one object the parts of a connection receive; none of them reaches
into another. It also does the few things more than one part needs: creating and
listing groups, handing held entries back, backing off while Redis is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus._backoff import Backoff
from eventbus._errors import TransportError

from ._links import Links
from ._scripts import (
    CLAIM_IDS,
    DEAD_LETTER,
    IDLE,
    PROMOTE,
    PRUNE_CONSUMERS,
    REPLAY,
    RETRY,
    STATS,
    TRIM,
    Keys,
)

__all__ = ["RedisState", "Scripts", "Settings", "logger", "wrapped"]

logger = logging.getLogger("eventbus.redis")


_SEP = "\x1f"  # between topic and group in the registry set
_GROUP_ATTEMPTS = 8  # connection failures creating a group before giving up


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
    idempotency_ttl: float = 86_400.0
    retention: float | None = 3600.0


class Scripts:
    """The Lua scripts, registered on one client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.retry = client.register_script(RETRY)
        self.promote = client.register_script(PROMOTE)
        self.dead_letter = client.register_script(DEAD_LETTER)
        self.replay = client.register_script(REPLAY)
        self.idle = client.register_script(IDLE)
        self.stats = client.register_script(STATS)
        self.claim_ids = client.register_script(CLAIM_IDS)
        self.prune_consumers = client.register_script(PRUNE_CONSUMERS)
        self.trim = client.register_script(TRIM)


class RedisState:
    """One connection's client, consumer name, scripts and links, and what its parts
    share. Made by the connection, passed to each subscription; one event loop only.

    ``client`` is redis-py's pooled client (typed ``Any``: redis-py types its commands
    for sync and async clients at once); ``links`` are the connections of the hot paths
    (publishing, reads, acks).
    """

    connection_errors: tuple[type[BaseException], ...] = (
        RedisConnectionError,
        RedisTimeoutError,
        OSError,
    )
    """The failures that mean Redis could not be reached (worth trying again)."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.settings = settings
        self.consumer = consumer
        self.client: Any = aioredis.Redis.from_url(
            settings.url,
            decode_responses=False,
            retry=RedisRetry(NoBackoff(), 0),
            health_check_interval=1,
            socket_connect_timeout=5,
            socket_timeout=settings.socket_timeout,
            socket_keepalive=True,
        )
        self.scripts = Scripts(self.client)
        self.links = Links(self.client)

    def keys(self, topic: str, group: str) -> Keys:
        """The keys of ``group`` on ``topic`` under this transport's prefix."""
        return Keys.of(self.settings.prefix, topic, group)

    def stream(self, topic: str) -> str:
        """The stream of ``topic`` under this transport's prefix."""
        return Keys.of(self.settings.prefix, topic, "").stream

    # -- backing off -------------------------------------------------------------------

    @staticmethod
    def backoff() -> Backoff:
        """A new backoff for one loop: 0.25 s doubling up to 5 s, less up to half."""
        return Backoff(0.25, 5.0, jitter=0.5)

    def settle_backoff(self) -> Backoff:
        """A backoff for a settle Redis refuses or cannot take: as ``backoff``, capped at
        a quarter of the claim timeout, so that a settle completes within about one claim
        timeout of the cause's removal."""
        cap = min(5.0, max(0.25, self.settings.claim_timeout / 4))
        return Backoff(0.25, cap, jitter=0.5)

    async def back_off(self, backoff: Backoff, doing: str, at_most: float | None = None) -> None:
        """Count a connection failure, log it, and wait the backoff's next delay (cut to
        ``at_most`` seconds when given: the time left before a deadline)."""
        delay = backoff.failed() if at_most is None else min(backoff.failed(), at_most)
        logger.warning(
            "Redis unreachable while %s (failure %d); retrying in %.2f s",
            doing,
            backoff.failures,
            delay,
        )
        await backoff.wait(delay)

    # -- groups --------------------------------------------------------------------------

    @property
    def _registry_key(self) -> str:
        return f"{self.settings.prefix}:groups"

    async def join(self, topic: str, group: str) -> None:
        """Register the group, riding out a few connection failures (with backoff)."""
        backoff = self.backoff()
        while True:
            try:
                return await self.register_group(topic, group)
            except self.connection_errors:
                if backoff.failures >= _GROUP_ATTEMPTS:
                    raise
                await self.back_off(backoff, "creating a group")

    async def register_group(self, topic: str, group: str) -> None:
        """Create the group (when missing) and list it in the ``prefix:groups`` set."""
        await self._create_group(self.keys(topic, group), group)
        await self.client.sadd(self._registry_key, f"{topic}{_SEP}{group}")

    async def _create_group(self, keys: Keys, group: str) -> None:
        """XGROUP CREATE ... 0 MKSTREAM on the stream and the redeliver stream."""
        for key in (keys.stream, keys.redeliver):
            try:
                await self.client.xgroup_create(key, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def groups(self, group: str | None = None) -> list[tuple[str, str]]:
        """(topic, group) of every registered group (of ``group`` only, when given)."""
        members = await self.client.smembers(self._registry_key)
        pairs = [m.decode().split(_SEP, 1) for m in members]
        return sorted((t, g) for t, g in pairs if group is None or g == group)

    # -- held entries --------------------------------------------------------------------

    async def renew(self, held: Mapping[str, list[str]], group: str) -> None:
        """Keep the leases of held entries: XCLAIM them to this consumer, idle 0."""
        for key, ids in held.items():
            if ids:
                await self.client.xclaim(key, group, self.consumer, 0, ids, justid=True)

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

    async def aclose(self) -> None:
        """Close the links, then the client."""
        try:
            await self.links.aclose()
        finally:
            await self.client.aclose()
