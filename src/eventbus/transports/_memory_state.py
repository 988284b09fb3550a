"""The state an ``InMemoryTransport`` shares with its connections and subscriptions."""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field

import anyio

from eventbus._clock import Clock
from eventbus._errors import ConfigurationError, PublishTimeoutError

from ._contract import Delivery, FailureNotes, GroupStats, Message, StoredDeadLetter

__all__ = ["Group", "MemoryState"]


@dataclass(eq=False)
class Group:
    """One group on one topic: its ready queue, retries and waiting tasks."""

    name: str
    topic: str
    ready: deque[Delivery] = field(default_factory=deque)
    retries: list[tuple[float, int, Delivery]] = field(default_factory=list)
    receivers: deque[anyio.Event] = field(default_factory=deque)
    space: deque[anyio.Event] = field(default_factory=deque)
    members: list[Sized] = field(default_factory=list)
    """What each open consumer of the group holds in flight (counted by ``stats``)."""
    handled: dict[str, float] = field(default_factory=dict)
    """Keys the group handled, each with the clock time it is forgotten, oldest first."""

    def wake_receiver(self) -> None:
        """Wake one task waiting for a delivery."""
        while self.receivers:
            waiter = self.receivers.popleft()
            if not waiter.is_set():
                waiter.set()
                return

    def wake_publisher(self) -> None:
        """Wake one publisher waiting for room."""
        while self.space:
            waiter = self.space.popleft()
            if not waiter.is_set():
                waiter.set()
                return


