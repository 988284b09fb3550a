"""Retries, timeouts and dead letters through the bus."""

from __future__ import annotations

import anyio
import pytest

from eventbus import (
    Context,
    EventBus,
    HandlerTimeoutError,
    InMemoryTransport,
    Retry,
    RetryPolicy,
)
from eventbus.testing import VirtualClock, drain
from eventbus.transports import Message
from tests.events import OrderCreated, OrderPaid

pytestmark = pytest.mark.anyio


def virtual_bus() -> tuple[EventBus, VirtualClock]:
    """A bus whose retry delays pass without waiting."""
    clock = VirtualClock()
    return EventBus(transport=InMemoryTransport(clock=clock)), clock


async def test_failed_attempts_are_retried_until_success() -> None:
    """A handler failing twice succeeds on attempt 3; nothing is dead-lettered."""
    bus, _ = virtual_bus()
    attempts: list[int] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=3))
    async def flaky(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise ConnectionError("mail server down")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
        assert await bus.dead_letters() == []
    assert attempts == [1, 2, 3]


async def test_exhausted_retries_make_a_dead_letter_with_the_details() -> None:
    """After max_attempts failures the event is a DeadLetter with error, times, attempts."""
    bus, clock = virtual_bus()

    @bus.subscribe(group="email", retry=RetryPolicy(max_attempts=4, initial_delay=10))
    async def broken(event: OrderCreated) -> None:
        raise ConnectionError("mail server down")

    async with bus:
        envelope = await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
    assert (dead.group, dead.reason, dead.attempts) == ("email", "retries-exhausted", 4)
    assert dead.handler is not None
    assert dead.handler.endswith("broken")
    assert dead.error_type == "builtins.ConnectionError"
    assert dead.error_message == "mail server down"
    assert "ConnectionError: mail server down" in dead.traceback
    assert dead.first_failed_at <= dead.last_failed_at
    assert dead.envelope is not None
    assert dead.envelope.id == envelope.id
    assert dead.event == OrderCreated(order_id="o-1")
    assert dead.headers["name"] == "OrderCreated"
    assert b'"order_id":"o-1"' in dead.body
    assert clock.now() >= (10 + 20 + 30) * 0.9  # backoff 10, 20, then capped at 30 s, virtually


async def test_give_up_on_dead_letters_after_one_attempt() -> None:
    """An exception listed in give_up_on is not retried: reason non-retryable."""
    bus, _ = virtual_bus()
    calls = 0

    @bus.subscribe(retry=RetryPolicy(max_attempts=5, give_up_on=(ValueError,)))
    async def strict(event: OrderCreated) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad order")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
    assert (calls, dead.reason, dead.attempts) == (1, "non-retryable", 1)


async def test_exception_outside_retry_on_is_not_retried() -> None:
    """Only exceptions in retry_on are retried."""
    bus, _ = virtual_bus()

    @bus.subscribe(retry=RetryPolicy(max_attempts=5, retry_on=(ConnectionError,)))
    async def strict(event: OrderCreated) -> None:
        raise KeyError("x")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters()
    assert (dead.reason, dead.attempts, dead.error_type) == (
        "non-retryable",
        1,
        "builtins.KeyError",
    )


async def test_retry_exception_asks_for_another_attempt_with_its_delay() -> None:
    """A handler raising Retry(delay=) is retried after that delay, even outside retry_on."""
    bus, clock = virtual_bus()
    seen: list[tuple[int, float]] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=3, retry_on=(KeyError,)))
    async def later(event: OrderCreated, context: Context) -> None:
        seen.append((context.attempt, clock.now()))
        if context.attempt == 1:
            raise Retry(delay=120)

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    assert [a for a, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 120


async def test_handler_timeout_fails_the_attempt() -> None:
    """A handler running past its timeout fails with HandlerTimeoutError and is retried."""
    bus, _ = virtual_bus()
    attempts: list[int] = []

    @bus.subscribe(timeout=0.05, retry=RetryPolicy(max_attempts=2))
    async def hangs(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        await anyio.sleep_forever()

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with pytest.raises(HandlerTimeoutError, match=r"timeout of 0\.05"):
            await drain(bus)
        (dead,) = await bus.dead_letters()
    assert attempts == [1, 2]
    assert dead.error_type == "eventbus.HandlerTimeoutError"


async def test_waiting_retry_does_not_block_the_group() -> None:
    """While one event waits 30 s for its retry, later events are handled before it."""
    bus, clock = virtual_bus()
    handled: list[tuple[str, float]] = []

    @bus.subscribe(retry=RetryPolicy(max_attempts=2, initial_delay=30, jitter=0))
    async def first_fails(event: OrderCreated, context: Context) -> None:
        if event.order_id == "slow" and context.attempt == 1:
            raise ConnectionError("later")
        handled.append((event.order_id, clock.now()))

    async with bus:
        await bus.publish(OrderCreated(order_id="slow"))
        for i in range(5):
            await bus.publish(OrderCreated(order_id=str(i)))
        await drain(bus, timeout=5)
        dead_letters = await bus.dead_letters()
    # the five were handled before any (virtual) time passed; the retry came 30 s later
    assert handled[:5] == [(str(i), 0.0) for i in range(5)]
    assert handled[5:] == [("slow", 30.0)]
    assert dead_letters == []


async def test_undecodable_input_is_dead_lettered_and_the_worker_goes_on() -> None:
    """A malformed message from another program becomes a dead letter; work continues."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)
    handled: list[str] = []

    @bus.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None:
        handled.append(event.order_id)

    async with bus:
        raw = await transport.connect()
        await raw.publish("OrderCreated", Message(b"{not json", {"name": "OrderCreated"}))
        await raw.publish(
            "OrderCreated",
            Message(
                b'{"order_id": 5}',
                {"id": "x-1", "name": "OrderCreated", "version": "1", "time": "2026-01-01T00:00Z"},
            ),
        )
        await bus.publish(OrderCreated(order_id="good"))
        await drain(bus, reraise=False)
        dead = await bus.dead_letters("stock")
        await raw.aclose()
    assert handled == ["good"]
    assert [d.reason for d in dead] == ["malformed", "malformed"]
    assert dead[0].envelope is None
    assert dead[0].body == b"{not json"
    assert dead[1].envelope is not None
    assert dead[1].envelope.id == "x-1"
    assert dead[1].event is None
    assert all(d.handler is None for d in dead)


async def test_unknown_event_and_wrong_version_are_dead_lettered_with_their_reason() -> None:
    """Entries naming an unknown type or another version carry that reason."""
    transport = InMemoryTransport()
    bus = EventBus(transport=transport)

    @bus.subscribe(group="g")
    async def take(event: OrderCreated) -> None:
        raise AssertionError("never called")

    base = {"id": "i", "time": "2026-01-01T00:00:00Z", "version": "1"}
    async with bus:
        raw = await transport.connect()
        await raw.publish("OrderCreated", Message(b"{}", {**base, "name": "Nope"}))
        await raw.publish(
            "OrderCreated", Message(b"{}", {**base, "name": "OrderCreated", "version": "7"})
        )
        await drain(bus, reraise=False)
        reasons = [d.reason for d in await bus.dead_letters()]
        await raw.aclose()
    assert reasons == ["unknown-event", "wrong-version"]


async def test_replay_redelivers_to_that_group_only() -> None:
    """replay_dead_letters hands the event again to its group, not to the others."""
    bus, _ = virtual_bus()
    broken = True
    calls: dict[str, int] = {"email": 0, "stock": 0}

    @bus.subscribe(group="email", retry=RetryPolicy.none())
    async def email(event: OrderCreated) -> None:
        calls["email"] += 1
        if broken:
            raise ConnectionError("down")

    @bus.subscribe(group="stock")
    async def stock(event: OrderCreated) -> None:
        calls["stock"] += 1

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus, reraise=False)
        (dead,) = await bus.dead_letters("email")
        broken = False
        assert await bus.replay_dead_letters("email", [dead.id]) == 1
        await drain(bus)
        assert await bus.dead_letters() == []
    assert calls == {"email": 2, "stock": 1}


async def test_purge_deletes_dead_letters_of_one_group() -> None:
    """purge_dead_letters(group) removes that group's dead letters and no others."""
    bus, _ = virtual_bus()

    @bus.subscribe(group="a", retry=RetryPolicy.none())
    async def a(event: OrderPaid) -> None:
        raise ConnectionError("down")

    @bus.subscribe(group="b", retry=RetryPolicy.none())
    async def b(event: OrderPaid) -> None:
        raise ConnectionError("down")

    async with bus:
        await bus.publish(OrderPaid(order_id="1"))
        await bus.publish(OrderPaid(order_id="2"))
        await drain(bus, reraise=False)
        assert len(await bus.dead_letters()) == 4
        assert await bus.purge_dead_letters("a") == 2
        assert {d.group for d in await bus.dead_letters()} == {"b"}
        assert await bus.purge_dead_letters() == 2
        assert await bus.dead_letters() == []
