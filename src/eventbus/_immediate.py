"""Immediate subscribers: handlers that run inside ``publish()`` before it returns."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ._context import Context, _Publish
from ._envelope import Envelope
from ._errors import ImmediateHandlerError
from ._event import Event
from ._handling import call_handler, log_extra, logger
from ._middleware import Middleware
from ._subscriber import Subscriber

__all__ = ["run_immediate"]


async def run_immediate(
    subscribers: Sequence[Subscriber],
    event: Event,
    envelope: Envelope,
    publish: _Publish,
    middleware: Sequence[Middleware],
) -> None:
    """Run each immediate subscriber with its retry policy, one after the other.

    Every subscriber runs even when an earlier one failed; then the first failure is
    raised as ``ImmediateHandlerError`` (its cause is the handler's exception).
    """
    first: ImmediateHandlerError | None = None
    for sub in subscribers:
        tried = [1]
        try:
            if middleware or sub.takes_context or sub.timeout is not None:
                await _attempts(sub, event, envelope, publish, middleware, tried)
            else:
                try:
                    await sub.handler(event)
                except Exception as exc:
                    await _later_attempts(sub, event, exc, tried)
        except Exception as exc:
            extra = log_extra(envelope.id, envelope.name, sub.group, tried[0], handler=sub.name)
            extra["error_type"] = type(exc).__name__
            logger.error(
                "immediate subscriber %s failed after %d attempt(s)",
                sub.name,
                tried[0],
                extra=extra,
            )
            if first is None:
                first = ImmediateHandlerError(
                    f"immediate subscriber {sub.name} failed on {envelope.name} {envelope.id}: "
                    f"{type(exc).__name__}",
                    event_id=envelope.id,
                    handler=sub.name,
                )
                first.__cause__ = exc
    if first is not None:
        raise first


async def _later_attempts(
    sub: Subscriber, event: Event, error: Exception, tried: list[int]
) -> None:
    """Attempts 2 and later of a handler that takes only the event."""
    attempt = 1
    while sub.retry.should_retry(error, attempt):
        await anyio.sleep(sub.retry.delay(attempt, error))
        attempt += 1
        tried[0] = attempt
        try:
            await sub.handler(event)
            return
        except Exception as exc:
            error = exc
    raise error


async def _attempts(
    sub: Subscriber,
    event: Event,
    envelope: Envelope,
    publish: _Publish,
    middleware: Sequence[Middleware],
    tried: list[int],
) -> None:
    attempt = 1
    while True:
        tried[0] = attempt
        attempt_envelope = envelope.with_attempt(attempt)
        context = None
        if sub.takes_context or middleware:
            context = Context(attempt_envelope, sub.group, publish)
        try:
            await call_handler(sub, event, context, middleware)
            return
        except Exception as exc:
            if not sub.retry.should_retry(exc, attempt):
                raise
            await anyio.sleep(sub.retry.delay(attempt, exc))
            attempt += 1
