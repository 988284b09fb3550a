"""``Middleware``: code around every publish and every handler call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from ._context import Context
from ._envelope import Envelope
from ._errors import ConfigurationError, PublishError
from ._event import Event

__all__ = ["Middleware", "Next", "run_around"]


class Next(Protocol):
    """The ``call_next`` a middleware hook receives: await it to run the rest of the chain.

    In ``on_publish``, ``call_next(headers={...})`` adds envelope headers (trace context,
    say) for the rest of the chain and the message on the wire; the publisher gets the
    envelope with them. ``on_handle`` takes no headers.
    """

    def __call__(self, *, headers: Mapping[str, str] | None = None) -> Awaitable[None]: ...


class Middleware:
    """Subclass and override either method; each must await ``call_next()`` exactly once
    (or raise to stop the chain).

    - ``on_publish`` wraps the write of one event to the transport and its immediate
      subscribers. An exception here reaches the publisher. ``call_next(headers=...)``
      adds headers to the event's envelope.
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
    last: Callable[..., Awaitable[None]],
    index: int = 0,
) -> None:
    """Run ``hooks[index](*args, call_next)``, each ``call_next`` running the next hook,
    and ``last(*args)`` at the end of the chain (the publish, or the handler call), with
    the envelope headers a publish hook added."""
    if index == len(hooks):
        await last(*args)
        return

    async def call_next(*, headers: Mapping[str, str] | None = None) -> None:
        following = args if headers is None else _with_headers(args, headers)
        await run_around(hooks, following, last, index + 1)

    next_: Next = call_next
    await hooks[index](*args, next_)


def _with_headers(args: tuple[Any, ...], headers: Mapping[str, str]) -> tuple[Any, ...]:
    """``(event, envelope)`` with ``headers`` added to the envelope."""
    event, envelope = args
    if not isinstance(envelope, Envelope):
        raise ConfigurationError("call_next(headers=...) adds headers in on_publish only")
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise PublishError("call_next(headers=...) must map non-empty str keys to str values")
    merged = MappingProxyType({**envelope.headers, **headers})
    return (event, envelope._replace(headers=merged))
