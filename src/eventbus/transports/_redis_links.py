"""Connections to Redis for the hot paths, owned by one caller at a time.

redis-py's pool checks every connection it hands out by trying a read with a zero
timeout, which costs an event-loop turn per command. Publishing and each consumer's
reads instead keep their own connections, made with the pool's settings (address,
login, TLS, database, timeouts) but never handed out by it, and send commands already
packed in Redis's wire protocol.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

__all__ = ["Links", "ready", "resp_arg", "resp_command", "round_trip"]


class Links:
    """Spare connections of one client for callers that each own one while they use it."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._spare: list[Any] = []
        self._made: list[Any] = []

    def take(self) -> Any:
        """A spare connection, or a new one (it connects on ``ready``)."""
        if self._spare:
            return self._spare.pop()
        conn = self._pool.make_connection()
        self._made.append(conn)
        return conn

    def give_back(self, conn: Any) -> None:
        """Return a connection whose replies were all read (or that was disconnected)."""
        self._spare.append(conn)

    async def aclose(self) -> None:
        """Disconnect every connection made here."""
        for conn in self._made:
            await conn.disconnect()
        self._made.clear()
        self._spare.clear()


async def ready(conn: Any) -> None:
    """Connect, or reconnect when Redis closed the connection while it sat idle.

    Raises redis-py's connection errors before anything is sent, so a caller may try
    again without risking a duplicate.
    """
    if conn.is_connected and _closed_by_server(conn):
        await conn.disconnect()
    if not conn.is_connected:
        await conn.connect()
    else:
        await conn.check_health()  # a PING when idle past health_check_interval


def _closed_by_server(conn: Any) -> bool:
    # The stream reader sees the server's close (EOF or reset) as soon as the event
    # loop does; the pool learns the same by trying a read.
    reader = getattr(conn, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


async def round_trip(conn: Any, packed: bytes, count: int) -> list[Any]:
    """Send ``count`` packed commands in one write and read their replies in order.

    An error reply is returned (as ``ResponseError``), not raised, so that the replies
    after it are still read. On any other failure redis-py has disconnected ``conn``.
    """
    await conn.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def resp_command(args: list[bytes]) -> bytes:
    """One command in RESP: ``*<n>`` then ``$<len>`` and the bytes of each argument."""
    return b"*%d\r\n%b" % (len(args), b"".join([resp_arg(arg) for arg in args]))


def resp_arg(arg: bytes) -> bytes:
    """One argument in RESP; ``b"*%d\\r\\n" % n`` and ``n`` of these make a command."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)
