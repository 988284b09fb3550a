"""A loopback TCP proxy in front of a redis-server, to silence or cut connections at a
chosen point of the conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketAttribute, SocketStream

__all__ = ["Proxy", "running_proxy"]


class Proxy:
    """Forwards each accepted connection to ``127.0.0.1:target``.

    ``silent``: new connections are accepted and never answered. ``cut_after_ids(n)``: the
    next bulk-string replies (the entry ids XADD answers) are counted on every connection;
    after the ``n``-th is forwarded the connection is closed, the rest dropped.
    ``drop_reply_with(marker)``: the next reply that carries ``marker`` is dropped and its
    connection closed.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.connections = 0
        self.silent = False
        self._cut_after: int | None = None
        self._drop_marker: bytes | None = None
        self.dropped = 0  # replies dropped by ``drop_reply_with``

    def cut_after_ids(self, count: int) -> None:
        """Close a connection right after forwarding ``count`` more bulk-string replies."""
        self._cut_after = count

    def drop_reply_with(self, marker: bytes) -> None:
        """Close the next connection whose reply carries ``marker``, without forwarding
        that reply: Redis ran the command, the client never hears of it."""
        self._drop_marker = marker

    async def handle(self, client: SocketStream) -> None:
        """Serve one accepted connection."""
        self.connections += 1
        async with client:
            if self.silent:
                async for _ in client:  # read and drop, answer nothing
                    pass
                return
            server = await anyio.connect_tcp("127.0.0.1", self.target)
            async with server, anyio.create_task_group() as tasks:
                tasks.start_soon(self._forward_requests, client, server)
                await self._forward_replies(server, client)
                tasks.cancel_scope.cancel()

    @staticmethod
    async def _forward_requests(client: SocketStream, server: SocketStream) -> None:
        async for chunk in client:
            await server.send(chunk)

    async def _forward_replies(self, server: SocketStream, client: SocketStream) -> None:
        pending = b""
        async for chunk in server:
            if self._drop_marker is not None and self._drop_marker in chunk:
                self._drop_marker = None
                self.dropped += 1
                return  # closes both connections: the reply is never forwarded
            if self._cut_after is None:
                await client.send(chunk)
                continue
            pending += chunk
            while (end := _reply_end(pending)) is not None:
                reply, pending = pending[:end], pending[end:]
                await client.send(reply)
                if reply.startswith(b"$"):
                    self._cut_after -= 1
                    if self._cut_after == 0:
                        self._cut_after = None
                        return  # closes both connections: the rest is never forwarded


def _reply_end(data: bytes) -> int | None:
    """Where the first whole reply (a simple string, error, integer or bulk string) ends."""
    line = data.find(b"\r\n")
    if line < 0:
        return None
    if data[:1] != b"$":
        return line + 2
    length = int(data[1:line])
    if length < 0:  # a nil reply
        return line + 2
    end = line + 2 + length + 2
    return end if len(data) >= end else None


@asynccontextmanager
async def running_proxy(target: int) -> AsyncIterator[Proxy]:
    """A proxy listening on a free loopback port while the block runs."""
    proxy = Proxy(target)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    proxy.port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, proxy.handle)
        yield proxy
        tasks.cancel_scope.cancel()
