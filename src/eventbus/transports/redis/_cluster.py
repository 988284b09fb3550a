"""What the transport needs of a Redis Cluster beyond redis-py's cluster client: the
nodes a URL lists, the replies that redirect a command, and following them."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus._backoff import Backoff

__all__ = ["REDIRECTS", "SlotMap", "node_urls"]

logger = logging.getLogger("eventbus.redis")

REDIRECTS = (AskError, TryAgainError, ClusterError)
"""Cluster replies that mean a command was not carried out (``MovedError`` is an
``AskError``, ``ClusterDownError`` a ``ClusterError``; redis-py raises ``ClusterError``
when a slot kept moving during its own retries): send it again once
``SlotMap.follow`` has learnt where its slot is."""

_REREAD = (
    ClusterDownError,
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    RedisClusterException,
)
"""Failures after which the slot map may be wrong: a failover, a node gone."""


def node_urls(url: str) -> list[str]:
    """The URL of each node a cluster URL lists (``redis://h1:7000,h2:7000/0``), each
    with the URL's scheme, login, database and options; a URL of one node as it is."""
    scheme, sep, rest = url.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    login, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [f"{scheme}{sep}{login}{at}{host}{tail}" for host in hosts.split(",") if host]


class SlotMap:
    """Keeps a cluster client's slot map up to date after redirects and failures; does
    nothing for a single server's client."""

    def __init__(self, client: Any, *, cluster: bool) -> None:
        self._client = client
        self._cluster = cluster

    async def follow(self, exc: BaseException) -> None:
        """Learn where the slots went after ``exc``: a ``MOVED`` reply names the slot's
        new master; after a failure to connect or ``CLUSTERDOWN`` (a failover) the client
        asks the cluster for its slot map again; ``ASK`` and ``TRYAGAIN`` (a slot
        migrating) change nothing until the move ends."""
        if not self._cluster:
            return
        manager = self._client.nodes_manager
        if isinstance(exc, MovedError):
            manager.move_slot(exc)
            return
        if not isinstance(exc, _REREAD):
            return  # a slot is migrating (ASK, TRYAGAIN): the map holds until MOVED
        try:  # redis-py reads the map once for calls that wait on one another
            await manager.initialize()
        except (RedisError, OSError, RedisClusterException) as error:
            logger.warning("cannot read the cluster's slot map: %s", type(error).__name__)

    async def redirected(self, exc: BaseException, backoff: Backoff, doing: str) -> None:
        """After a cluster's redirect of a command (``MOVED``, ``ASK``, ``TRYAGAIN``,
        ``CLUSTERDOWN``): follow it, and unless it named the slot's new master wait a
        little (at most 0.1 s; a warning at the first and every 50th time)."""
        await self.follow(exc)
        if isinstance(exc, MovedError):
            return
        delay = min(backoff.failed(), 0.1)
        if backoff.failures % 50 == 1:
            logger.warning(
                "the Redis Cluster redirected a command while %s (%s, %d times); trying again",
                doing,
                type(exc).__name__,
                backoff.failures,
            )
        await backoff.wait(delay)
