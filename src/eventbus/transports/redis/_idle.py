"""Reading for the idle subscriptions of one connection, on a few shared connections.

A subscription whose last read found nothing *parks* here: it gives its own connection
back and waits until entries arrive for it, or until it must look after its retries and
leases. So a worker holds a connection per subscription only while that subscription has
work; an idle event type costs no connection of its own.

- On a single server the parked subscriptions of one group share one blocking
  ``XREADGROUP`` over all their streams: one connection per group. A subscription that
  parks while that read blocks wakes it (``CLIENT UNBLOCK``), so that its streams join
  the read at once.
- On a cluster one command cannot span slots, so a script per master
  (``allow-cross-slot-keys``) reads the parked streams of every group there without
  blocking, every ``idle_poll`` seconds: one connection per master, and a first entry
  after a quiet spell waits up to ``idle_poll`` seconds.

One parked subscription at a time leads the reads (the others wait on their own event),
as a subscription's tasks take turns fetching; the entries read are handed to their
subscriptions whichever one led. Entries read for a subscription that closed meanwhile
are handed back to the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from redis.exceptions import RedisError, ResponseError

from ._commands import XreadgroupCommand, packed_streams, resp_command
from ._entries import Fields, read_entries
from ._links import ensure_connected
from ._poll import poll_master, unsupported_script
from ._scripts import Keys
from ._state import RedisState, logger

__all__ = ["IdleReaders", "Parked"]


Entry = tuple["Parked", str, str, Fields]
"""An entry read for a subscription: the subscription, stream key, entry id, fields."""
_Owners = dict[str, "Parked"]  # stream key: the subscription that reads it


class Parked(Protocol):
    """A subscription, as the idle readers see it."""

    @property
    def keys(self) -> Keys:
        """Its keys (the stream and the redeliver stream are read)."""

    @property
    def group(self) -> str:
        """Its consumer group."""

    @property
    def closed(self) -> bool:
        """Whether it closed (entries read for it then go back to the group)."""

    def take(self, key: str, entry_id: str, fields: Fields) -> None:
        """Hold an entry read for it, to be handed out by its next ``receive``."""


@dataclass(eq=False, slots=True)
class _Waiter:
    until: float
    nudge: anyio.Event = field(default_factory=anyio.Event)  # look again: done, or lead
    done: bool = False  # entries were read for it, or the shared read failed
    failed: bool = False  # the shared read failed: read on a connection of its own

    def wake(self, *, failed: bool = False) -> None:
        self.done = True
        self.failed |= failed
        self.nudge.set()


class IdleReaders:
    """Where the idle subscriptions of one connection wait (see the module docstring)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._cluster = state.settings.cluster
        self._poll = state.settings.idle_poll
        self._parked: dict[str, dict[Parked, _Waiter]] = {}  # by group; "" on a cluster
        self._leading: set[str] = set()
        self._reading: dict[str, set[Parked]] = {}  # the subscriptions in a blocked read
        self._reader_ids: dict[str, int] = {}  # the blocked read's client id
        self._late: set[str] = set()  # groups with a subscription not in their read
        self._links: dict[str, Any] = {}  # a group's reading connection (one server)
        self._commands: dict[str, tuple[list[Parked], XreadgroupCommand, _Owners]] = {}
        self._streams: dict[Parked, bytes] = {}  # packed, of each one parked and open
        self._can_unblock = True
        self._closed = False
        self._read_failures: tuple[type[BaseException], ...] = (
            ResponseError,
            *state.connection_errors,
        )  # how a shared read fails

    @property
    def enabled(self) -> bool:
        """Whether idle subscriptions park (on a cluster, unless ``idle_poll`` is None)."""
        return not self._closed and not (self._cluster and self._poll is None)

    async def wait(self, sub: Parked, until: float) -> bool:
        """Wait until entries were read for ``sub`` or until ``until`` (on the event
        loop's clock). False when the shared read failed (connection lost, a refused
        read, a key that moved): the subscription then reads on a connection of its own,
        where its own error handling applies."""
        scope = "" if self._cluster else sub.group
        if sub not in self._streams:  # packed once, for the group's reads
            self._streams[sub] = packed_streams(sub.keys)
        waiter = _Waiter(until)
        parked = self._parked.setdefault(scope, {})
        parked[sub] = waiter
        try:
            await anyio.lowlevel.checkpoint()  # never a loop without a turn of the loop
            await self._join(scope, sub)
            while not waiter.done and anyio.current_time() < until:
                if not (self.enabled or self._closed):  # the cluster refused the script
                    waiter.wake(failed=True)
                    continue
                if scope not in self._leading and self.enabled:
                    await self._lead(scope, waiter)
                    continue
                waiter.nudge = anyio.Event()
                with anyio.move_on_after(until - anyio.current_time()):
                    await waiter.nudge.wait()
        finally:
            if parked.get(sub) is waiter:
                del parked[sub]
            if sub.closed:
                self._streams.pop(sub, None)
            if scope not in self._leading:  # it led, or was to lead next: hand it on
                self._nudge_one(scope)
        return not waiter.failed

    def _nudge_one(self, scope: str) -> None:
        """Wake a parked subscription of ``scope`` that waits, so that it leads."""
        for other in self._parked.get(scope, {}).values():
            if not other.done:
                other.nudge.set()
                return

    async def _lead(self, scope: str, waiter: _Waiter) -> None:
        """Read for every parked subscription of ``scope`` until ``waiter`` is woken or
        due (``wait`` then hands the lead on)."""
        self._leading.add(scope)
        try:
            while not waiter.done and self.enabled and anyio.current_time() < waiter.until:
                if self._cluster:
                    await self._poll_round(waiter)
                else:
                    await self._blocking_round(scope, waiter.until)
                await self._state.links.trim()  # what the busy subscriptions left, in time
        finally:
            self._leading.discard(scope)

    # -- one server: a blocking read per group ---------------------------------------

    async def _join(self, scope: str, sub: Parked) -> None:
        """Wake the group's blocked read, when ``sub`` is not in it, so that it is."""
        reading = self._reading.get(scope)
        if reading is None or sub in reading or not self._can_unblock:
            return
        self._late.add(scope)
        await self._unblock(scope)

    async def _unblock(self, scope: str) -> None:
        """``CLIENT UNBLOCK`` the group's read, once; when its client id is not known
        yet, the leader does it as soon as it is (``_late``)."""
        reader = self._reader_ids.pop(scope, None)
        if reader is None:
            return
        try:
            await self._state.client.client_unblock(reader)
        except ResponseError as exc:  # CLIENT not allowed for this user (ACL)
            self._refused_unblock(exc)
        except self._state.connection_errors:
            pass  # the blocked read fails as well, and the next one includes the joiner

    def _refused_unblock(self, exc: ResponseError) -> None:
        if self._can_unblock:
            logger.warning(
                "Redis refused CLIENT (%s); an idle subscription starts reading when its "
                "group's shared read returns (within block seconds)",
                exc,
            )
        self._can_unblock = False

    async def _blocking_round(self, group: str, until: float) -> None:
        """One blocking read of every parked subscription of ``group``; hand out what
        it finds."""
        subs = list(self._parked.get(group, {}))
        block = min(self._state.settings.block, until - anyio.current_time())
        self._late.discard(group)
        self._reading[group] = set(subs)
        try:
            reply = await self._read_blocking(group, subs, block)
        except self._read_failures as exc:  # NOGROUP of one stream fails them all
            self._failed(group, subs, exc)
            return
        finally:
            self._reading.pop(group, None)
            self._reader_ids.pop(group, None)
        await self._hand_out(group, self._owned(group, reply))
        await anyio.lowlevel.checkpoint()  # those woken run before the next read is built

    async def _read_blocking(self, group: str, subs: list[Parked], block: float) -> Any:
        """Send ``CLIENT ID`` and the ``XREADGROUP`` on the group's connection; note the
        id (wake the read at once when a subscription joined meanwhile); return the
        read's reply. A connection failure drops the connection; so does a cancellation
        that ``_rescue`` cannot mend."""
        state = self._state
        command = self._command(group, subs).pack(max(1, int(block * 1000) + 1))
        link = self._links.pop(group, None) or state.links.take(subs[0].keys.stream)
        try:
            await ensure_connected(link)
            if not self._can_unblock:
                await link.send_packed_command(command, check_health=False)
            else:
                await link.send_packed_command(_CLIENT_ID + command, check_health=False)
                await self._note_reader(group, link)
            reply = await link.read_response(disconnect_on_error=False)
        except ResponseError:
            self._links[group] = link  # a refused read leaves the connection sound
            raise
        except anyio.get_cancelled_exc_class():
            await self._rescue(group, subs, link)
            raise
        except BaseException:
            await state.links.discard(link)
            raise
        self._links[group] = link
        return reply

    async def _rescue(self, group: str, subs: list[Parked], link: Any) -> None:
        """The leader was cancelled (its subscription closes) while the group's read
        waits: wake the read and hand out what it got, so that no entry read for the
        others waits for the claim timeout. Shielded, for 2 s at most; when that
        fails, the connection is dropped and the others are woken as failed (they list
        their pending entries again, where what the read got is)."""
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 2.0):
            if self._reader_ids.get(group) is not None and link.is_connected:
                try:
                    await self._unblock(group)
                    reply = await link.read_response()
                    await self._hand_out(group, self._owned(group, reply))
                    self._links[group] = link
                    return
                except (RedisError, OSError):
                    pass
        await self._state.links.discard(link)
        for sub in subs:
            self._wake(group, sub, failed=True)

    def _command(self, group: str, subs: list[Parked]) -> XreadgroupCommand:
        """The group's read of ``subs``, packed once for as long as they stay parked,
        and whose each of its streams is."""
        cached = self._commands.get(group)
        if cached is None or cached[0] != subs:
            state, pairs = self._state, [self._streams[sub] for sub in subs]
            command = XreadgroupCommand(pairs, group, state.consumer, state.settings.prefetch)
            owners = {key: sub for sub in subs for key in (sub.keys.stream, sub.keys.redeliver)}
            cached = self._commands[group] = (subs, command, owners)
        return cached[1]

    async def _note_reader(self, group: str, link: Any) -> None:
        """Read the ``CLIENT ID`` reply; unblock at once when a subscription joined."""
        try:
            self._reader_ids[group] = int(await link.read_response())
        except ResponseError as exc:  # CLIENT not allowed for this user (ACL)
            self._refused_unblock(exc)
            return
        if group in self._late:
            await self._unblock(group)

    # -- a cluster: a script per master, polled -----------------------------------------

    async def _poll_round(self, leader: _Waiter) -> None:
        parked = self._parked.get("", {})
        by_node: dict[str, list[Parked]] = {}
        for sub in parked:
            try:
                node = self._state.links.node_name(sub.keys.stream)
            except self._state.connection_errors:  # no master serves the slot now
                self._wake("", sub, failed=True)
                continue
            by_node.setdefault(node, []).append(sub)
        async with anyio.create_task_group() as polls:  # one slow master delays no other
            for subs in by_node.values():
                polls.start_soon(self._poll_node, subs)
        if not leader.done and self._poll is not None:
            await anyio.sleep(max(0.0, min(self._poll, leader.until - anyio.current_time())))

    async def _poll_node(self, subs: list[Parked]) -> None:
        """Read the parked streams of one master (see ``poll_master``); hand out."""
        state = self._state
        streams = [(s.group, key) for s in subs for key in (s.keys.redeliver, s.keys.stream)]
        try:
            reply = await poll_master(state, streams)
        except self._read_failures as exc:  # also refused: NOSCRIPT twice, OOM, ACL
            self._failed("", subs, exc)
            return
        await self._hand_out_polled(subs, reply)

    async def _hand_out_polled(self, subs: list[Parked], replies: list[Any]) -> None:
        """Hand out the entries of each subscription's two replies; wake those of which
        a reply is an error (a key moved, a group lost) to read on their own."""
        entries: list[Entry] = []
        failed: list[Parked] = []
        for index, sub in enumerate(subs):
            for reply in replies[2 * index : 2 * index + 2]:
                if isinstance(reply, ResponseError):
                    failed.append(sub)
                else:
                    entries.extend((sub, *entry) for entry in read_entries(reply))
        await self._hand_out("", entries)
        for sub in failed:
            self._wake("", sub, failed=True)

    # -- handing out -------------------------------------------------------------------

    def _owned(self, group: str, reply: Any) -> list[Entry]:
        """The entries of a group's last read, each with the subscription of its stream."""
        owners = self._commands[group][2]
        return [(owners[key], key, i, fields) for key, i, fields in read_entries(reply)]

    async def _hand_out(self, scope: str, entries: list[Entry]) -> None:
        """Give each entry to its subscription; wake those that got some. Entries of a
        subscription that closed meanwhile go back to the group."""
        orphans: dict[Parked, dict[str, list[str]]] = {}
        for sub, key, entry_id, fields in entries:
            if sub.closed:
                orphans.setdefault(sub, {}).setdefault(key, []).append(entry_id)
                continue
            sub.take(key, entry_id, fields)
            self._wake(scope, sub)
        for sub, held in orphans.items():
            try:
                await self._state.release(held, sub.group)
            except (RedisError, OSError) as exc:
                logger.warning(
                    "could not hand back entries read for a closed subscription of %s "
                    "(%s); they wait for the claim timeout",
                    sub.group,
                    type(exc).__name__,
                )

    def _wake(self, scope: str, sub: Parked, *, failed: bool = False) -> None:
        waiter = self._parked.get(scope, {}).get(sub)
        if waiter is not None:
            waiter.wake(failed=failed)

    def _failed(self, scope: str, subs: list[Parked], exc: BaseException) -> None:
        logger.debug("the shared read of idle subscriptions failed: %s", type(exc).__name__)
        if self._cluster and unsupported_script(exc):
            self._unsupported(exc)
        for sub in subs:
            self._wake(scope, sub, failed=True)

    def _unsupported(self, exc: BaseException) -> None:
        """Stop parking: every subscription reads on a connection of its own."""
        if self._poll is not None:
            logger.error(
                "Redis refused the script that reads idle subscriptions (%s; it needs "
                "Redis 7.0 or newer); every subscription keeps a connection of its own",
                exc,
            )
        self._poll = None
        for waiter in self._parked.get("", {}).values():
            waiter.wake(failed=True)

    def close(self) -> None:
        """Stop reading: the subscriptions close next (``Links`` closes the connections),
        and no parked one should start a read meanwhile."""
        self._closed = True


_CLIENT_ID = resp_command([b"CLIENT", b"ID"])