class MemoryState:
    """Groups, history, dead letters and the count of unfinished messages of one
    transport; its connections and subscriptions all work on it."""

    def __init__(self, max_queue: int, history: int, clock: Clock, handled_ttl: float) -> None:
        self.max_queue = max_queue
        self.handled_ttl = handled_ttl
        self.history_len = history
        self.clock = clock
        self.groups: dict[str, dict[str, Group]] = {}
        self.history: dict[str, deque[tuple[str, Message, object]]] = {}
        self.dead: list[StoredDeadLetter] = []
        self.outstanding = 0
        self.idle: list[anyio.Event] = []
        self.ids = itertools.count(1)
        self._seq = itertools.count()

    def topic_groups(self, topic: str) -> dict[str, Group]:
        """The groups of ``topic`` (none yet: an empty dict, and a history begins)."""
        groups = self.groups.get(topic)
        if groups is None:
            groups = self.groups[topic] = {}
            self.history[topic] = deque(maxlen=self.history_len)
        return groups

    async def wait_for_room(self, groups: dict[str, Group], timeout: float | None) -> None:
        """Wait until every group of a topic has room; ``PublishTimeoutError`` after
        ``timeout`` seconds."""
        if timeout is None:
            await self.room(groups)
            return
        try:
            with anyio.fail_after(timeout):
                await self.room(groups)
        except TimeoutError:
            raise PublishTimeoutError(
                f"no room in the queue within {timeout} s (max_queue={self.max_queue})"
            ) from None

    async def room(self, groups: dict[str, Group]) -> None:
        """Wait until every group of a topic has room (no stale waiter left behind)."""
        while full := [g for g in groups.values() if len(g.ready) >= self.max_queue]:
            group, waiter = full[0], anyio.Event()
            group.space.append(waiter)
            try:
                await waiter.wait()
            except BaseException:  # timed out or cancelled: leave no stale waiter behind
                if waiter.is_set():
                    group.wake_publisher()  # pass on the room we were given
                else:
                    with contextlib.suppress(ValueError):
                        group.space.remove(waiter)
                raise

    def join(self, topic: str, group: str) -> Group:
        """The group, made when new and filled with the topic's history."""
        groups = self.topic_groups(topic)
        state = groups.get(group)
        if state is None:
            state = groups[group] = Group(group, topic)
            self.fill(state)
        return state

    def fill(self, group: Group) -> None:
        """Queue the topic's history for the group."""
        for mid, message, reference in self.history[group.topic]:
            group.ready.append(Delivery(mid, group.topic, message, reference=reference))
            self.outstanding += 1

    def declare(self, topic: str, group: str, start: str) -> None:
        """Make the group when new: with the topic's history (``"earliest"``) or without."""
        if start == "earliest":
            self.join(topic, group)
        else:
            self.topic_groups(topic).setdefault(group, Group(group, topic))

    def matching(self, group: str, topic: str | None) -> list[Group]:
        """The groups named ``group`` (on ``topic`` only, when given); refuses a group
        that has consumers in this process."""
        found = [
            g
            for t, groups in self.groups.items()
            if topic is None or t == topic
            for name, g in groups.items()
            if name == group
        ]
        for g in found:
            if g.members:
                raise ConfigurationError(
                    f"group {group!r} of {g.topic} has consumers in this process; "
                    "close their buses first"
                )
        return found

    def drop(self, group: Group) -> None:
        """Forget what the group has queued or scheduled."""
        self.outstanding -= len(group.ready) + len(group.retries)
        group.ready.clear()
        group.retries.clear()
        if self.outstanding == 0:
            self.wake_idle()

    def delete(self, group: Group) -> None:
        """Delete the group, its queue, retries and dead letters."""
        self.drop(group)
        del self.groups[group.topic][group.name]
        self.dead = [d for d in self.dead if not (d.group == group.name and d.topic == group.topic)]

    def schedule(self, group: Group, delivery: Delivery, delay: float) -> None:
        """Keep a retry for ``delay`` seconds of the clock."""
        due = self.clock.now() + max(0.0, delay)
        heapq.heappush(group.retries, (due, next(self._seq), delivery))
        group.wake_receiver()

    def promote_due(self, group: Group) -> float | None:
        """Move due retries to the front of the queue; return the next due time."""
        now = self.clock.now()
        due: list[Delivery] = []
        while group.retries and group.retries[0][0] <= now:
            due.append(heapq.heappop(group.retries)[2])
        group.ready.extendleft(reversed(due))
        return group.retries[0][0] if group.retries else None

    def finish(self) -> None:
        """One message less unfinished; wake ``wait_idle`` when none is left."""
        self.outstanding -= 1
        if self.outstanding == 0:
            self.wake_idle()

    def wake_idle(self) -> None:
        """Wake every task waiting in ``wait_idle``."""
        for waiter in self.idle:
            waiter.set()
        self.idle.clear()

    def add_dead_letter(self, group: str, delivery: Delivery, notes: FailureNotes) -> None:
        """Keep a delivery among the dead letters of ``group``; it is finished."""
        self.dead.append(
            StoredDeadLetter(
                id=f"dl-{next(self.ids)}",
                message_id=delivery.id,
                group=group,
                topic=delivery.topic,
                message=delivery.message,
                attempt=delivery.attempt,
                notes=notes,
                reference=delivery.reference,
            )
        )
        self.finish()

    def select(self, group: str | None, ids: Sequence[str] | None) -> list[StoredDeadLetter]:
        """The dead letters of ``group`` (any when None) whose id is in ``ids`` (any
        when None), oldest first."""
        wanted = None if ids is None else set(ids)
        return [
            d
            for d in self.dead
            if (group is None or d.group == group) and (wanted is None or d.id in wanted)
        ]

    def full(self, groups: dict[str, Group]) -> bool:
        """Whether a group of a topic has no room for one more message."""
        limit = self.max_queue
        for group in groups.values():  # noqa: SIM110 - a loop: no generator on the hot path
            if len(group.ready) >= limit:
                return True
        return False

    def append(
        self, topic: str, groups: dict[str, Group], message: Message, reference: object
    ) -> str:
        """Queue a message (or a reference) for every group of its topic; return its id."""
        mid = str(next(self.ids))
        self.history[topic].append((mid, message, reference))
        for group in groups.values():
            group.ready.append(Delivery(mid, topic, message, 1, None, reference))
            self.outstanding += 1
            if group.receivers:
                group.wake_receiver()
        return mid

    def is_handled(self, group: Group, key: str) -> bool:
        """Whether ``group`` recorded ``key`` as handled, and the record has not expired."""
        until = group.handled.get(key)
        return until is not None and until > self.clock.now()

    def remember(self, group: Group, key: str) -> None:
        """Record ``key`` as handled by ``group`` for ``handled_ttl`` seconds; forget the
        records that expired (they are kept oldest first)."""
        now, handled = self.clock.now(), group.handled
        handled.pop(key, None)
        handled[key] = now + self.handled_ttl
        for old in list(itertools.islice(handled, 64)):
            if handled[old] > now:
                break
            del handled[old]

    def stats(self) -> list[GroupStats]:
        """Every group, sorted by topic then group."""
        dead: dict[tuple[str, str], int] = {}
        for letter in self.dead:
            key = (letter.topic, letter.group)
            dead[key] = dead.get(key, 0) + 1
        return [
            GroupStats(
                g.topic,
                g.name,
                len(g.ready),
                sum(len(held) for held in g.members),
                len(g.retries),
                dead.get((t, n), 0),
                stream_length=len(self.history.get(t, ())),
                consumers=len(g.members),
            )
            for t, groups in sorted(self.groups.items())
            for n, g in sorted(groups.items())
        ]
