"""Every wait of the bus goes through its clock: a virtual clock makes them free."""

from __future__ import annotations

import anyio
import pytest

from eventbus import Context, EventBus, ImmediateHandlerError, InMemoryTransport, RetryPolicy
from eventbus.testing import VirtualClock
from tests.events import UserBanned

pytestmark = pytest.mark.anyio

SLOW = RetryPolicy(max_attempts=3, initial_delay=10, jitter=0)


async def test_immediate_retries_on_a_virtual_clock_take_no_real_time() -> None:
    """Two 10 s and 20 s waits of an immediate subscriber pass on the transport's virtual
    clock: publish() returns at once (the 30 s of real time would hit the guard)."""
    clock = VirtualClock()
    bus = EventBus(transport=InMemoryTransport(clock=clock))
    attempts: list[int] = []

    @bus.subscribe(mode="immediate", retry=SLOW)
    async def block(event: UserBanned, context: Context) -> None:
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise ConnectionError("auth store busy")

    async with bus:
        with anyio.fail_after(5):  # a guard against a hang, not a measure of speed
            await bus.publish(UserBanned(user_id="u-1"))
    assert attempts == [1, 2, 3]
    assert clock.now() == 30.0


async def test_a_plain_immediate_handler_gives_up_on_virtual_time() -> None:
    """A handler that takes only the event is retried on the clock too, then raised."""
    clock = VirtualClock()
    bus = EventBus(clock=clock)
    calls = 0

    @bus.subscribe(mode="immediate", retry=SLOW)
    async def block(event: UserBanned) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("auth store down")

    async with bus:
        with anyio.fail_after(5), pytest.raises(ImmediateHandlerError):
            await bus.publish(UserBanned(user_id="u-1"))
    assert (calls, clock.now()) == (3, 30.0)


async def test_the_bus_clock_given_wins_over_the_transports() -> None:
    """EventBus(clock=...) is where the bus waits, whatever clock the transport has."""
    transport_clock, bus_clock = VirtualClock(), VirtualClock()
    bus = EventBus(transport=InMemoryTransport(clock=transport_clock), clock=bus_clock)

    @bus.subscribe(mode="immediate", retry=RetryPolicy(max_attempts=2, initial_delay=7, jitter=0))
    async def block(event: UserBanned, context: Context) -> None:
        if context.attempt == 1:
            raise ConnectionError("once")

    async with bus:
        with anyio.fail_after(5):
            await bus.publish(UserBanned(user_id="u-1"))
    assert (bus_clock.now(), transport_clock.now()) == (7.0, 0.0)
