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
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py 7.1 and newer: the client's name and version, told to the server
    from redis.driver_info import resolve_driver_info
except ImportError:  # pragma: no cover (older redis-py looks its version up each time)
    resolve_driver_info = None  # type: ignore[assignment]

from eventbus._backoff import Backoff
from eventbus._errors import TransportError

from ._cluster import SlotMap, node_urls
from ._links import Links
from ._refusals import RefusedWrite
from ._scripts import (
    CLAIM_IDS,
    DEAD_LETTER,
    IDLE,
    LEASE,
    PROMOTE,
    PRUNE_CONSUMERS,
    REPLAY,
    RETRY,
    STATS,
    TAKE,
    TRIM,
    Keys,
)

__all__ = [
    "RedisState",
    "Scripts",
    "Settings",
    "logger",
    "unlist_member",
    "wrapped",
]

logger = logging.getLogger("eventbus.redis")


_SEP = "\x1f"  # between topic and group in the registry set
_GROUP_ATTEMPTS = 8  # connection failures creating a group before giving up
_HOUSEKEEPING = 8  # subscriptions looking after suspects or retries at once
_LEASE_BATCH = 500  # entry ids per LEASE script call (Lua's unpack has a limit)


def unlist_member(state: RedisState, topic: str, group: str) -> tuple[str, str]:
    """The registry key and the member that lists ``group`` of ``topic`` (for SREM)."""
    return state.registry_key, f"{topic}{_SEP}{group}"


@asynccontextmanager
async def wrapped(doing: str) -> AsyncIterator[None]:
    """Turn redis-py's exceptions into ``TransportError`` (the original is the cause)."""
    try:
        yield
    except (RedisError, OSError, RedisClusterException) as exc:
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
    cluster: bool = False
    replicas: int = 0
    replica_timeout: float = 1.0
    idle_poll: float | None = 0.05


class Scripts:
    """The Lua scripts, registered on one client.

    On a cluster, a script that a master does not know (``NOSCRIPT``: a replica promoted
    by a failover, a node added by a reshard) is sent whole with ``EVAL`` to the master
    of its keys, which caches it: redis-py would load it on the masters its slot map
    lists, which may not include a new one yet.
    """

    def __init__(self, client: Any, *, cluster: bool = False) -> None:
        def script(text: str) -> Any:
            registered = client.register_script(text)
            return _ClusterScript(client, registered, text) if cluster else registered

        self.retry = script(RETRY)
        self.promote = script(PROMOTE)
        self.dead_letter = script(DEAD_LETTER)
        self.replay = script(REPLAY)
        self.idle = script(IDLE)
        self.stats = script(STATS)
        self.claim_ids = script(CLAIM_IDS)
        self.prune_consumers = script(PRUNE_CONSUMERS)
        self.take = script(TAKE)
        self.lease = script(LEASE)
        self.trim = script(TRIM)


