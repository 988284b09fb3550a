"""``RedisTransport``: the options, checked; each ``connect()`` opens a ``RedisConnection``."""

from __future__ import annotations

import os
import re
import secrets
import socket
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from eventbus._errors import ConfigurationError, TransportError
from eventbus._options import check_count, check_seconds
from eventbus.transports._contract import Features

from ._cluster import node_urls
from ._connection import RedisConnection
from ._state import Settings

__all__ = ["RedisTransport"]

_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_NAME = re.compile(r"[^\s{}]{1,200}")


class RedisTransport:
    """Moves events through Redis Streams, between processes and hosts.

    ``RedisTransport("redis://localhost:6379/0")``; passwords, ACL users and TLS come
    through the URL (``rediss://user:secret@host:6380/0``) and never appear in logs.

    Layout (all keys of one event name share the hash tag ``{name}``): the stream
    ``prefix:{name}``; per group a consumer group of that name, a redeliver stream
    ``prefix:{name}:redeliver:group``, a retry schedule ``prefix:{name}:retry:group``
    (sorted set) and dead letters ``prefix:{name}:dead:group``; the set
    ``prefix:groups`` lists the groups. See ``docs/redis.md``.

    Options:

    - ``prefix``: key prefix (default ``eventbus``).
    - ``consumer_name``: a stable worker name (a hostname, a pod name; also taken from
      ``EVENTBUS_WORKER_NAME``, which ``eventbus worker --name`` sets). A worker that
      restarts under its old name first re-reads the entries it held. Default: host,
      pid and a random suffix, unique per bus.
    - ``claim_timeout``: seconds after which entries held by a silent consumer are taken
      over by another (default 60). Keep it above your handler timeouts; live workers
      renew their leases every third of it.
    - ``block``: seconds one read waits for new entries (default 1).
    - ``prefetch``: entries read at once per subscription (default 64); acks go out in a
      batch before the next read, so a crash repeats at most this many.
    - ``delivery_limit``: deliveries without an ack (workers dying on the entry) after
      which it is dead-lettered as ``poison`` (default 5).
    - ``retention``: seconds of acknowledged history each stream keeps, for groups
      created later (default 3600). Workers trim the streams they read, every quarter of
      ``claim_timeout``, of the entries that every consumer group of the stream has
      acknowledged and that are older than this; an entry pending in a group, or not yet
      delivered to it, is never trimmed, and a stream without groups is left whole. A
      stopped group keeps every entry it has not acknowledged until it is deleted. None:
      never trim.
    - ``maxlen``: approximate hard cap of each stream (default None). A cap drops entries
      that a slow group has not read yet, and a warning says so at connect; ``retention``
      is the safe bound.
    - ``publish_retry_for``: seconds publish keeps retrying to reach Redis when nothing
      was sent yet (default 5): a deadline, which the waits between attempts and the
      connecting of a new connection never run past; then ``TransportError``.
    - ``socket_timeout``: seconds a command may wait for Redis's reply (default None:
      TCP keepalive notices a dead server; ``publish(timeout=...)`` bounds one publish).
      Setting it costs some latency on every command. Keep it above ``block``.
    - ``idempotency_ttl``: seconds a group remembers the event ids its idempotent
      subscribers handled (default one day): one key per event id and group,
      ``prefix:{name}:handled:group:<event id>``, with that TTL.
    - ``cluster``: the URL names a node of a Redis Cluster, or several
      (``redis://h1:7000,h2:7000/0``: a process starting while one is down finds the
      cluster through another) (default False). redis-py's
      cluster client keeps the slot map and follows redirects and failovers; publishing
      and reading go straight to the master of each event name's slot (every key of one
      name shares its hash tag). The URL's database must be 0; ``unix://`` is refused.
    - ``replicas``: how many replicas must confirm an event before ``publish()`` returns
      (default 0: as soon as the master stored it). With ``replicas=1`` each publish
      waits (``WAIT``) until a replica of the master has the event, so that a failover
      does not lose it; when fewer confirm within ``replica_timeout`` seconds (default
      1), ``publish()`` raises ``PublishOutcomeUnknownError``: the master has the event,
      but a failover may lose it. Costs a replica's round trip per publish.
    - ``idle_poll``: on a cluster, seconds between the reads of idle subscriptions
      (default 0.05). A subscription whose last read found nothing gives its connection
      back; one script per master then reads every idle stream there, this often, so a
      first event after a quiet spell waits up to this long. None: every subscription
      keeps a blocking connection of its own (no added wait, one connection per
      subscription). On a single server idle subscriptions share one blocking read per
      group instead, with no added wait; this option is not used there. See
      ``docs/scaling.md``.

    The options are checked here (``ConfigurationError``); the URL too, so that a bad one
    fails at once rather than at connect.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "eventbus",
        consumer_name: str | None = None,
        claim_timeout: float = 60.0,
        block: float = 1.0,
        prefetch: int = 64,
        delivery_limit: int = 5,
        maxlen: int | None = None,
        retention: float | None = 3600.0,
        publish_retry_for: float = 5.0,
        socket_timeout: float | None = None,
        idempotency_ttl: float = 86_400.0,
        cluster: bool = False,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        idle_poll: float | None = 0.05,
    ) -> None:
        _check_url(url)
        if not isinstance(cluster, bool):
            raise ConfigurationError("RedisTransport cluster must be True or False")
        if cluster:
            _check_cluster_url(url)
        elif len(node_urls(url)) > 1:
            raise ConfigurationError(
                "RedisTransport url lists several nodes: give cluster=True for a Redis Cluster"
            )
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError("prefix must be 1-100 of letters, digits and . _ : -")
        owner = "RedisTransport"
        self._settings = Settings(
            url=url,
            prefix=prefix,
            claim_timeout=check_seconds(owner, "claim_timeout", claim_timeout, zero=False),
            block=check_seconds(owner, "block", block, zero=False),
            prefetch=check_count(owner, "prefetch", prefetch),
            delivery_limit=check_count(owner, "delivery_limit", delivery_limit),
            maxlen=None if maxlen is None else check_count(owner, "maxlen", maxlen),
            publish_retry_for=check_seconds(owner, "publish_retry_for", publish_retry_for),
            socket_timeout=None
            if socket_timeout is None
            else check_seconds(owner, "socket_timeout", socket_timeout, zero=False),
            idempotency_ttl=check_seconds(owner, "idempotency_ttl", idempotency_ttl, zero=False),
            retention=None if retention is None else check_seconds(owner, "retention", retention),
            cluster=cluster,
            replicas=check_count(owner, "replicas", replicas, minimum=0),
            replica_timeout=check_seconds(owner, "replica_timeout", replica_timeout, zero=False),
            idle_poll=None
            if idle_poll is None
            else check_seconds(owner, "idle_poll", idle_poll, zero=False),
        )
        if consumer_name is not None and not (
            isinstance(consumer_name, str) and _NAME.fullmatch(consumer_name)
        ):
            raise ConfigurationError("consumer_name must be 1-200 characters without spaces")
        self._name = consumer_name
        self._connections = 0

    @property
    def features(self) -> Features:
        """History for new groups, persistence with Redis; publish never waits for room."""
        return Features(history_for_new_groups=True, bounded=False, survives_restart=True)

    async def connect(self) -> RedisConnection:
        """Open a connection (its own client and consumer name) for one bus.

        Raises ``TransportError`` when Redis cannot be reached or refuses the login; the
        message names the server, never the credentials.
        """
        conn = RedisConnection(self._settings, self._consumer_name(self._connections + 1))
        try:
            await conn.check_server()
        except (RedisError, OSError) as exc:
            await conn.aclose()
            raise TransportError(
                f"cannot use Redis at {_safe_location(self._settings.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._connections += 1
        return conn

    def _consumer_name(self, number: int) -> str:
        """The stable name for the first connection, ``name-N`` for later ones."""
        name = self._name or os.environ.get("EVENTBUS_WORKER_NAME")
        if not name:
            return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        return name if number == 1 else f"{name}-{number}"

    def __repr__(self) -> str:
        location = _safe_location(self._settings.url)
        cluster = ", cluster=True" if self._settings.cluster else ""
        replicas = f", replicas={self._settings.replicas}" if self._settings.replicas else ""
        return f"RedisTransport({location!r}, prefix={self._settings.prefix!r}{cluster}{replicas})"


def _check_url(url: object) -> None:
    """A redis://, rediss:// or unix:// URL with a valid port (each port, for a list of
    cluster nodes); the message hides secrets."""
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            "RedisTransport url must start with redis://, rediss:// or unix://"
        )
    try:
        for one in node_urls(url):
            urlsplit(one).port  # noqa: B018 - parses the port, raising ValueError when bad
    except ValueError:
        raise ConfigurationError(
            f"RedisTransport url {_safe_location(url)} has an invalid port"
        ) from None


def _check_cluster_url(url: str) -> None:
    """A cluster is reached over TCP, and has database 0 only."""
    parts = urlsplit(node_urls(url)[0])
    if parts.scheme == "unix":
        raise ConfigurationError("RedisTransport cluster=True needs a redis:// or rediss:// URL")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"RedisTransport cluster=True: a cluster has database 0 only, not "
            f"{parts.path.strip('/')!r} ({_safe_location(url)})"
        )


def _safe_location(url: str) -> str:
    """Scheme, host, port and database of a URL, without user or password."""
    try:
        parts = urlsplit(node_urls(url)[0])
        host = parts.hostname or parts.path or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"
