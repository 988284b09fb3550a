"""The hot commands of the Redis transport, packed in Redis's wire protocol (RESP).

A command is ``*<argument count>\\r\\n`` followed by each argument as
``$<length>\\r\\n<bytes>\\r\\n``. The parts that do not change (the command name, keys,
field names) are packed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventbus.transports._contract import HEADER_FIELDS, Message

from ._scripts import PAYLOAD, Keys

__all__ = [
    "XaddCommand",
    "XreadgroupCommand",
    "ack_commands",
    "packed_streams",
    "resp_arg",
    "resp_command",
]


def resp_arg(arg: bytes) -> bytes:
    """One argument in RESP."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def resp_command(args: list[bytes]) -> bytes:
    """One whole command in RESP."""
    return b"*%d\r\n%b" % (len(args), b"".join([resp_arg(arg) for arg in args]))


_PACKED_NAMES = {name: resp_arg(name.encode()) for name in HEADER_FIELDS}
_PACKED_PAYLOAD = resp_arg(PAYLOAD.encode())


class XaddCommand:
    """``XADD <prefix>:{topic} [MAXLEN ~ n] * <header> <value> ... payload <body>``."""

    def __init__(self, prefix: str, maxlen: int | None) -> None:
        self._prefix = prefix
        self._maxlen = maxlen
        self._heads: dict[str, tuple[int, bytes]] = {}  # topic: (argument count, packed)

    def pack(self, topic: str, message: Message) -> bytes:
        """The XADD of one message: its headers, then its body as ``payload``."""
        head = self._heads.get(topic)
        if head is None:
            head = self._heads[topic] = self._head(topic)
        count, parts = head[0] + 2, [head[1]]
        for name, value in message.headers.items():
            parts.append(_PACKED_NAMES.get(name) or resp_arg(name.encode()))
            parts.append(resp_arg(value.encode()))
            count += 2
        parts.append(_PACKED_PAYLOAD)
        parts.append(resp_arg(message.body))
        return b"*%d\r\n%b" % (count, b"".join(parts))

    def _head(self, topic: str) -> tuple[int, bytes]:
        args = [b"XADD", f"{self._prefix}:{{{topic}}}".encode()]
        if self._maxlen is not None:
            args += [b"MAXLEN", b"~", b"%d" % self._maxlen]
        args.append(b"*")
        return len(args), b"".join([resp_arg(a) for a in args])


class XreadgroupCommand:
    """``XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS <redeliver> <stream> > >``: due
    retries (the redeliver stream) before new entries. ``streams`` is the ``Keys`` of one
    event name, or the ``packed_streams`` of several, read in the order given."""

    def __init__(
        self, streams: Keys | Sequence[bytes], group: str, consumer: str, count: int
    ) -> None:
        pairs = [packed_streams(streams)] if isinstance(streams, Keys) else streams
        head = [b"XREADGROUP", b"GROUP", group.encode(), consumer.encode()]
        head += [b"COUNT", b"%d" % count, b"BLOCK"]
        size = len(head) + 2 + 4 * len(pairs)  # the wait, STREAMS, two keys and two ">" each
        self._head = b"*%d\r\n%b" % (size, b"".join(map(resp_arg, head)))
        self._tail = b"%b%b%b" % (_STREAMS, b"".join(pairs), _NEW * (2 * len(pairs)))

    def pack(self, block_ms: int) -> bytes:
        """The command, waiting at most ``block_ms`` milliseconds for entries."""
        return b"%b%b%b" % (self._head, resp_arg(b"%d" % block_ms), self._tail)


_STREAMS = resp_arg(b"STREAMS")
_NEW = resp_arg(b">")


def packed_streams(keys: Keys) -> bytes:
    """The redeliver stream and the stream of ``keys``, packed for ``XreadgroupCommand``."""
    return resp_arg(keys.redeliver.encode()) + resp_arg(keys.stream.encode())


def ack_commands(group: str, batch: Mapping[str, list[str]], redeliver: str) -> list[bytes]:
    """XACK of each stream's ids, and XDEL of those from the ``redeliver`` stream."""
    commands = []
    for key, ids in batch.items():
        raw_key, raw_ids = key.encode(), [i.encode() for i in ids]
        commands.append(resp_command([b"XACK", raw_key, group.encode(), *raw_ids]))
        if key == redeliver:
            commands.append(resp_command([b"XDEL", raw_key, *raw_ids]))
    return commands
