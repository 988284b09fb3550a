"""``StreamWriter``: how a connection's events reach their streams (XADD), one round trip
per server, with the replicas' confirmation when asked for, and errors that say what was
stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from redis.exceptions import ResponseError

from eventbus._backoff import Backoff
from eventbus._errors import (
    EncodeError,
    PublishError,
    PublishOutcomeUnknownError,
    PublishRefusedError,
    PublishTimeoutError,
    TransportError,
)
from eventbus.transports._contract import Message

from ._cluster import REDIRECTS
from ._commands import XaddCommand, resp_command
from ._groups import Unread
from ._links import ensure_connected, round_trip
from ._state import RedisState

__all__ = ["StreamWriter"]


class StreamWriter:
    """Publishes for one connection: packs each XADD once, sends the commands of one
    server in one write on a link of its own, follows a cluster's redirects, waits for
    ``replicas`` (``WAIT``) after each round trip when asked, and warns once per event
    name that no group reads."""

    def __init__(self, state: RedisState) -> None:
        settings = state.settings
        self.state = state
        self._links = state.links
        self._xadd = XaddCommand(settings.prefix, settings.maxlen)
        self._wait = (
            resp_command(
                # WAIT 0 would wait forever: at least a millisecond
                [
                    b"WAIT",
                    b"%d" % settings.replicas,
                    b"%d" % max(1, settings.replica_timeout * 1000),
                ]
            )
            if settings.replicas
            else b""
        )
        self._unread = Unread(state)

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """XADD the message to the topic's stream; return the entry id.

        Raises ``PublishOutcomeUnknownError`` when the command was sent but no reply came
        (the event may or may not be stored), or when fewer than ``replicas`` replicas
        confirmed it within ``replica_timeout``, ``PublishTimeoutError`` when Redis could not
        be reached within ``timeout``, ``EncodeError`` when a header is not valid Unicode,
        ``PublishRefusedError`` when Redis refused it (``WRONGTYPE``, ``OOM``, ``NOPERM``),
        ``TransportError`` for other failures.
        """
        try:
            command = self._xadd.pack(topic, message)
        except UnicodeEncodeError:
            raise _unencodable(topic, message) from None
        (reply,) = await self._send_with_timeout([command], [topic], timeout)
        if self._unread.unchecked(topic):
            await self._unread.check(topic)
        return reply

    async def publish_many(
        self, items: Sequence[tuple[str, Message]], *, timeout: float | None = None
    ) -> list[str]:
        """XADD every message in one round trip (a pipeline, not a transaction).

        Raises as ``publish``, saying what part of the batch was stored: Redis carries out
        every command it received, in order, each on its own. ``PublishRefusedError``
        when it refused some (``stored_ids``: each event's id, None where refused);
        ``PublishOutcomeUnknownError`` when the replies stopped coming (``stored``: how
        many of the first events Redis confirmed; the others may or may not be stored).
        """
        try:
            commands = [self._xadd.pack(topic, message) for topic, message in items]
        except UnicodeEncodeError:
            raise next(_unencodable(t, m) for t, m in items if not _encodable(m)) from None
        if not commands:
            return []
        ids = await self._send_with_timeout(commands, [topic for topic, _ in items], timeout)
        for topic in {topic for topic, _ in items if self._unread.unchecked(topic)}:
            await self._unread.check(topic)
        return ids

    async def _send_with_timeout(
        self, commands: list[bytes], topics: list[str], timeout: float | None
    ) -> list[str]:
        """Send, then raise ``PublishRefusedError`` when Redis refused any command."""
        sent: list[bool] = []
        replies: list[Any] = []  # those read so far, in order
        if timeout is None:
            return await self._send(commands, topics, sent, replies)
        try:
            with anyio.fail_after(timeout):
                return await self._send(commands, topics, sent, replies)
        except TimeoutError:
            if sent:
                raise _outcome_unknown(
                    f"Redis did not confirm within {timeout} s after the event was sent",
                    replies,
                    len(commands),
                ) from None
            raise PublishTimeoutError(
                f"Redis did not accept the event within {timeout} s"
            ) from None

    async def _send(
        self, commands: list[bytes], topics: list[str], sent: list[bool], replies: list[Any]
    ) -> list[str]:
        """Send the commands, trying again (with backoff) while Redis cannot be reached
        and nothing was sent, until ``publish_retry_for`` seconds have passed: a deadline
        that the connection attempts and the waits between them never run past. On a
        cluster, the commands go in runs, one per master in turn, and those a cluster
        redirected (``MOVED``, ``ASK``, ``TRYAGAIN``) go again once the slot map is new."""
        give_up = anyio.current_time() + self.state.settings.publish_retry_for
        await self._send_runs(commands, topics, sent, replies, give_up)
        moved = [i for i, reply in enumerate(replies) if isinstance(reply, REDIRECTS)]
        backoff: Backoff | None = None
        while moved and anyio.current_time() < give_up:
            backoff = backoff or self.state.backoff()
            await self.state.slots.redirected(replies[moved[0]], backoff, "publishing")
            again: list[Any] = []
            try:
                await self._send_runs(
                    [commands[i] for i in moved], [topics[i] for i in moved], sent, again, give_up
                )
            except (PublishError, TransportError) as exc:  # said of the whole batch
                raise _outcome_unknown(
                    f"resending events the cluster redirected failed ({exc})",
                    replies,
                    len(commands),
                ) from exc
            for i, reply in zip(moved, again, strict=True):
                replies[i] = reply
            moved = [i for i in moved if isinstance(replies[i], REDIRECTS)]
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise _refused(replies)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]

    async def _send_runs(
        self,
        commands: list[bytes],
        topics: list[str],
        sent: list[bool],
        replies: list[Any],
        give_up: float,
    ) -> None:
        """Send each run of commands for one server in one round trip, in order, each
        followed by ``WAIT`` when ``replicas`` asks for it."""
        cluster = self.state.settings.cluster  # on one server: one run, no key needed
        keys = [self.state.stream(topic) for topic in topics] if cluster else topics
        for start, end in self._links.runs(keys):
            try:
                await self._send_run(b"".join(commands[start:end]), end - start, keys[start],
                                     sent, replies, give_up)  # fmt: skip
            except PublishOutcomeUnknownError as exc:
                if end - start == len(commands) and not self._wait:
                    raise
                raise _outcome_unknown(  # say it of the whole batch
                    "the connection to Redis broke after the events were sent",
                    replies,
                    len(commands),
                ) from exc.__cause__
            except self.state.connection_errors as exc:  # an earlier run was stored
                raise _outcome_unknown(
                    "Redis could not be reached for the rest of the batch", replies, len(commands)
                ) from exc
            if self._wait:
                self._check_replicas(replies.pop(), start, end, len(commands))

    async def _send_run(
        self,
        packed: bytes,
        count: int,
        key: str,
        sent: list[bool],
        replies: list[Any],
        give_up: float,
    ) -> None:
        """Send one run, trying again while its server cannot be reached and nothing of
        the batch was sent, until ``give_up``; then ``TransportError``. Raises the
        connection error when an earlier run was sent."""
        backoff: Backoff | None = None
        while True:
            try:
                return await self._attempt(
                    packed + self._wait, count + bool(self._wait), key, sent, replies, give_up
                )
            except self.state.connection_errors as exc:  # nothing of this run was sent
                left = give_up - anyio.current_time()
                if replies:
                    raise
                if left <= 0:
                    retry_for = self.state.settings.publish_retry_for
                    raise TransportError(
                        f"cannot reach Redis to publish (publish_retry_for={retry_for} s)"
                    ) from exc
                await self.state.slots.follow(exc)
            backoff = backoff or self.state.backoff()
            await self.state.back_off(backoff, "publishing", at_most=left)

    def _check_replicas(self, reply: Any, start: int, end: int, count: int) -> None:
        """Raise ``PublishOutcomeUnknownError`` unless ``reply`` (to ``WAIT``) says that
        enough replicas have events ``start`` to ``end`` of ``count``."""
        wanted = self.state.settings.replicas
        if isinstance(reply, int) and reply >= wanted:
            return
        said = f"{type(reply).__name__}: {reply}" if isinstance(reply, ResponseError) else reply
        what = "the event" if count == 1 else f"events {start + 1} to {end} of {count}"
        rest = "" if end == count else "; the events after them were not sent"
        raise PublishOutcomeUnknownError(
            f"Redis stored {what}, but {said} of the {wanted} replicas asked for confirmed "
            f"within replica_timeout={self.state.settings.replica_timeout} s: a failover "
            f"may lose them{rest}",
            stored=start,
        )

    async def _attempt(
        self,
        packed: bytes,
        count: int,
        key: str,
        sent: list[bool],
        replies: list[Any],
        give_up: float,
    ) -> None:
        """One try on a link to the server of ``key``, reading the replies into
        ``replies``; a connection error means nothing was sent. Connecting a new link
        must end by ``give_up`` (a ``TimeoutError``, an ``OSError``, if not)."""
        conn = self._links.take(key)  # raises once the connection is closed
        try:
            if conn.is_connected:  # the hot path: no cancel scope
                await ensure_connected(conn)
            else:
                with anyio.fail_after(max(give_up - anyio.current_time(), 0)):
                    await ensure_connected(conn)
            await self._send_on(conn, packed, count, sent, replies)
        finally:
            await self._links.give_back(conn)

    async def _send_on(
        self, conn: Any, packed: bytes, count: int, sent: list[bool], replies: list[Any]
    ) -> None:
        try:
            sent.append(True)  # from here on, Redis may have the commands
            await round_trip(conn, packed, count, replies)
        except self.state.connection_errors as exc:
            await conn.disconnect()
            raise _outcome_unknown(
                "the connection to Redis broke after the event was sent", replies, count
            ) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()  # a late reply must not reach the next command
            raise


def _outcome_unknown(what: str, replies: list[Any], count: int) -> PublishOutcomeUnknownError:
    """The outcome of the commands past the first ``stored`` (those Redis confirmed,
    up to the first refusal) is unknown."""
    stored = next((i for i, r in enumerate(replies) if isinstance(r, ResponseError)), None)
    stored = len(replies) if stored is None else stored
    if count == 1:
        return PublishOutcomeUnknownError(f"{what}; it may or may not be stored")
    return PublishOutcomeUnknownError(
        f"{what}: the first {stored} of {count} events are stored, the others may or "
        "may not be (PublishOutcomeUnknownError.stored)",
        stored=stored,
    )


def _refused(replies: list[Any]) -> PublishRefusedError:
    """Redis refused some commands: which events were stored, under which ids."""
    ids = tuple(None if isinstance(r, ResponseError) else _text(r) for r in replies)
    first = next(r for r in replies if isinstance(r, ResponseError))
    return PublishRefusedError(
        f"Redis refused {ids.count(None)} of {len(ids)} events, the first with: {first} "
        "(PublishRefusedError.stored_ids says which were stored)",
        stored_ids=ids,
    )


def _encodable(message: Message) -> bool:
    return all(_utf8(k) and _utf8(v) for k, v in message.headers.items())


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unencodable(topic: str, message: Message) -> EncodeError:
    """Which header of ``message`` is not valid Unicode, without quoting it."""
    field = next((k for k, v in message.headers.items() if not _utf8(v)), None)
    what = f"its {field!r} header" if field else "a header name"
    return EncodeError(
        f"{topic} cannot be sent: {what} is not valid Unicode (a lone surrogate)",
        event_name=topic,
        field=field,
    )


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)