class _ClusterScript:
    """A registered script called with ``EVALSHA``, and with ``EVAL`` on ``NOSCRIPT``."""

    def __init__(self, client: Any, registered: Any, text: str) -> None:
        self._client = client
        self._sha = registered.sha
        self._text = text

    async def __call__(self, keys: list[Any], args: list[Any] | None = None) -> Any:
        args = args or []
        try:
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.eval(self._text, len(keys), *keys, *args)


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
        if settings.cluster:  # no master known for a slot: unreachable for now
            self.connection_errors = (*RedisState.connection_errors, RedisClusterException)
        options: dict[str, Any] = {
            "decode_responses": False,
            "health_check_interval": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": settings.socket_timeout,
            "socket_keepalive": True,
        }
        if settings.cluster:
            # slot maps, redirects and failover discovery are redis-py's cluster client's
            first, *others = node_urls(settings.url)
            nodes = [ClusterNode(u.hostname or "", u.port or 6379) for u in map(urlsplit, others)]
            self.client: Any = RedisCluster.from_url(first, startup_nodes=nodes, **options)
        else:
            if resolve_driver_info is not None:  # resolved once, not at every connection
                options["driver_info"] = resolve_driver_info()
            self.client = aioredis.Redis.from_url(
                settings.url, retry=RedisRetry(NoBackoff(), 0), **options
            )
        self.scripts = Scripts(self.client, cluster=settings.cluster)
        self.links = Links(self.client, cluster=settings.cluster)
        self.slots = SlotMap(self.client, cluster=settings.cluster)
        self.housekeeping = anyio.Semaphore(_HOUSEKEEPING, fast_acquire=True)
        """Bounds the subscriptions looking after suspects and retries at once, and so
        the connections they take from the pool (all of them start at once)."""
        self._unlisted: dict[str, RefusedWrite] = {}  # groups whose listing Redis refused
        self._streams: dict[str, str] = {}  # topic: its stream key

    def keys(self, topic: str, group: str) -> Keys:
        """The keys of ``group`` on ``topic`` under this transport's prefix."""
        return Keys.of(self.settings.prefix, topic, group)

    def stream(self, topic: str) -> str:
        """The stream of ``topic`` under this transport's prefix."""
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = Keys.of(self.settings.prefix, topic, "").stream
        return stream

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
    def registry_key(self) -> str:
        """``prefix:groups``: the set that lists every group (topic and name)."""
        return self._registry_key

    @property
    def _registry_key(self) -> str:
        return f"{self.settings.prefix}:groups"

    async def join(self, topic: str, group: str, start: str = "earliest") -> None:
        """Register the group, riding out a few connection failures (with backoff)."""
        backoff = self.backoff()
        while True:
            try:
                return await self.register_group(topic, group, start)
            except self.connection_errors:
                if backoff.failures >= _GROUP_ATTEMPTS:
                    raise
                await self.back_off(backoff, "creating a group")

    async def register_group(self, topic: str, group: str, start: str = "earliest") -> None:
        """Create the group when missing and list it in the ``prefix:groups`` set, writing
        nothing when both are done already (so that a worker starts on an existing group
        while Redis refuses writes, ``OOM`` under ``maxmemory``). A new group starts at
        the stream's first entry (``start="earliest"``, logging how many it will handle)
        or after its last (``"latest"``).

        Raises ``TransportError`` when Redis refuses to create a missing group. A listing
        that Redis refuses is logged and tried again by ``list_unlisted``.
        """
        keys = self.keys(topic, group)
        if not await self._has_group(keys.stream, group):
            await self._create_group(keys.stream, group, "$" if start == "latest" else "0")
            waiting = await self.client.xlen(keys.stream) if start != "latest" else 0
            if waiting:
                logger.info(
                    "new group %s of %s starts at the stream's first entry: it will handle "
                    "the %d entries the stream holds (subscribe(start='latest') skips them)",
                    group,
                    topic,
                    waiting,
                )
        if not await self._has_group(keys.redeliver, group):
            await self._create_group(keys.redeliver, group, "0")
        await self._list(f"{topic}{_SEP}{group}")

    async def _has_group(self, key: str, group: str) -> bool:
        """Whether ``key`` has the consumer group (XINFO GROUPS: a read)."""
        try:
            groups = await self.client.xinfo_groups(key)
        except ResponseError:  # no such key
            return False
        return any(g["name"] == group.encode() for g in groups)

    async def _create_group(self, key: str, group: str, at: str) -> None:
        """XGROUP CREATE ... <at> MKSTREAM (another worker may create it first)."""
        try:
            await self.client.xgroup_create(key, group, id=at, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise TransportError(
                    f"Redis refused to create the consumer group {group!r} on {key}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    async def _list(self, member: str) -> None:
        """SADD ``member`` (topic and group) to ``prefix:groups`` unless it is there."""
        if await self.client.sismember(self._registry_key, member):
            return
        try:
            await self.client.sadd(self._registry_key, member)
        except ResponseError as exc:
            refusal = self._unlisted.get(member) or self._unlisting(member)
            refusal.refused(exc, anyio.current_time())
            return
        listed = self._unlisted.pop(member, None)
        if listed is not None:
            listed.taken()

    def _unlisting(self, member: str) -> RefusedWrite:
        topic, group = member.split(_SEP, 1)
        what = f"list group {group} of {topic} in {self._registry_key}"
        meanwhile = (
            "its workers run, but drain() and dead_letters() do not see the group until it "
            "is listed; tried again with the lease renewals"
        )
        self._unlisted[member] = refusal = RefusedWrite(what, meanwhile, self.backoff())
        return refusal

    async def list_unlisted(self) -> None:
        """Try again to list the groups whose listing Redis refused."""
        for member in list(self._unlisted):
            await self._list(member)

    async def groups(self, group: str | None = None) -> list[tuple[str, str]]:
        """(topic, group) of every registered group (of ``group`` only, when given)."""
        members = await self.client.smembers(self._registry_key)
        pairs = [m.decode().split(_SEP, 1) for m in members]
        return sorted((t, g) for t, g in pairs if group is None or g == group)

    # -- held entries --------------------------------------------------------------------

    async def renew(self, held: Mapping[str, list[str]], group: str) -> None:
        """Keep the leases of held entries (idle 0) that this consumer still holds; one
        taken over meanwhile is left to its new holder."""
        await self._lease(held, group, 0)

    async def release(self, held: Mapping[str, list[str]], group: str) -> None:
        """Make held entries claimable at once by the group's other consumers (those
        this consumer still holds)."""
        await self._lease(held, group, int(self.settings.claim_timeout * 1000) + 1)

    async def _lease(self, held: Mapping[str, list[str]], group: str, idle_ms: int) -> None:
        """Set the idle time of the entries this consumer holds (the LEASE script)."""
        for key, ids in held.items():
            for start in range(0, len(ids), _LEASE_BATCH):
                args: list[Any] = [group, self.consumer, idle_ms]
                args += ids[start : start + _LEASE_BATCH]
                await self.scripts.lease(keys=[key], args=args)

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
