"""Immediate subscribers run inside publish(); urgent events skip the backlog."""

from __future__ import annotations

import anyio
import pytest

from eventbus import Context, EventBus, ImmediateHandlerError, RetryPolicy
from eventbus.testing import drain
from tests.events import OrderCreated, UserBanned

pytestmark = pytest.mark.anyio


async def test_immediate_handler_runs_before_publish_returns() -> None:
    """mode="immediate" handles the event inside publish()."""
    bus = EventBus()
    blocked: list[str] = []

    @bus.subscribe(group="auth", mode="immediate")
    async def block(event: UserBanned, context: Context) -> None:
        blocked.append(f"{event.user_id}@{context.attempt}")

    async with bus:
        await bus.publish(UserBanned(user_id="u-1"))
        assert blocked == ["u-1@1"]


async def test_immediate_failure_reaches_the_publisher_and_background_still_runs() -> None:
    """An immediate handler's error is raised from publish(); background groups get it."""
    bus = EventBus()
    background: list[str] = []

    @bus.subscribe(group="auth", mode="immediate", retry=RetryPolicy.none())
    async def block(event: UserBanned) -> None:
        raise PermissionError("auth store down")

    @bus.subscribe(group="audit")
    async def audit(event: UserBanned) -> None:
        background.append(event.user_id)

    async with bus:
        with pytest.raises(ImmediateHandlerError, match="block") as info:
            await bus.publish(UserBanned(user_id="u-1"))
        assert isinstance(info.value.__cause__, PermissionError)
        assert info.value.handler.endswith("block")
        await drain(bus)
    assert background == ["u-1"]


async def test_immediate_handler_is_retried_inline() -> None:
    """An immediate handler gets its retry policy's attempts inside publish()."""
    bus = EventBus()
    attempts: list[int] = []

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=3, initial_delay=0))
    async def flaky(event: UserBanned, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise ConnectionError("retry me")

    async with bus:
        await bus.publish(UserBanned(user_id="u-1"))
    assert attempts == [1, 2, 3]


async def test_all_immediate_handlers_run_even_when_one_fails() -> None:
    """Every immediate subscriber runs; the first failure is raised afterwards."""
    bus = EventBus()
    ran: list[str] = []

    @bus.subscribe(group="a", mode="immediate", retry=RetryPolicy.none())
    async def first(event: UserBanned) -> None:
        ran.append("a")
        raise RuntimeError("a failed")

    @bus.subscribe(group="b", mode="immediate")
    async def second(event: UserBanned) -> None:
        ran.append("b")

    async with bus:
        with pytest.raises(ImmediateHandlerError):
            await bus.publish(UserBanned(user_id="u-1"))
    assert ran == ["a", "b"]


async def test_urgent_event_does_not_wait_behind_a_background_backlog() -> None:
    """With 10,000 background events queued for a subscriber, its urgent one goes first."""
    bus = EventBus()
    background_done = 0
    done_when_urgent_ran: list[int] = []

    @bus.subscribe(group="auth")
    async def on_event(event: OrderCreated | UserBanned) -> None:
        nonlocal background_done
        if isinstance(event, UserBanned):
            done_when_urgent_ran.append(background_done)
        else:
            background_done += 1

    async with bus:
        for i in range(10_000):
            await bus.publish(OrderCreated(order_id=str(i)))
        await bus.publish(UserBanned(user_id="u-1"))
        await drain(bus)
    assert background_done == 10_000
    assert done_when_urgent_ran[0] < 200


async def test_urgent_event_does_not_wait_for_the_subscribers_busy_background_handler() -> None:
    """Concurrency 1: an urgent event is handled while the background handler is blocked."""
    bus = EventBus()
    order_started, release = anyio.Event(), anyio.Event()
    handled: list[str] = []

    @bus.subscribe(group="auth", concurrency=1)
    async def on_event(event: OrderCreated | UserBanned) -> None:
        if isinstance(event, OrderCreated):
            order_started.set()
            await release.wait()
            handled.append(event.order_id)
        else:
            handled.append(event.user_id)

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        with anyio.fail_after(5):
            await order_started.wait()
        await bus.publish(UserBanned(user_id="u-1"))
        await anyio.wait_all_tasks_blocked()
        handled_while_blocked = list(handled)
        release.set()
        await drain(bus)
    assert handled_while_blocked == ["u-1"]
    assert handled == ["u-1", "o-1"]


async def test_immediate_handler_without_context_gets_exactly_max_attempts() -> None:
    """A plain immediate handler is called max_attempts times, then the error is raised."""
    bus = EventBus()
    calls = 0

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=3, initial_delay=0))
    async def always_fails(event: UserBanned) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"call {calls}")

    async with bus:
        with pytest.raises(ImmediateHandlerError) as info:
            await bus.publish(UserBanned(user_id="u-1"))
    assert calls == 3
    assert str(info.value.__cause__) == "call 3"


async def test_immediate_handler_without_context_recovers_on_a_retry() -> None:
    """A plain immediate handler that fails once succeeds on its second attempt."""
    bus = EventBus()
    calls = 0

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=3, initial_delay=0))
    async def once_flaky(event: UserBanned) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first call fails")

    async with bus:
        await bus.publish(UserBanned(user_id="u-1"))
    assert calls == 2
