"""The hand-packed Redis commands match redis-py's packer; raw replies; the ack queue."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from eventbus.transports import FailureNotes, Message
from eventbus.transports.redis._acks import AckQueue
from eventbus.transports.redis._commands import (
    XaddCommand,
    XreadgroupCommand,
    ack_commands,
    packed_streams,
    resp_command,
)
from eventbus.transports.redis._entries import entry_message, read_entries, read_notes
from eventbus.transports.redis._scripts import (
    DEAD_LETTER,
    DL_ATTEMPT,
    DL_NOTES,
    DL_ORIGIN,
    META_ATTEMPT,
    META_ORIGIN,
    RECORD_AND_ACK,
    REPLAY,
    Keys,
)

binary = st.binary(max_size=40)
text = st.text(max_size=20)


def packed_by_redis_py(*args: Any) -> bytes:
    """What redis-py sends for these arguments."""
    return b"".join(aioredis.Connection().pack_command(*args))


@given(st.from_regex(rb"\A[A-Z]{1,10}\Z"), st.lists(binary, max_size=8))
def test_resp_command_matches_redis_py(name: bytes, args: list[bytes]) -> None:
    """Any binary arguments (redis-py splits a first argument with spaces: not used)."""
    assert resp_command([name, *args]) == packed_by_redis_py(name, *args)


@given(
    topic=st.text(min_size=1, max_size=12),
    headers=st.dictionaries(text, text, max_size=7),
    body=binary,
    maxlen=st.none() | st.integers(1, 10**9),
)
def test_xadd_matches_redis_py(
    topic: str, headers: dict[str, str], body: bytes, maxlen: int | None
) -> None:
    """XADD key [MAXLEN ~ n] * field value ... payload body, also with odd header names."""
    command = XaddCommand("pre", maxlen)
    args: list[Any] = ["XADD", f"pre:{{{topic}}}"]
    if maxlen is not None:
        args += ["MAXLEN", "~", str(maxlen)]
    args.append("*")
    for name, value in headers.items():
        args += [name, value]
    args += ["payload", body]
    message = Message(body, headers)
    assert command.pack(topic, message) == packed_by_redis_py(*args)
    assert command.pack(topic, message) == packed_by_redis_py(*args)  # from the cache


@given(block=st.integers(1, 10**6), count=st.integers(1, 1000))
def test_xreadgroup_matches_redis_py(block: int, count: int) -> None:
    """XREADGROUP with the redeliver stream first, for any wait and count."""
    keys = Keys.of("pre", "OrderCreated", "email")
    command = XreadgroupCommand(keys, "email", "worker-1", count)
    expected = packed_by_redis_py(
        "XREADGROUP", "GROUP", "email", "worker-1", "COUNT", count, "BLOCK", block,
        "STREAMS", keys.redeliver, keys.stream, ">", ">",
    )  # fmt: skip
    assert command.pack(block) == expected


def test_xreadgroup_of_several_event_names_matches_redis_py() -> None:
    """One XREADGROUP over the keys of several event names, each redeliver stream first."""
    keys = [Keys.of("pre", name, "email") for name in ("OrderCreated", "OrderPaid")]
    command = XreadgroupCommand([packed_streams(k) for k in keys], "email", "worker-1", 64)
    expected = packed_by_redis_py(
        "XREADGROUP", "GROUP", "email", "worker-1", "COUNT", 64, "BLOCK", 500, "STREAMS",
        keys[0].redeliver, keys[0].stream, keys[1].redeliver, keys[1].stream, ">", ">", ">", ">",
    )  # fmt: skip
    assert command.pack(500) == expected


def test_acks_of_both_streams_and_the_xdel_of_redelivered_ones() -> None:
    """One XACK per stream; redelivered entries are deleted too (they were copies)."""
    keys = Keys.of("pre", "OrderCreated", "email")
    batch = {keys.stream: ["1-1", "1-2"], keys.redeliver: ["2-1"]}
    assert ack_commands("email", batch, keys.redeliver) == [
        packed_by_redis_py("XACK", keys.stream, "email", "1-1", "1-2"),
        packed_by_redis_py("XACK", keys.redeliver, "email", "2-1"),
        packed_by_redis_py("XDEL", keys.redeliver, "2-1"),
    ]


def test_read_entries_of_resp2_and_resp3_replies() -> None:
    """Nil, lists per stream (RESP2), a map (RESP3); deleted entries are skipped."""
    fields = [b"id", b"e-1", b"payload", b"{}"]
    resp2 = [[b"s:redeliver", [[b"2-1", fields]]], [b"s", [[b"1-1", fields], [b"1-2", None]]]]
    resp3 = {b"s:redeliver": [[b"2-1", fields]], b"s": [[b"1-1", fields], [b"1-2", None]]}
    expected = [("s:redeliver", "2-1", fields), ("s", "1-1", fields)]
    assert list(read_entries(resp2)) == expected
    assert list(read_entries(resp3)) == expected
    assert list(read_entries(None)) == []


def test_entry_message_from_a_flat_list_or_a_mapping() -> None:
    """Headers, transport fields (``_``) and the body; bad UTF-8 replaced, not raised."""
    flat = [b"id", b"e-1", b"_dl_attempt", b"2", b"payload", b"{}", b"x\xff", b"\xfe"]
    for fields in (flat, dict(zip(flat[::2], flat[1::2], strict=True))):
        message, meta = entry_message(fields)
        assert message.body == b"{}"
        assert dict(message.headers) == {"id": "e-1", "x\ufffd": "\ufffd"}
        assert meta == {"_dl_attempt": "2"}


def test_the_scripts_write_the_field_names_python_reads() -> None:
    """The Lua writes the transport's field names as literals: they must agree."""
    for name in (DL_ATTEMPT, DL_NOTES, DL_ORIGIN):
        assert f"'{name}'" in DEAD_LETTER
    for name in (DL_ORIGIN, META_ATTEMPT, META_ORIGIN):
        assert f"'{name}'" in REPLAY


