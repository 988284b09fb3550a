"""Connections to Redis for the hot paths, owned by one caller at a time.

redis-py's pool checks every connection it hands out by trying a read with a zero
timeout, which costs an event-loop turn per command. Publishing and each consumer's
reads instead keep their own connections, made with the pool's settings (address,
login, TLS, database, timeouts) but never handed out by it, and send commands already
packed in Redis's wire protocol (``_commands``).
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

import anyio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from eventbus._errors import TransportClosedError

__all__ = ["Links", "ensure_connected", "round_trip"]

logger = logging.getLogger("eventbus.redis")

_NO_RETRY = Retry(NoBackoff(), 0)  # the callers decide when to try again
_SPARE_FOR = 10.0  # seconds a spare connection may sit unused, beyond the first few
_SPARE_KEPT = 4  # spare connections per server kept however long they sit unused


class Links:
    """The connections one client made for callers that each own one while they use it.

    ``take(key)`` reuses a spare connection to the server of ``key`` (the last given
    back) or makes a new one, so there are as many as the most callers at once in the
    last ten seconds (one per publish in flight, one per subscription with work), per
    server, and four spare at least; ``aclose`` closes them, and a connection in use then
    fails its caller (a publish in flight raises ``PublishOutcomeUnknownError``). On a
    cluster (``RedisCluster`` client) the server of a key is the master of its slot, as
    the client's slot map says; a connection given back disconnected is dropped, so
    that the next ``take`` asks the map again (a failover moves a slot). Not shared
    between event loops.
    """

    def __init__(self, client: Any, *, cluster: bool = False) -> None:
        self._client = client
        self._cluster = cluster
        self._spare: dict[str, list[Any]] = {}
        self._made: dict[Any, str] = {}  # each connection made: the server it was made for
        self._unused_since: dict[Any, float] = {}  # each spare connection: given back when
        self._closed = False

    def take(self, key: str) -> Any:
        """A spare connection to the server of ``key``, or a new one (it connects in
        ``ensure_connected``). Raises ``TransportClosedError`` after ``aclose``, and
        redis-py's ``SlotNotCoveredError`` when no master serves the key's slot."""
        if self._closed:
            raise TransportClosedError("the connection to Redis is closed")
        node = self._node(key)
        spare = self._spare.get("" if node is None else node.name)
        if spare:
            return spare.pop()
        if node is None:
            conn, home = self._client.connection_pool.make_connection(), ""
        else:
            options = {**node.connection_kwargs, "retry": _NO_RETRY}
            conn, home = node.connection_class(**options), node.name
        self._made[conn] = home
        return conn

    def _node(self, key: str) -> Any:
        """The cluster node (master) that serves ``key``'s slot; None on one server."""
        if not self._cluster:
            return None
        return self._client.nodes_manager.get_node_from_slot(self._client.keyslot(key))

    def node_name(self, key: str) -> str:
        """The name (``host:port``) of the server of ``key``: "" on a single server."""
        node = self._node(key)
        return "" if node is None else str(node.name)

    def runs(self, keys: list[str]) -> list[tuple[int, int]]:
        """``(start, end)`` of each run of consecutive keys served by one server: the
        whole list on a single server."""
        if not self._cluster:
            return [(0, len(keys))] if keys else []
        names = [self._node(key).name for key in keys]
        bounds, start = [], 0
        for index in range(1, len(names) + 1):
            if index == len(names) or names[index] != names[start]:
                bounds.append((start, index))
                start = index
        return bounds

    async def give_back(self, conn: Any) -> None:
        """Return a connection whose replies were all read, or that is disconnected;
        after ``aclose`` it is closed instead (shielded: a caller may be cancelled)."""
        if self._closed:
            with anyio.CancelScope(shield=True):
                await _disconnect(conn)
            return
        if self._cluster and not conn.is_connected:
            self._drop(conn)
            return
        home = self._made.get(conn, "")
        spare = self._spare.setdefault(home, [])
        spare.append(conn)  # no await
        self._unused_since[conn] = monotonic()
        if len(spare) > _SPARE_KEPT:
            await self._trim(home)

    async def _trim(self, home: str) -> None:
        """Close the spare connections of ``home`` unused for ``_SPARE_FOR`` seconds,
        oldest first, keeping ``_SPARE_KEPT``: after a burst the count decays again."""
        spare, now = self._spare.get(home, []), monotonic()
        while (
            not self._closed
            and len(spare) > _SPARE_KEPT
            and now - self._unused_since.get(spare[0], now) > _SPARE_FOR
        ):
            await self.discard(spare.pop(0))

    async def trim(self) -> None:
        """Close the spare connections unused for a while (see ``_trim``); safe to call
        from several tasks at once."""
        for home in list(self._spare):
            await self._trim(home)

    async def discard(self, conn: Any) -> None:
        """Close a connection that is not to be used again (its server may be gone)."""
        self._drop(conn)
        with anyio.CancelScope(shield=True):
            await _disconnect(conn)

    def _drop(self, conn: Any) -> None:
        self._made.pop(conn, None)
        self._unused_since.pop(conn, None)

    @property
    def count(self) -> int:
        """How many connections were made and not closed."""
        return len(self._made)

    async def aclose(self) -> None:
        """Disconnect every connection made here, without waiting for the server."""
        self._closed = True
        made, self._made, self._spare = list(self._made), {}, {}
        self._unused_since = {}
        for conn in made:
            await _disconnect(conn)


async def _disconnect(conn: Any) -> None:
    try:
        await conn.disconnect(nowait=True)
    except (RedisError, OSError) as exc:
        logger.debug("closing a Redis connection failed: %s", type(exc).__name__)


async def ensure_connected(conn: Any) -> None:
    """Connect, or reconnect when Redis closed the connection while it sat idle.

    Fails before anything of the caller's is sent (so a caller may try again without
    risking a duplicate); on any failure, cancellation included, ``conn`` is left
    disconnected, never halfway through its login.
    """
    try:
        if conn.is_connected and _closed_by_server(conn):
            await conn.disconnect(nowait=True)
        if not conn.is_connected:
            await conn.connect()
        else:
            await conn.check_health()  # a PING when idle past health_check_interval
    except BaseException:
        with anyio.CancelScope(shield=True):
            await conn.disconnect(nowait=True)
        raise


def _closed_by_server(conn: Any) -> bool:
    # The stream reader holds the server's close (EOF or reset) as soon as the event loop
    # has seen it; the pool learns the same by trying a read, at the cost of a loop turn.
    reader = getattr(conn, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


async def round_trip(
    conn: Any, packed: bytes, count: int, replies: list[Any] | None = None
) -> list[Any]:
    """Send ``count`` packed commands in one write and read their replies in order.

    An error reply is returned (as ``ResponseError``), not raised, so that the replies
    after it are still read. The replies are appended to ``replies`` when given (after
    those it holds already): after a failure it holds those read so far, which tell what
    Redis carried out. On any other failure redis-py has disconnected ``conn``.
    """
    await conn.send_packed_command(packed, check_health=False)
    if replies is None:
        replies = []
    until = len(replies) + count
    while len(replies) < until:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies
