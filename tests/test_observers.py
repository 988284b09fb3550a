"""Observers: told of every accepted publish and of what became of each handler attempt."""

from __future__ import annotations

import logging

import pytest

from eventbus import (
    ConfigurationError,
    Context,
    Envelope,
    Event,
    EventBus,
    ImmediateHandlerError,
    InMemoryTransport,
    Observer,
    Outcome,
    RetryPolicy,
)
from eventbus.testing import capture, drain
from eventbus.transports import Message
from tests.events import OrderCreated, OrderPaid, UserBanned

pytestmark = pytest.mark.anyio


class Journal(Observer):
    """Records what it is told."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.outcomes: list[Outcome] = []
        self.failures: list[Outcome] = []

    def on_published(self, event: Event, envelope: Envelope) -> None:
        self.published.append((envelope.name, envelope.id))

    def on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def on_failure(self, outcome: Outcome) -> None:
        self.failures.append(outcome)


class FailuresOnly(Observer):
    """Overrides on_failure alone."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def on_failure(self, outcome: Outcome) -> None:
        self.failures.append(outcome.action)


async def test_background_outcomes_are_ack_retry_and_dead_letter() -> None:
    """A flaky handler's attempts are told as retry then ack; a hopeless one dead-letters."""
    journal = Journal()
    bus = EventBus(observers=[journal])

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def send(event: OrderCreated, context: Context) -> None:
        if event.order_id == "never" or context.attempt == 1:
            raise ConnectionError("smtp down")

    async with bus:
        ok = await bus.publish(OrderCreated(order_id="flaky"))
        bad = await bus.publish(OrderCreated(order_id="never"))
        await drain(bus, reraise=False)

    def attempts_of(event_id: str) -> list[tuple[str, int]]:
        return [
            (o.action, o.attempt)
            for o in journal.outcomes
            if o.envelope and o.envelope.id == event_id
        ]

    assert attempts_of(ok.id) == [("retry", 1), ("ack", 2)]
    assert attempts_of(bad.id) == [("retry", 1), ("dead-letter", 2)]
    last = journal.outcomes[-1]
    assert (last.group, last.reason, type(last.error)) == (
        "email",
        "retries-exhausted",
        ConnectionError,
    )
    assert str(last.handler).endswith("send")
    assert [o.action for o in journal.failures] == ["retry", "retry", "dead-letter"]
    assert journal.published == [("OrderCreated", ok.id), ("OrderCreated", bad.id)]


async def test_retry_outcome_carries_its_delay() -> None:
    """A retry outcome says how long the event waits before its next attempt."""
    journal = Journal()
    bus = EventBus(observers=[journal])

    @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    async def flaky(event: OrderCreated, context: Context) -> None:
        if context.attempt == 1:
            raise ConnectionError("later")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert [(o.action, o.delay) for o in journal.outcomes] == [("retry", 0.01), ("ack", None)]


async def test_immediate_outcomes_end_in_raise() -> None:
    """An immediate subscriber that gives up is told as "raise", not as a dead letter."""
    journal = Journal()
    bus = EventBus(observers=[journal])

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def block(event: UserBanned) -> None:
        raise PermissionError("auth store down")

    async with bus:
        with pytest.raises(ImmediateHandlerError):
            await bus.publish(UserBanned(user_id="u-1"))
        assert await bus.dead_letters() == []
    assert [(o.action, o.attempt, o.immediate) for o in journal.outcomes] == [
        ("retry", 1, True),
        ("raise", 2, True),
    ]
    assert journal.outcomes[-1].reason == "retries-exhausted"


