"""A bus's connection to Redis: publish, subscribe, wait, dead letters, leases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from redis.exceptions import MovedError, RedisError, ResponseError

from eventbus._errors import (
    EncodeError,
    PublishOutcomeUnknownError,
    PublishRefusedError,
    PublishTimeoutError,
    TransportClosedError,
    TransportError,
)
from eventbus.transports._contract import GroupStats, Message, StoredDeadLetter

from ._commands import XaddCommand, resp_command
from ._dead_letters import DeadLetterStreams
from ._groups import GroupAdmin, Unread
from ._links import ensure_connected, round_trip
from ._retention import Retention
from ._state import REDIRECTS, RedisState, Settings, logger, wrapped
from ._subscription import RedisSubscription

__all__ = ["RedisConnection"]

_IDLE_POLL = 0.02  # seconds between looks while waiting for the groups to finish


class RedisConnection:
    """One bus's link to Redis: its own client (connection pool) and consumer name.

    Offers, beside the required ``Connection``: ``BatchPublishing`` (``publish_many``),
    ``DeadLetterStore``, ``IdleWaiting`` (``wait_idle``), ``Inspection`` (``inspect``)
    and ``Serving`` (``serve`` keeps the leases of held entries and trims the streams
    read).
    """

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.state = RedisState(settings, consumer)
        self._links = self.state.links
        self._xadd = XaddCommand(settings.prefix, settings.maxlen)
        self._wait = (
            resp_command(
                [b"WAIT", b"%d" % settings.replicas, b"%d" % (settings.replica_timeout * 1000)]
            )
            if settings.replicas
            else b""
        )
        self._dead = DeadLetterStreams(self.state)
        self._subs: list[RedisSubscription] = []
        self._closed = False
        self._unread = Unread(self.state)

    # -- publishing ----------------------------------------------------------------

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        """XADD the message to the topic's stream; return the entry id.

        Raises ``PublishOutcomeUnknownError`` when the command was sent but no reply came
        (the event may or may not be stored), ``PublishTimeoutError`` when Redis could not
        be reached within ``timeout``, ``EncodeError`` when a header is not valid Unicode,
        ``PublishRefusedError`` when Redis refused it (``WRONGTYPE``, ``OOM``, ``NOPERM``),
        ``TransportError`` for other failures.
        """
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
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
        if self._closed:
            raise TransportClosedError("publish on a closed connection")
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
        backoff = self.state.backoff()
        while moved and anyio.current_time() < give_up:
            await self.state.follow(replies[moved[0]])
            if not isinstance(replies[moved[0]], MovedError):  # a slot moving, a failover
                await backoff.wait(min(backoff.failed(), 0.1))
            again: list[Any] = []
            await self._send_runs(
                [commands[i] for i in moved], [topics[i] for i in moved], sent, again, give_up
            )
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
        """Send each run of commands for one server in one round trip, in order."""
        backoff = self.state.backoff()
        retry_for = self.state.settings.publish_retry_for
        cluster = self.state.settings.cluster  # on one server: one run, no key needed
        keys = [self.state.stream(topic) for topic in topics] if cluster else topics
        wait = self._wait  # WAIT for replicas after each run, when asked
        for start, end in self._links.runs(keys):
            packed = b"".join(commands[start:end]) + wait
            key = keys[start]
            count = end - start + bool(wait)
            while True:
                try:
                    await self._attempt(packed, count, key, sent, replies, give_up)
                    break
                except PublishOutcomeUnknownError as exc:
                    if end - start == len(commands) and not wait:
                        raise
                    raise _outcome_unknown(  # say it of the whole batch
                        "the connection to Redis broke after the events were sent",
                        replies,
                        len(commands),
                    ) from exc.__cause__
                except self.state.connection_errors as exc:  # nothing of this run was sent
                    left = give_up - anyio.current_time()
                    if replies:  # an earlier run was stored
                        raise _outcome_unknown(
                            "Redis could not be reached for the rest of the batch",
                            replies,
                            len(commands),
                        ) from exc
                    if left <= 0:
                        raise TransportError(
                            f"cannot reach Redis to publish (publish_retry_for={retry_for} s)"
                        ) from exc
                    await self.state.follow(exc)
                await self.state.back_off(backoff, "publishing", at_most=left)
            if wait:
                self._check_replicas(replies.pop(), start, len(commands))

    def _check_replicas(self, reply: Any, start: int, count: int) -> None:
        """Raise ``PublishOutcomeUnknownError`` unless ``reply`` (to ``WAIT``) says that
        enough replicas have the run that began at event ``start`` of ``count``."""
        wanted = self.state.settings.replicas
        if isinstance(reply, int) and reply >= wanted:
            return
        said = f"{type(reply).__name__}: {reply}" if isinstance(reply, ResponseError) else reply
        what = "the event" if count == 1 else f"events {start + 1} to {count}"
        raise PublishOutcomeUnknownError(
            f"Redis stored {what}, but {said} of the {wanted} replicas asked for confirmed "
            f"within replica_timeout={self.state.settings.replica_timeout} s: a failover "
            "may lose it",
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

    # -- subscribing ---------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> RedisSubscription:
        """Create the group (from the stream's start) when missing and join it."""
        if self._closed:
            raise TransportClosedError("subscribe on a closed connection")
        sub = RedisSubscription(self.state, topic, group)
        async with wrapped("creating a consumer group"):
            await self.state.join(topic, group)
        self._subs.append(sub)
        return sub

    # -- background work -----------------------------------------------------------

    async def serve(self) -> None:
        """Keep the leases of held entries (XCLAIM them to ourselves every third of the
        claim timeout), list the groups whose listing in ``prefix:groups`` Redis refused,
        and, unless ``retention`` is None, trim the streams read (see ``Retention``); a
        bus without subscriptions trims nothing."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._renew_leases)
            if self.state.settings.retention is not None:
                retention = Retention(self.state, self.state.settings.retention)
                tasks.start_soon(retention.run, self._topics)

    def _topics(self) -> list[str]:
        return [sub.topic for sub in self._subs]

    async def _renew_leases(self) -> None:
        while not self._closed:
            await anyio.sleep(self.state.settings.claim_timeout / 3)
            for sub in list(self._subs):
                try:
                    await self.state.renew(sub.held_entries(), sub.group)
                except (RedisError, OSError) as exc:
                    logger.warning("could not renew the leases of %s: %s", sub.group, exc)
            try:
                await self.state.list_unlisted()
            except (RedisError, OSError) as exc:
                logger.warning("could not list the groups: %s", exc)

    # -- groups (GroupManagement) ---------------------------------------------------

    async def declare_group(self, topic: str, group: str, start: str = "earliest") -> None:
        """Create ``group`` on ``topic`` when missing, at the stream's first entry
        (``"earliest"``, logging how many it will handle) or after its last."""
        await GroupAdmin(self.state).declare(topic, group, start)

    async def delete_group(self, group: str, topic: str | None = None) -> int:
        """Destroy the group with its redeliver stream, retries and dead letters."""
        return await GroupAdmin(self.state).delete(group, topic)

    async def reset_group(self, group: str, to: str, topic: str | None = None) -> int:
        """Drop what the group has not handled, then move it to ``to``."""
        return await GroupAdmin(self.state).reset(group, to, topic)

    # -- waiting and dead letters ----------------------------------------------------

    async def wait_idle(self) -> None:
        """Poll until every known group has no unread, pending or scheduled entry.

        Rides out connection failures (with backoff); other Redis errors raise
        ``TransportError``.
        """
        backoff = self.state.backoff()
        while True:
            try:
                async with wrapped("waiting for the groups to finish"):
                    if await self._idle():
                        return
                backoff.reset()
                await anyio.sleep(_IDLE_POLL)  # Redis has no idle notification: poll
            except TransportError as exc:
                if not isinstance(exc.__cause__, self.state.connection_errors):
                    raise
                await self.state.back_off(backoff, "waiting for the groups to finish")

    async def _idle(self) -> bool:
        """Send every subscription's acks, then look at each group (one script each).
        Not idle while a subscription of this connection still holds an entry: one
        whose entry left the stream and the pending list is being settled from what the
        worker holds, which Redis no longer shows."""
        for sub in self._subs:
            await sub.flush_acks()
            if sub.holding:
                return False
        for topic, group in await self.state.groups():
            keys = self.state.keys(topic, group)
            idle = await self.state.scripts.idle(
                keys=[keys.stream, keys.redeliver, keys.retry], args=[group]
            )
            if not idle:
                return False
        return True

    async def inspect(self) -> list[GroupStats]:
        """Every group listed in ``prefix:groups``, counted by one script each (the acks
        this connection queued are sent first)."""
        async with wrapped("inspecting the groups"):
            for sub in self._subs:
                await sub.flush_acks()
            return [await self._stats(topic, group) for topic, group in await self.state.groups()]

    async def _stats(self, topic: str, group: str) -> GroupStats:
        keys = self.state.keys(topic, group)
        (
            waiting,
            in_flight,
            scheduled,
            dead,
            length,
            consumers,
            oldest,
        ) = await self.state.scripts.stats(
            keys=[keys.stream, keys.redeliver, keys.retry, keys.dead], args=[group]
        )
        age = None if int(oldest) < 0 else int(oldest) / 1000
        counts = (int(waiting), int(in_flight), int(scheduled), int(dead))
        pairs = zip(consumers[::2], consumers[1::2], strict=True)
        idle = tuple((name.decode(), int(ms) / 1000) for name, ms in pairs)
        return GroupStats(topic, group, *counts, int(length), len(idle), age, idle)

    async def dead_letters(self, group: str | None = None) -> list[StoredDeadLetter]:
        """Every dead letter of ``group`` (all groups when None), oldest first."""
        async with wrapped("listing dead letters"):
            return await self._dead.listed(group)

    async def replay_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """Move dead letters back to their group's redeliver stream as attempt 1."""
        async with wrapped("replaying dead letters"):
            return await self._dead.replay(group, ids)

    async def purge_dead_letters(self, group: str | None, ids: Sequence[str] | None) -> int:
        """XDEL the chosen dead letters."""
        async with wrapped("purging dead letters"):
            return await self._dead.purge(group, ids)

    # -- opening and closing -----------------------------------------------------------

    async def check_server(self) -> None:
        """Warn when Redis may evict streams or keeps nothing on disk, and when ``maxlen``
        may drop entries that a group has not read."""
        client = self.state.client
        await client.ping()  # raises when Redis is unreachable or refuses the login
        if self.state.settings.maxlen is not None:
            logger.warning(
                "maxlen=%d caps each stream and may drop entries that a slow group has not "
                "read; retention= trims only entries that every group acknowledged",
                self.state.settings.maxlen,
            )
        try:
            policy, aof, save = [
                _first(await client.config_get(name))
                for name in ("maxmemory-policy", "appendonly", "save")
            ]
        except ResponseError:  # CONFIG not allowed for this user: nothing to check
            return
        _warn_about(policy, aof, save)

    async def aclose(self) -> None:
        """Close the subscriptions (handing back held entries), then the client."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                for sub in self._subs:
                    await _closed_quietly(sub)
            finally:
                self._subs.clear()
                await self.state.aclose()


async def _closed_quietly(sub: RedisSubscription) -> None:
    try:
        await sub.aclose()
    except Exception:  # one subscription's failure must not keep the others open
        logger.exception("closing the Redis subscription of %s failed", sub.group)


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


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


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


def _warn_about(policy: str, aof: str, save: str) -> None:
    """Warn when Redis may evict streams or keeps nothing on disk."""
    if policy and policy != "noeviction":
        logger.warning("Redis maxmemory-policy is %s: it may evict streams; use noeviction", policy)
    if aof != "yes" and not save:
        logger.warning("Redis persists nothing (appendonly no, no save): a restart loses events")


def _first(reply: Mapping[Any, Any]) -> str:
    for value in reply.values():
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""
