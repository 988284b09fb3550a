"""``VirtualClock``: retry delays that pass without waiting."""

from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["VirtualClock"]


class VirtualClock:
    """A clock for ``InMemoryTransport(clock=...)`` in which waiting costs no real time.

    When a consumer has nothing to do but wait for a retry, the clock jumps straight to
    the retry's due time. Retry order and attempt counts are exactly as with real time;
    only the waiting is gone. ``now()`` starts at 0 and only moves forward; ``advance()``
    moves it by hand.
    """

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._now += seconds

    async def wait(self, wake: anyio.Event, deadline: float) -> None:
        """Jump to ``deadline`` unless ``wake`` is already set; never sleeps."""
        if not wake.is_set():
            self._now = max(self._now, deadline)
        await anyio.lowlevel.checkpoint()
