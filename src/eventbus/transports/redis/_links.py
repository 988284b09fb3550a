"""Connections to Redis for the hot paths, owned by one caller at a time.

redis-py's pool checks every connection it hands out by trying a read with a zero
timeout, which costs an event-loop turn per command. Publishing and each consumer's
reads instead keep their own connections, made with the pool's settings (address,
login, TLS, database, timeouts) but never handed out by it, and send commands already
packed in Redis's wire protocol (``_commands``).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from redis.exceptions import RedisError, ResponseError

from eventbus._errors import TransportClosedError

__all__ = ["Links", "ensure_connected", "round_trip"]

logger = logging.getLogger("eventbus.redis")


class Links:
    """The connections one client made for callers that each own one while they use it.

    ``take`` reuses a spare connection or makes a new one, so there are as many as the
    most callers at once (one per publish in flight, one per subscription); ``aclose``
    closes them, and a connection in use then fails its caller (a publish in flight
    raises ``PublishOutcomeUnknownError``). Not shared between event loops.
    """

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._spare: list[Any] = []
        self._made: list[Any] = []
        self._closed = False

    def take(self) -> Any:
        """A spare connection, or a new one (it connects in ``ensure_connected``).

        Raises ``TransportClosedError`` after ``aclose``.
        """
        if self._closed:
            raise TransportClosedError("the connection to Redis is closed")
        if self._spare:
            return self._spare.pop()
        conn = self._pool.make_connection()
        self._made.append(conn)
        return conn

    async def give_back(self, conn: Any) -> None:
        """Return a connection whose replies were all read, or that is disconnected;
        after ``aclose`` it is closed instead (shielded: a caller may be cancelled)."""
        if not self._closed:
            self._spare.append(conn)  # no await: nothing to shield on the hot path
            return
        with anyio.CancelScope(shield=True):
            await _disconnect(conn)

    @property
    def count(self) -> int:
        """How many connections were made and not closed."""
        return len(self._made)

    async def aclose(self) -> None:
        """Disconnect every connection made here, without waiting for the server."""
        self._closed = True
        made, self._made, self._spare = self._made, [], []
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
    after it are still read. The replies go into ``replies`` when given: after a failure
    it holds those read so far, which tell what Redis carried out. On any other failure
    redis-py has disconnected ``conn``.
    """
    await conn.send_packed_command(packed, check_health=False)
    if replies is None:
        replies = []
    while len(replies) < count:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies
