"""Properties of the whole bus on the in-memory transport: no loss, no duplicates, order.

Each example runs a fresh bus with ``anyio.run`` (hypothesis drives sync tests only) on a
virtual clock, so retry delays cost no time, then compares what the handlers saw and the
dead letters with what the scenario's failure plans predict.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus import Context, DeadLetter, Event, EventBus, InMemoryTransport, Retry, RetryPolicy
from eventbus.testing import VirtualClock, drain

BACKENDS = ["asyncio", "trio"]
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Placed(Event, name="prop.placed"):
    """A background event."""

    seq: int


class Paid(Event, name="prop.paid"):
    """Another background event, with a Decimal and unicode to serialize."""

    seq: int
    amount: Decimal = Decimal("9.90")
    note: str = "Zoë ✓"


class Flagged(Event, name="prop.flagged", urgent=True):
    """An urgent event, served on its own lane."""

    seq: int


PropEvent = Placed | Paid | Flagged
EVENT_TYPES: tuple[type[PropEvent], ...] = (Placed, Paid, Flagged)


class TransientError(Exception):
    """A failure worth retrying."""


class FatalError(Exception):
    """A failure listed in give_up_on: never retried."""


@dataclass(frozen=True)
class Plan:
    """How one group's handler behaves for one event.

    ``failures`` attempts fail (with ``Retry(delay=...)`` when ``ask_retry``, else
    ``TransientError``); the next attempt raises ``FatalError`` when ``fatal``, else succeeds.
    ``pauses`` checkpoints inside each attempt let other handler calls interleave.
    """

    failures: int = 0
    fatal: bool = False
    ask_retry: bool = False
    pauses: int = 0


@dataclass(frozen=True)
class GroupSpec:
    """One group: its options and a plan for every published event."""

    name: str
    max_attempts: int
    initial_delay: float
    concurrency: int
    plans: tuple[Plan, ...]


@dataclass(frozen=True)
class Scenario:
    """Events to publish (an index into EVENT_TYPES each), and the groups that take them."""

    kinds: tuple[int, ...]
    groups: tuple[GroupSpec, ...]
    yield_between_publishes: bool


@dataclass(frozen=True)
class Call:
    """One handler call as the handler saw it."""

    group: str
    seq: int
    urgent: bool
    attempt: int


@dataclass
class Journal:
    """What the handlers saw, and the dead letters at the end."""

    calls: list[Call] = field(default_factory=list)
    handled: list[tuple[str, int]] = field(default_factory=list)
    in_flight: Counter[tuple[str, bool]] = field(default_factory=Counter)
    peak: Counter[tuple[str, bool]] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)

    async def attempt(self, spec: GroupSpec, event: PropEvent, attempt: int) -> None:
        """Record the call, then fail or succeed as the event's plan says."""
        lane = (spec.name, type(event).event_urgent)
        self.calls.append(Call(spec.name, event.seq, lane[1], attempt))
        self.in_flight[lane] += 1
        self.peak[lane] = max(self.peak[lane], self.in_flight[lane])
        try:
            plan = spec.plans[event.seq]
            for _ in range(plan.pauses):
                await anyio.lowlevel.checkpoint()
            if attempt <= plan.failures:
                raise Retry(delay=0.5) if plan.ask_retry else TransientError(f"attempt {attempt}")
            if plan.fatal:
                raise FatalError("give up")
            self.handled.append((spec.name, event.seq))
        finally:
            self.in_flight[lane] -= 1


# -- running a scenario ---------------------------------------------------------------


def subscribe_group(bus: EventBus, spec: GroupSpec, journal: Journal) -> None:
    """Subscribe one handler for every event type in the group ``spec`` describes."""
    policy = RetryPolicy(
        max_attempts=spec.max_attempts, initial_delay=spec.initial_delay, give_up_on=(FatalError,)
    )

    @bus.subscribe(group=spec.name, retry=policy, concurrency=spec.concurrency)
    async def handle(event: PropEvent, context: Context) -> None:
        await journal.attempt(spec, event, context.attempt)


async def play(scenario: Scenario, serialize: bool) -> Journal:
    """Publish the scenario's events on a fresh bus, drain it, and return the journal."""
    transport = InMemoryTransport(clock=VirtualClock(), serialize=serialize)
    bus = EventBus(transport=transport)
    journal = Journal()
    for spec in scenario.groups:
        subscribe_group(bus, spec, journal)
    async with bus:
        for seq, kind in enumerate(scenario.kinds):
            await bus.publish(EVENT_TYPES[kind](seq=seq))
            if scenario.yield_between_publishes:
                await anyio.lowlevel.checkpoint()
        await drain(bus, reraise=False)
        journal.dead = await bus.dead_letters()
    return journal


def run(scenario: Scenario, backend: str, serialize: bool = False) -> Journal:
    """Play the scenario in a new event loop of ``backend``."""
    return anyio.run(play, scenario, serialize, backend=backend)


# -- what the plans predict -----------------------------------------------------------


def expected_outcome(plan: Plan, max_attempts: int) -> tuple[str, int]:
    """("handled" or the dead letter's reason, number of attempts) for one plan."""
    if plan.failures >= max_attempts:
        return "retries-exhausted", max_attempts
    if plan.fatal:
        return "non-retryable", plan.failures + 1
    return "handled", plan.failures + 1


def dead_seq(dead: DeadLetter) -> int:
    """The seq of the event of a dead letter (which must have been decoded)."""
    assert isinstance(dead.event, Placed | Paid | Flagged)
    return dead.event.seq


def publish_order(scenario: Scenario, kind: int) -> list[int]:
    """The seqs of the events of one type, in publish order."""
    return [seq for seq, k in enumerate(scenario.kinds) if k == kind]


# -- strategies -----------------------------------------------------------------------

SOME_CONCURRENCY = st.integers(1, 4)
NO_PAUSES = st.just(0)


def plans(pauses: st.SearchStrategy[int]) -> st.SearchStrategy[Plan]:
    """Failure plans: up to 5 failures (beyond any max_attempts), maybe ending fatally."""
    return st.builds(
        Plan,
        failures=st.integers(0, 5),
        fatal=st.booleans(),
        ask_retry=st.booleans(),
        pauses=pauses,
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
    concurrency: st.SearchStrategy[int] = SOME_CONCURRENCY,
    pauses: st.SearchStrategy[int] = NO_PAUSES,
) -> Scenario:
    """0-60 events of three types, 1-3 groups, each reliable or with random failures."""
    kinds = tuple(draw(st.lists(st.integers(0, len(EVENT_TYPES) - 1), max_size=60)))
    groups = []
    for index in range(draw(st.integers(1, 3))):
        plan = plans(pauses) if draw(st.booleans()) else st.builds(Plan, pauses=pauses)
        groups.append(
            GroupSpec(
                name=f"g{index}",
                max_attempts=draw(st.integers(1, 4)),
                initial_delay=draw(st.sampled_from([0.0, 0.01, 1.0, 60.0])),
                concurrency=draw(concurrency),
                plans=tuple(draw(st.lists(plan, min_size=len(kinds), max_size=len(kinds)))),
            )
        )
    return Scenario(kinds, tuple(groups), draw(st.booleans()))


# -- properties -----------------------------------------------------------------------


@pytest.mark.parametrize("serialize", [False, True], ids=["shared", "serialized"])
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(scenario=scenarios())
def test_every_event_is_handled_once_or_dead_lettered_per_group(
    backend: str, serialize: bool, scenario: Scenario
) -> None:
    """Each group handles each event once, or dead-letters it after the planned attempts."""
    journal = run(scenario, backend, serialize)

    handled = Counter(journal.handled)
    dead = Counter((d.group, dead_seq(d)) for d in journal.dead)
    assert max(handled.values(), default=1) == 1, "an event was handled twice by one group"
    assert max(dead.values(), default=1) == 1, "an event was dead-lettered twice by one group"
    letters = {(d.group, dead_seq(d)): d for d in journal.dead}
    for spec in scenario.groups:
        for seq, plan in enumerate(spec.plans):
            key = (spec.name, seq)
            outcome, attempts = expected_outcome(plan, spec.max_attempts)
            assert (key in handled) is (outcome == "handled"), key
            assert (key in letters) is (outcome != "handled"), key
            if key in letters:
                assert (letters[key].reason, letters[key].attempts) == (outcome, attempts), key
    assert sum(handled.values()) + sum(dead.values()) == len(scenario.kinds) * len(scenario.groups)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(scenario=scenarios())
def test_attempts_seen_by_handlers_count_up_from_one(backend: str, scenario: Scenario) -> None:
    """The attempts a handler sees for one event in one group are 1, 2, 3... in order."""
    journal = run(scenario, backend)

    seen: defaultdict[tuple[str, int], list[int]] = defaultdict(list)
    for call in journal.calls:
        seen[(call.group, call.seq)].append(call.attempt)
    for spec in scenario.groups:
        for seq, plan in enumerate(spec.plans):
            _, attempts = expected_outcome(plan, spec.max_attempts)
            assert seen[(spec.name, seq)] == list(range(1, attempts + 1)), (spec.name, seq)


@pytest.mark.parametrize("serialize", [False, True], ids=["shared", "serialized"])
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(scenario=scenarios(concurrency=st.just(1)))
def test_concurrency_one_groups_keep_publish_order_per_type(
    backend: str, serialize: bool, scenario: Scenario
) -> None:
    """With concurrency 1, first attempts and reliable successes keep publish order per type."""
    journal = run(scenario, backend, serialize)

    for spec in scenario.groups:
        reliable = all(plan == Plan() for plan in spec.plans)
        for kind in range(len(EVENT_TYPES)):
            in_order = publish_order(scenario, kind)
            of_kind = set(in_order)
            first = [
                c.seq
                for c in journal.calls
                if c.group == spec.name and c.attempt == 1 and c.seq in of_kind
            ]
            assert first == in_order, (spec.name, kind)
            if reliable:
                done = [seq for g, seq in journal.handled if g == spec.name and seq in of_kind]
                assert done == in_order, (spec.name, kind)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(scenario=scenarios(concurrency=st.integers(2, 6), pauses=st.integers(0, 3)))
def test_concurrent_groups_lose_and_duplicate_nothing(backend: str, scenario: Scenario) -> None:
    """With concurrency > 1 nothing is lost or duplicated, and no lane exceeds its concurrency."""
    journal = run(scenario, backend)

    expected = {
        (spec.name, seq)
        for spec in scenario.groups
        for seq, plan in enumerate(spec.plans)
        if expected_outcome(plan, spec.max_attempts)[0] == "handled"
    }
    assert sorted(journal.handled) == sorted(expected)
    dead = sorted((d.group, dead_seq(d)) for d in journal.dead)
    everything = {(spec.name, seq) for spec in scenario.groups for seq in range(len(spec.plans))}
    assert dead == sorted(everything - expected)
    for spec in scenario.groups:
        for urgent in (False, True):
            assert journal.peak[(spec.name, urgent)] <= spec.concurrency, (spec.name, urgent)