async def test_undecodable_message_is_told_without_event() -> None:
    """A message that is not a valid event is told as a dead letter with no handler."""
    transport = InMemoryTransport()
    journal = Journal()
    bus = EventBus(transport=transport, observers=[journal])

    @bus.subscribe(group="stock")
    async def reserve(event: OrderCreated) -> None:
        raise AssertionError("never called")

    async with bus:
        raw = await transport.connect()
        await raw.publish("OrderCreated", Message(b"{not json", {"name": "OrderCreated"}))
        await drain(bus, reraise=False)
    (outcome,) = journal.outcomes
    assert (outcome.action, outcome.handler, outcome.envelope, outcome.event) == (
        "dead-letter",
        None,
        None,
        None,
    )
    assert (outcome.group, outcome.reason) == ("stock", "malformed")


async def test_a_failures_only_observer_is_not_told_of_successes() -> None:
    """on_failure alone is called for failures, never for successful attempts."""
    failures = FailuresOnly()
    bus = EventBus(observers=[failures])

    @bus.subscribe(retry=RetryPolicy.none())
    async def handle(event: OrderCreated) -> None:
        if event.order_id == "bad":
            raise ValueError("bad order")

    async with bus:
        for order_id in ("a", "bad", "b"):
            await bus.publish(OrderCreated(order_id=order_id))
        await drain(bus, reraise=False)
    assert failures.failures == ["dead-letter"]


async def test_a_failing_observer_is_logged_and_work_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from a hook is logged; the publish and the handling go on."""

    class Broken(Observer):
        def on_published(self, event: Event, envelope: Envelope) -> None:
            raise RuntimeError("observer bug")

        def on_outcome(self, outcome: Outcome) -> None:
            raise RuntimeError("observer bug")

    bus = EventBus(observers=[Broken()])
    handled: list[str] = []

    @bus.subscribe()
    async def handle(event: OrderCreated) -> None:
        handled.append(event.order_id)

    caplog.set_level(logging.ERROR, logger="eventbus")
    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert handled == ["o-1"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed in on_published" in m for m in messages)
    assert any("failed in on_outcome" in m for m in messages)


async def test_observers_are_added_and_removed_while_running() -> None:
    """add_observer starts the telling, remove_observer stops it."""
    journal = Journal()
    bus = EventBus()
    async with bus:
        await bus.publish(OrderPaid(order_id="before"))
        bus.add_observer(journal)
        added = await bus.publish(OrderPaid(order_id="during"))
        bus.remove_observer(journal)
        bus.remove_observer(journal)  # harmless twice
        await bus.publish(OrderPaid(order_id="after"))
    assert journal.published == [("OrderPaid", added.id)]


def test_an_observer_must_be_an_observer() -> None:
    """Something that is not an Observer is refused with ConfigurationError."""
    with pytest.raises(ConfigurationError, match=r"must be an eventbus\.Observer"):
        EventBus(observers=[object()])  # type: ignore[list-item]


async def test_capture_adds_no_middleware_and_keeps_publish_order() -> None:
    """capture() observes: the bus keeps its middleware, and a follow-up published by an
    immediate handler is recorded after the event that caused it."""
    bus = EventBus()

    @bus.subscribe(mode="immediate")
    async def on_ban(event: UserBanned, context: Context) -> None:
        await context.publish(OrderPaid(order_id=f"refund-{event.user_id}"))

    async with bus:
        with capture(bus) as published:
            assert bus.middleware == ()
            await bus.publish(UserBanned(user_id="u-1"))
    assert [type(e).__name__ for e in published] == ["UserBanned", "OrderPaid"]


async def test_observers_see_the_traceback_of_a_dead_letters_error() -> None:
    """The bus's own memory of dead-letter errors drops tracebacks after observers ran."""
    tracebacks: list[bool] = []

    class Tracebacks(Observer):
        def on_failure(self, outcome: Outcome) -> None:
            tracebacks.append(outcome.error is not None and outcome.error.__traceback__ is not None)

    bus = EventBus(observers=[Tracebacks()])

    @bus.subscribe(retry=RetryPolicy.none())
    async def handle(event: OrderCreated) -> None:
        raise ValueError("bad order")

    async with bus:
        bus.add_observer(Tracebacks())  # added after the start: still before the bus's own
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
    assert tracebacks == [True, True]
    assert bus.take_dead_letter_errors() == []
