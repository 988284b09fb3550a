"""The read of idle subscriptions on a cluster: one script per master, without blocking.

One command cannot span slots, and every event name has its own, so the idle streams of
a master are read by a script that names them as arguments rather than as declared
keys (``allow-cross-slot-keys``, Redis 7.0): one call reads every slot of the master. A
stream whose slot left the master fails alone, in its own place of the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha1
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from ._commands import resp_command
from ._links import ensure_connected, round_trip
from ._state import RedisState

__all__ = ["poll_master", "unsupported_script"]

_POLL = """#!lua flags=allow-cross-slot-keys,allow-oom
local out = {}
for i = 3, #ARGV, 2 do
  out[#out + 1] = redis.pcall(
    'XREADGROUP', 'GROUP', ARGV[i], ARGV[1], 'COUNT', ARGV[2], 'STREAMS', ARGV[i + 1], '>')
end
return out
"""
# Reads, without blocking, the streams named in ARGV (group, key, group, key, ...) as
# consumer ARGV[1], ARGV[2] entries at most each: one reply per stream (nil, entries or
# its error). The keys are not declared, so that one call may read every slot of a
# master; a key of another master fails alone.

_SHA = sha1(_POLL.encode(), usedforsecurity=False).hexdigest().encode()


async def poll_master(state: RedisState, streams: Sequence[tuple[str, str]]) -> list[Any]:
    """Read ``streams`` (group, stream key), all served by one master, as this
    connection's consumer, ``prefetch`` entries at most each: one reply per stream, in
    order (nil, the entries, or its error as ``ResponseError``). Raises ``ResponseError``
    when the script is refused, and the connection errors of ``state``."""
    args = [state.consumer.encode(), b"%d" % state.settings.prefetch]
    for group, key in streams:
        args += [group.encode(), key.encode()]
    links = state.links
    link = links.take(streams[0][1])
    try:
        await ensure_connected(link)
        reply = await _run(link, args)
    except ResponseError:
        await links.give_back(link)
        raise
    except BaseException:
        await links.discard(link)
        raise
    await links.give_back(link)
    return list(reply)


async def _run(link: Any, args: list[bytes]) -> Any:
    """EVALSHA the script; EVAL it whole where the master does not know it."""
    (reply,) = await round_trip(link, resp_command([b"EVALSHA", _SHA, b"0", *args]), 1)
    if isinstance(reply, NoScriptError):
        whole = resp_command([b"EVAL", _POLL.encode(), b"0", *args])
        (reply,) = await round_trip(link, whole, 1)
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def unsupported_script(exc: BaseException) -> bool:
    """Whether Redis refused the script for its shebang or flags (before Redis 7.0)."""
    message = str(exc).lower()
    return any(word in message for word in ("shebang", "flag", "compiling"))
