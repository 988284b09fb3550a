"""``Backoff``: the growing wait after consecutive failures of one loop."""

from __future__ import annotations

import random

import anyio

__all__ = ["Backoff"]


class Backoff:
    """Waits ``first * 2 ** (failures - 1)`` seconds after each failure in a row, capped
    at ``cap`` and shortened by a random fraction of at most ``jitter`` (so that many
    workers do not retry in step). ``reset()`` after a success starts over.

    The wait is real time (it waits for the outside world). One instance per loop: it is
    not shared between tasks.
    """

    __slots__ = ("_cap", "_first", "_jitter", "failures")

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        jitter: float = 0.5,
    ) -> None:
        self._first = first
        self._cap = cap
        self._jitter = jitter
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; return the seconds to wait before trying again."""
        self.failures += 1
        delay: float = min(self._cap, self._first * 2 ** min(self.failures - 1, 30))
        return delay * (1 - self._jitter * random.random())

    async def wait(self, delay: float) -> None:
        """Wait ``delay`` seconds (the value ``failed()`` returned)."""
        await anyio.sleep(delay)

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.failures = 0