def test_ack_queue_takes_puts_back_and_keeps_refused_batches() -> None:
    """Taken batches leave the queue; put back, they go first again; refused, they stay."""
    keys = Keys.of("pre", "OrderCreated", "email")
    acks = AckQueue(keys, "email")
    assert acks.take() == {}
    acks.add(keys.stream, "1-1")
    acks.add(keys.redeliver, "2-1")
    batch = acks.sending = acks.take()
    assert batch == {keys.stream: ["1-1"], keys.redeliver: ["2-1"]}
    acks.add(keys.stream, "1-2")  # handled while the batch travels
    assert acks.ids() == {keys.stream: ["1-2", "1-1"], keys.redeliver: ["2-1"]}
    acks.sending = {}
    assert acks.check(batch, [1, 1, 1]) is None
    assert not acks.refused
    error = acks.check(batch, [ResponseError("NOPERM no xack"), 1, 1])
    assert isinstance(error, ResponseError)
    assert acks.refused
    assert acks.take() == {keys.stream: ["1-1", "1-2"], keys.redeliver: ["2-1"]}


def test_records_travel_in_one_script_ahead_of_the_acks_and_stay_when_refused() -> None:
    """Records and acks travel in one EVAL, records first, and stay together when refused."""
    keys = Keys.of("pre", "OrderCreated", "email")
    acks = AckQueue(keys, "email", record_ttl=30)
    acks.record("e-1")
    acks.add(keys.stream, "1-1")
    acks.add(keys.redeliver, "2-1")
    assert acks.ids() == {keys.stream: ["1-1"], keys.redeliver: ["2-1"]}
    batch = acks.take()
    assert acks.commands(batch) == [
        packed_by_redis_py(
            "EVAL", RECORD_AND_ACK, 3, keys.stream, keys.redeliver, keys.handled + "e-1",
            "email", 30_000, 1, "1-1", "2-1",
        )
    ]  # fmt: skip
    assert acks.check(batch, [1]) is None
    assert isinstance(acks.check(batch, [ResponseError("NOPERM no set")]), ResponseError)
    assert acks.refused
    assert acks.take() == batch


def test_notes_stored_before_the_typed_notes_are_still_read() -> None:
    """JSON notes as earlier versions wrote them (a dict of strings) read back as
    FailureNotes; missing keys are empty; unreadable or absent notes are None."""
    old = (
        '{"reason": "retries-exhausted", "handler": "h", "error_type": "builtins.ValueError",'
        ' "error_message": "no stock", "traceback": "tb", "first_failed_at": "t1",'
        ' "last_failed_at": "t2"}'
    )
    expected = FailureNotes(
        "retries-exhausted", "builtins.ValueError", "no stock", "h", "tb", "t1", "t2"
    )
    assert read_notes(old) == expected
    assert read_notes('{"reason": "poison"}') == FailureNotes("poison")
    assert read_notes("") is None
    assert read_notes("not json") is None
    assert read_notes("[1, 2]") is None


class BrokenLink:
    """A connected link on which every send fails, as when Redis goes away."""

    is_connected = True
    _reader = None

    def __init__(self) -> None:
        self.disconnected = False

    async def check_health(self) -> None:
        """Healthy until something is sent."""

    async def send_packed_command(self, packed: bytes, check_health: bool = True) -> None:
        """Fails: the connection broke."""
        raise RedisConnectionError("Connection reset by peer")

    async def disconnect(self, nowait: bool = False) -> None:
        """Remembers that the link was closed."""
        self.disconnected = True


class OneLink:
    """Links that hand out one given link and note its return."""

    def __init__(self, link: BrokenLink) -> None:
        self.link = link
        self.given_back = False

    def take(self, key: str) -> BrokenLink:
        """The one link."""
        return self.link

    async def give_back(self, link: BrokenLink) -> None:
        """Notes the return."""
        self.given_back = True


@pytest.mark.anyio
async def test_ack_queue_flush_puts_back_acks_whose_round_trip_failed() -> None:
    """A flush whose link breaks raises, queues the acks again and closes the link."""
    keys = Keys.of("pre", "OrderCreated", "email")
    acks = AckQueue(keys, "email")
    acks.add(keys.stream, "1-1")
    acks.add(keys.redeliver, "2-1")
    link = BrokenLink()
    links: Any = OneLink(link)
    with pytest.raises(RedisConnectionError):
        await acks.flush(links, keys.stream)
    assert links.given_back
    assert link.disconnected
    assert acks.take() == {keys.stream: ["1-1"], keys.redeliver: ["2-1"]}
