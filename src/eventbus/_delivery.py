"""The delivery engine: what happens to one delivery of one event to one subscriber.

``Delivering`` is the one place that calls a handler (with middleware, context and
timeout when needed) and decides what follows: ack, retry after a delay, or give up
(dead-letter in the background, ``ImmediateHandlerError`` inside ``publish()``). Both
background consumers and immediate subscribers go through it, and it waits only on the
bus's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, cast

import anyio

from ._context import Context, _Publish
from ._deadletter import failure_notes
from ._envelope import Envelope
from ._errors import (
    DecodeError,
    HandlerTimeoutError,
    ImmediateHandlerError,
    VersionMismatchError,
)
from ._event import Event
from ._middleware import Middleware, run_around
from ._observer import Action, Observers, Outcome
from ._retry import RetryPolicy
from ._subscriber import Subscriber
from .transports._contract import Delivery, FailureNotes, HandledRecord, Subscription

__all__ = ["Delivering", "Verdict", "log_extra", "logger", "run_immediate"]

logger = logging.getLogger("eventbus")

Sleep = Callable[[float], Awaitable[None]]


class Verdict(NamedTuple):
    """What follows a failed attempt: another one after ``delay`` seconds, or none."""

    retry: bool
    delay: float
    reason: str
    notes: FailureNotes


class Delivering:
    """Runs one subscriber's handler and settles each delivery it gets.

    ``middleware`` wraps every attempt; ``publish`` is what a ``Context`` publishes
    with; ``sleep`` waits between the attempts of an immediate subscriber.
    """

    __slots__ = (
        "_handler",
        "_newer",
        "_observers",
        "_on_handle",
        "_publish",
        "_sleep",
        "plain",
        "sub",
    )

    def __init__(
        self,
        subscriber: Subscriber,
        middleware: Sequence[Middleware],
        publish: _Publish,
        observers: Observers,
        sleep: Sleep,
        newer: RetryPolicy | None = None,
    ) -> None:
        self.sub = subscriber
        self._newer = newer
        self._handler = subscriber.handler
        self._on_handle = tuple(m.on_handle for m in middleware)
        self._publish = publish
        self._observers = observers
        self._sleep = sleep
        self.plain = not middleware and subscriber.timeout is None and not subscriber.takes_context
        """The handler takes only the event, with no middleware or timeout."""

    # -- one attempt -----------------------------------------------------------------

    async def attempt(self, event: Event, envelope: Envelope, attempt: int) -> None:
        """Call the handler once, within the middleware and its timeout; raises its error.

        The two hot loops (``deliver`` and ``run_immediate``) await a ``plain`` handler
        directly instead: that is the one fast path.
        """
        if self.plain:
            await self._handler(event)
        else:
            await self._around(event, envelope.with_attempt(attempt))

    async def _around(self, event: Event, envelope: Envelope) -> None:
        """One attempt of a handler that is not ``plain``: with its context, middleware
        and timeout; raises its error."""
        context = None
        if self.sub.takes_context or self._on_handle:
            context = Context(envelope, self.sub.group, self._publish)
        if self._on_handle:

            async def call(event: Event, context: Context | None) -> None:
                await self._call(event, context)

            await run_around(self._on_handle, (event, context), call)
        else:
            await self._call(event, context)

    async def _call(self, event: Event, context: Context | None) -> None:
        sub = self.sub
        args: tuple[Any, ...] = (event, context) if sub.takes_context else (event,)
        if sub.timeout is None:
            await self._handler(*args)
            return
        with anyio.move_on_after(sub.timeout) as scope:
            await self._handler(*args)
        if scope.cancelled_caught:
            raise HandlerTimeoutError(f"{sub.name} ran longer than its timeout of {sub.timeout} s")

    # -- the decision ------------------------------------------------------------------

    def judge(self, error: Exception, attempt: int, previous: FailureNotes | None) -> Verdict:
        """Whether attempt number ``attempt``, failed with ``error``, gets another."""
        retry = self.sub.retry
        first = previous.first_failed_at if previous is not None else None
        if retry.should_retry(error, attempt):
            notes = failure_notes(
                error, reason="retrying", handler=self.sub.name, first_failed_at=first
            )
            return Verdict(True, retry.delay(attempt, error), "retrying", notes)
        reason = "non-retryable" if not retry.should_retry(error, 0) else "retries-exhausted"
        notes = failure_notes(error, reason=reason, handler=self.sub.name, first_failed_at=first)
        return Verdict(False, 0.0, reason, notes)

    # -- background: settle a delivery on its subscription -----------------------------

    async def deliver(
        self, subscription: Subscription, delivery: Delivery, event: Event, envelope: Envelope
    ) -> None:
        """Handle ``delivery`` and ack, retry (nack) or dead-letter it."""
        try:
            if self.plain:  # the fast path (see ``attempt``)
                await self._handler(event)
            else:
                await self._around(event, envelope.with_attempt(delivery.attempt))
        except Exception as exc:
            await self._failed(subscription, delivery, event, envelope, exc)
            return
        await subscription.ack(delivery)
        if self._observers.outcome:
            self._tell("ack", event, envelope, delivery.attempt)

    async def deliver_once(
        self, subscription: Subscription, delivery: Delivery, event: Event, envelope: Envelope
    ) -> None:
        """``deliver`` for an idempotent subscriber: a delivery of an event id the group
        already handled is acked without calling the handler; a success is acked and
        recorded together. ``subscription`` must be a ``HandledRecord``."""
        record = cast(HandledRecord, subscription)
        if await record.handled(envelope.id):
            await subscription.ack(delivery)
            logger.info(
                "%s skipped %s %s: its group handled it already",
                self.sub.name,
                envelope.name,
                envelope.id,
                extra=log_extra(envelope.id, envelope.name, self.sub.group, delivery.attempt),
            )
            self._tell("duplicate", event, envelope, delivery.attempt)
            return
        try:
            await self.attempt(event, envelope, delivery.attempt)
        except Exception as exc:
            await self._failed(subscription, delivery, event, envelope, exc)
            return
        await record.ack_handled(delivery, envelope.id)
        if self._observers.outcome:
            self._tell("ack", event, envelope, delivery.attempt)

    async def _failed(
        self,
        subscription: Subscription,
        delivery: Delivery,
        event: Event,
        envelope: Envelope,
        error: Exception,
    ) -> None:
        sub, attempt = self.sub, delivery.attempt
        verdict = self.judge(error, attempt, delivery.notes)
        extra = log_extra(envelope.id, envelope.name, sub.group, attempt, handler=sub.name)
        extra["error_type"] = type(error).__name__
        if verdict.retry:
            logger.warning(
                "%s failed attempt %d, retrying in %.3f s",
                sub.name,
                attempt,
                verdict.delay,
                extra=extra,
            )
            await subscription.nack(delivery, verdict.delay, verdict.notes)
            self._tell("retry", event, envelope, attempt, error, verdict)
            return
        logger.error(
            "%s gave up after %d attempt(s): %s", sub.name, attempt, verdict.reason, extra=extra
        )
        await subscription.dead_letter(delivery, verdict.notes)
        self._tell("dead-letter", event, envelope, attempt, error, verdict)

    async def undecodable(
        self, subscription: Subscription, delivery: Delivery, error: DecodeError
    ) -> None:
        """Dead-letter a message that is not a valid event of this subscriber; first
        return one of a newer version to the group, for a worker that knows it."""
        group = self.sub.group
        newer = isinstance(error, VersionMismatchError) and error.newer
        policy = self._newer
        if newer and policy is not None and policy.should_retry(error, delivery.attempt):
            await self._return_newer(subscription, delivery, error, policy)
            return
        logger.error(
            "undecodable message %s in group %s: %s",
            delivery.id,
            group,
            error.reason,
            extra={"group": group, "message_id": delivery.id, "reason": error.reason},
        )
        notes = failure_notes(error, reason=error.reason, handler=None, first_failed_at=None)
        await subscription.dead_letter(delivery, notes)
        outcome = Outcome(
            "dead-letter", group, None, None, None, delivery.attempt, error, reason=error.reason
        )
        self._observers.ended(outcome)

    async def _return_newer(
        self,
        subscription: Subscription,
        delivery: Delivery,
        error: DecodeError,
        policy: RetryPolicy,
    ) -> None:
        """Schedule a message of a newer version again in the group (a rolling upgrade:
        an upgraded worker of the group may take it), after the policy's delay."""
        attempt, group = delivery.attempt, self.sub.group
        delay = policy.delay(attempt, error)
        logger.warning(
            "message %s in group %s is of a newer version (%s); returned to the group for "
            "an upgraded worker (delivery %d of at most %d), again in %.1f s",
            delivery.id,
            group,
            error,
            attempt,
            policy.max_attempts,
            delay,
            extra={"group": group, "message_id": delivery.id, "reason": "newer-version"},
        )
        notes = failure_notes(error, reason="newer-version", handler=None, first_failed_at=None)
        await subscription.nack(delivery, delay, notes)
        outcome = Outcome(
            "retry", group, None, None, None, attempt, error, delay, reason="newer-version"
        )
        self._observers.ended(outcome)

    # -- immediate: attempts inside publish() --------------------------------------------

    async def retry_inline(self, event: Event, envelope: Envelope, error: Exception) -> None:
        """After a failed first attempt inside ``publish()``: every further attempt the
        retry policy allows, waiting on the bus's clock between them.

        Raises ``ImmediateHandlerError`` (the handler's error as its cause) when the
        subscriber gives up.
        """
        attempt, previous = 1, None
        while True:
            verdict = self.judge(error, attempt, previous)
            if not verdict.retry:
                self._tell("raise", event, envelope, attempt, error, verdict)
                raise self._gave_up(envelope, attempt, error) from error
            self._tell("retry", event, envelope, attempt, error, verdict)
            await self._sleep(verdict.delay)
            attempt, previous = attempt + 1, verdict.notes
            try:
                await self.attempt(event, envelope, attempt)
            except Exception as exc:
                error = exc
            else:
                self.handled(event, envelope, attempt)
                return

    def handled(self, event: Event, envelope: Envelope, attempt: int) -> None:
        """Tell the observers of outcomes that an attempt succeeded (when any listens)."""
        if self._observers.outcome:
            self._tell("ack", event, envelope, attempt)

    def _gave_up(self, envelope: Envelope, attempt: int, error: Exception) -> ImmediateHandlerError:
        sub = self.sub
        extra = log_extra(envelope.id, envelope.name, sub.group, attempt, handler=sub.name)
        extra["error_type"] = type(error).__name__
        logger.error(
            "immediate subscriber %s failed after %d attempt(s)", sub.name, attempt, extra=extra
        )
        return ImmediateHandlerError(
            f"immediate subscriber {sub.name} failed on {envelope.name} {envelope.id}: "
            f"{type(error).__name__}",
            event_id=envelope.id,
            handler=sub.name,
        )

    # -- observers -------------------------------------------------------------------------

    def _tell(
        self,
        action: Action,
        event: Event,
        envelope: Envelope,
        attempt: int,
        error: Exception | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        observers = self._observers
        if not observers.listening(action):
            return
        sub = self.sub
        observers.ended(
            Outcome(
                action,
                sub.group,
                sub.name,
                envelope.with_attempt(attempt),
                event,
                attempt,
                error,
                delay=verdict.delay if verdict is not None and verdict.retry else None,
                reason=verdict.reason if verdict is not None and not verdict.retry else None,
                immediate=sub.mode == "immediate",
            )
        )


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


async def run_immediate(engines: Sequence[Delivering], event: Event, envelope: Envelope) -> None:
    """Run each immediate subscriber of an event, one after the other.

    Every subscriber runs even when an earlier one failed; then the first failure is
    raised (an ``ImmediateHandlerError`` whose cause is the handler's exception).
    """
    first: ImmediateHandlerError | None = None
    for engine in engines:
        try:
            if engine.plain:  # the fast path (see ``Delivering.attempt``)
                await engine.sub.handler(event)
            else:
                await engine.attempt(event, envelope, 1)
        except Exception as exc:
            try:
                await engine.retry_inline(event, envelope, exc)
            except ImmediateHandlerError as gave_up:
                first = first or gave_up
        else:
            engine.handled(event, envelope, 1)
    if first is not None:
        raise first
