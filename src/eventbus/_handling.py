"""Calling one handler for one event: middleware, timeout, and the retry decision."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio

from ._context import Context
from ._errors import HandlerTimeoutError
from ._event import Event
from ._middleware import Middleware, Next
from ._subscriber import Subscriber

__all__ = ["call_handler", "failure_reason", "log_extra", "logger"]

logger = logging.getLogger("eventbus")


async def call_handler(
    subscriber: Subscriber,
    event: Event,
    context: Context | None,
    middleware: Sequence[Middleware],
) -> None:
    """Run one attempt: the middleware chain around the handler, within its timeout.

    A handler that runs past ``subscriber.timeout`` raises ``HandlerTimeoutError``.
    """
    if middleware:
        assert context is not None
        await _chain(subscriber, event, context, middleware, 0)
    elif subscriber.timeout is None:
        if subscriber.takes_context:
            await subscriber.handler(event, context)
        else:
            await subscriber.handler(event)
    else:
        await _with_timeout(subscriber, event, context)


async def _chain(
    subscriber: Subscriber,
    event: Event,
    context: Context,
    middleware: Sequence[Middleware],
    index: int,
) -> None:
    if index == len(middleware):
        await _with_timeout(subscriber, event, context)
        return

    async def call_next() -> None:
        await _chain(subscriber, event, context, middleware, index + 1)

    next_: Next = call_next
    await middleware[index].on_handle(event, context, next_)


async def _with_timeout(subscriber: Subscriber, event: Event, context: Context | None) -> None:
    args: tuple[Any, ...] = (event, context) if subscriber.takes_context else (event,)
    if subscriber.timeout is None:
        await subscriber.handler(*args)
        return
    with anyio.move_on_after(subscriber.timeout) as scope:
        await subscriber.handler(*args)
    if scope.cancelled_caught:
        raise HandlerTimeoutError(
            f"{subscriber.name} ran longer than its timeout of {subscriber.timeout} s"
        )


def failure_reason(subscriber: Subscriber, error: BaseException) -> str:
    """Why a failure that will not be retried ends in the dead letters."""
    return "non-retryable" if not subscriber.retry.should_retry(error, 0) else "retries-exhausted"


def log_extra(
    event_id: str, event_name: str, group: str, attempt: int, **more: str
) -> dict[str, object]:
    """The ``extra`` of every log record about one delivery (never the payload)."""
    return {
        "event_id": event_id,
        "event_name": event_name,
        "group": group,
        "attempt": attempt,
        **more,
    }
