"""``Middleware``: code around every publish and every handler call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ._context import Context
from ._envelope import Envelope
from ._event import Event

__all__ = ["Middleware", "Next", "run_around"]


class Next(Protocol):
    """The ``call_next`` a middleware hook receives: await it to run the rest of the chain."""

    def __call__(self) -> Awaitable[None]: ...


class Middleware:
    """Subclass and override either method; each must await ``call_next()`` exactly once
    (or raise to stop the chain).

    - ``on_publish`` wraps the write of one event to the transport and its immediate
      subscribers. An exception here reaches the publisher.
    - ``on_handle`` wraps one handler attempt. An exception here counts as a failure of
      the attempt (retried or dead-lettered by the subscriber's policy).

    Middlewares run in the order given to ``EventBus(middleware=[...])``, the first
    outermost. They see events and envelopes; they must not log payloads, which hold
    personal data.
    """

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        """Around one publish. Default: just ``await call_next()``."""
        await call_next()

    async def on_handle(self, event: Event, context: Context, call_next: Next) -> None:
        """Around one handler attempt. Default: just ``await call_next()``."""
        await call_next()


async def run_around(
    hooks: Sequence[Callable[..., Awaitable[None]]],
    args: tuple[Any, ...],
    last: Callable[[], Awaitable[None]],
    index: int = 0,
) -> None:
    """Run ``hooks[index](*args, call_next)``, each ``call_next`` running the next hook,
    and ``last()`` at the end of the chain (the publish, or the handler call)."""
    if index == len(hooks):
        await last()
        return

    async def call_next() -> None:
        await run_around(hooks, args, last, index + 1)

    next_: Next = call_next
    await hooks[index](*args, next_)
