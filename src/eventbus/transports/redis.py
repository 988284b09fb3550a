"""``RedisTransport``: events over Redis Streams with consumer groups.

Needs the ``redis`` extra (``pip install "eventbus[redis]"``); importing ``eventbus``
alone never imports redis. Runs on asyncio (redis-py's asyncio client).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from eventbus._errors import ConfigurationError, TransportError

from ._protocol import Features
from ._redis_connection import RedisConnection, Settings

__all__ = ["RedisTransport"]

_PREFIX = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


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
    - ``prefetch``: entries read at once per subscription (default 16); a crash
      duplicates at most this many.
    - ``delivery_limit``: deliveries without an ack (workers dying on the entry) after
      which it is dead-lettered as ``poison`` (default 5).
    - ``maxlen``: approximate cap of each stream (default None: keep everything; a cap
      drops entries that a slow group has not read yet).
    - ``publish_retry_for``: seconds publish keeps retrying to reach Redis when nothing
      was sent yet (default 5).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "eventbus",
        consumer_name: str | None = None,
        claim_timeout: float = 60.0,
        block: float = 1.0,
        prefetch: int = 16,
        delivery_limit: int = 5,
        maxlen: int | None = None,
        publish_retry_for: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "RedisTransport url must start with redis://, rediss:// or unix://"
            )
        if not _PREFIX.match(prefix):
            raise ConfigurationError("prefix must be 1-100 of letters, digits and . _ : -")
        for name, value in (("claim_timeout", claim_timeout), ("block", block)):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0")
        for name, number in (("prefetch", prefetch), ("delivery_limit", delivery_limit)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ConfigurationError(f"{name} must be an int >= 1")
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            raise ConfigurationError("maxlen must be None or an int >= 1")
        self._settings = Settings(
            url=url,
            prefix=prefix,
            claim_timeout=float(claim_timeout),
            block=float(block),
            prefetch=prefetch,
            delivery_limit=delivery_limit,
            maxlen=maxlen,
            publish_retry_for=float(publish_retry_for),
            health_check_interval=1,
        )
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
        self._connections += 1
        conn = RedisConnection(self._settings, self._consumer_name())
        try:
            await conn.check_server()
        except (RedisError, OSError) as exc:
            await conn.aclose()
            raise TransportError(
                f"cannot use Redis at {_safe_location(self._settings.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return conn

    def _consumer_name(self) -> str:
        name = self._name or os.environ.get("EVENTBUS_WORKER_NAME")
        if not name:
            return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        return name if self._connections == 1 else f"{name}-{self._connections}"

    def __repr__(self) -> str:
        return f"RedisTransport(prefix={self._settings.prefix!r}, url=<hidden>)"


def _safe_location(url: str) -> str:
    """Scheme, host, port and database of a URL, without user or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or parts.path or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"
