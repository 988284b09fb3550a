"""Clocks for retry delays and every other wait of the bus: real time, or virtual time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "MonotonicClock", "clock_of", "sleeper"]


@runtime_checkable
class Clock(Protocol):
    """Where retry delays are measured. ``now()`` is in seconds, only differences count."""

    def now(self) -> float:
        """The current time in seconds."""

    async def wait(self, wake: anyio.Event, deadline: float) -> None:
        """Return when ``wake`` is set or ``now()`` reaches ``deadline``, whichever first."""


class MonotonicClock:
    """Real time (``time.monotonic``). The default."""

    def now(self) -> float:
        """Seconds of ``time.monotonic()``."""
        return time.monotonic()

    async def wait(self, wake: anyio.Event, deadline: float) -> None:
        """Wait on ``wake`` for at most ``deadline - now()`` seconds."""
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await wake.wait()


def sleeper(clock: Clock) -> Callable[[float], Awaitable[None]]:
    """A ``sleep(seconds)`` that waits on ``clock`` (a virtual clock jumps instead)."""

    async def sleep(seconds: float) -> None:
        await clock.wait(anyio.Event(), clock.now() + max(0.0, seconds))

    return sleep


def clock_of(owner: object) -> Clock:
    """The ``clock`` attribute of ``owner`` (a transport) when it is a ``Clock``, else
    real time."""
    clock = getattr(owner, "clock", None)
    return clock if isinstance(clock, Clock) else MonotonicClock()
