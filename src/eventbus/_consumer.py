"""``Consumer``: the loops that take one topic's deliveries for one subscriber."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import anyio

from ._codec import Codec, EventMessage
from ._context import Context, _Publish
from ._deadletter import failure_notes
from ._errors import DecodeError, MalformedMessageError
from ._event import Event
from ._handling import call_handler, failure_reason, log_extra, logger
from ._middleware import Middleware
from ._subscriber import Subscriber
from .transports._protocol import Delivery, Subscription

__all__ = ["Consumer", "Host"]

_CHECKPOINT_EVERY = 64
_ERROR_BACKOFF = (0.05, 2.0)


class Host(Protocol):
    """What a consumer needs from its bus."""

    @property
    def codec(self) -> Codec: ...
    @property
    def middleware(self) -> Sequence[Middleware]: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def publish(self) -> _Publish: ...
    def _record_dead_letter(self, error: BaseException) -> None: ...


class _Slot:
    """One loop: its cancel scope, and whether it is inside a handler right now."""

    __slots__ = ("busy", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.busy = False


class Consumer:
    """Runs ``subscriber.concurrency`` loops over one subscription of ``event_type``.

    Each loop receives a delivery, handles it and acks, retries or dead-letters it.
    ``stop()`` cancels the loops that are waiting for work and lets the busy ones finish
    their current delivery.
    """

    def __init__(
        self,
        host: Host,
        subscriber: Subscriber,
        subscription: Subscription,
        limiter: anyio.CapacityLimiter | None,
        event_type: type[Event],
    ) -> None:
        self._host = host
        self._sub = subscriber
        self._subscription = subscription
        self._limiter = limiter
        self._event_type = event_type
        self._plain = (
            limiter is None and subscriber.timeout is None and not subscriber.takes_context
        )
        self._slots: set[_Slot] = set()
        self._stopped = anyio.Event()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the loops in ``task_group``."""
        for _ in range(self._sub.concurrency):
            task_group.start_soon(self._loop)

    def stop(self) -> None:
        """Cancel idle loops; busy ones exit after their current delivery."""
        for slot in self._slots:
            if not slot.busy:
                slot.scope.cancel()
        if not self._slots:
            self._stopped.set()

    @property
    def stopped(self) -> bool:
        """Whether every loop has exited."""
        return self._stopped.is_set()

    async def wait_stopped(self) -> None:
        """Return once every loop has exited (after ``stop()``)."""
        await self._stopped.wait()

    async def _loop(self) -> None:
        with anyio.CancelScope() as scope:
            slot = _Slot(scope)
            self._slots.add(slot)
            try:
                await self._run(slot)
            finally:
                self._slots.discard(slot)
                if not self._slots and self._host.stopping:
                    self._stopped.set()

    async def _run(self, slot: _Slot) -> None:
        host, handler, handled, failures = self._host, self._sub.handler, 0, 0
        receive, ack = self._subscription.receive, self._subscription.ack
        while not host.stopping:
            try:
                delivery = await receive()
                if delivery is None:
                    return
                slot.busy = True
                try:
                    message = delivery.message
                    if (
                        self._plain
                        and type(message) is EventMessage
                        and type(message.event) is self._event_type
                        and not host.middleware
                    ):  # the fast path: a local event, a handler that takes only the event
                        try:
                            await handler(message.event)
                        except Exception as exc:
                            envelope = message.envelope
                            await self._failed(delivery, envelope.id, envelope.name, exc)
                        else:
                            await ack(delivery)
                    elif self._limiter is None:
                        await self._handle_now(delivery)
                    else:
                        await self._handle(delivery)
                finally:
                    slot.busy = False
                failures = 0
            except Exception:  # a transport failure: log, back off, go on
                failures += 1
                logger.exception("eventbus consumer of %s failed", self._sub.group)
                await anyio.sleep(min(_ERROR_BACKOFF[1], _ERROR_BACKOFF[0] * 2**failures))
                continue
            handled += 1
            if handled % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def _handle(self, delivery: Delivery) -> None:
        if self._limiter is not None:
            async with self._limiter:
                await self._handle_now(delivery)
        else:
            await self._handle_now(delivery)

    async def _handle_now(self, delivery: Delivery) -> None:
        sub, host = self._sub, self._host
        try:
            event, envelope = host.codec.decode(delivery.message, delivery.attempt)
            if type(event) is not self._event_type:
                raise MalformedMessageError(
                    f"a {envelope.name} event arrived on the topic of {self._event_type.event_name}"
                )
        except DecodeError as exc:
            await self._undecodable(delivery, exc)
            return
        try:
            if self._plain and not host.middleware:
                await sub.handler(event)
            else:
                context = None
                if sub.takes_context or host.middleware:
                    context = Context(envelope, sub.group, host.publish)
                await call_handler(sub, event, context, host.middleware)
        except Exception as exc:
            await self._failed(delivery, envelope.id, envelope.name, exc)
        else:
            await self._subscription.ack(delivery)

    async def _failed(
        self, delivery: Delivery, event_id: str, event_name: str, error: Exception
    ) -> None:
        sub, attempt = self._sub, delivery.attempt
        first = delivery.notes.get("first_failed_at")
        extra = log_extra(event_id, event_name, sub.group, attempt, handler=sub.name)
        extra["error_type"] = type(error).__name__
        if sub.retry.should_retry(error, attempt):
            delay = sub.retry.delay(attempt, error)
            logger.warning(
                "%s failed attempt %d, retrying in %.3f s", sub.name, attempt, delay, extra=extra
            )
            notes = failure_notes(error, reason="retrying", handler=sub.name, first_failed_at=first)
            await self._subscription.nack(delivery, delay, notes)
            return
        reason = failure_reason(sub, error)
        logger.error("%s gave up after %d attempt(s): %s", sub.name, attempt, reason, extra=extra)
        notes = failure_notes(error, reason=reason, handler=sub.name, first_failed_at=first)
        await self._subscription.dead_letter(delivery, notes)
        self._host._record_dead_letter(error)

    async def _undecodable(self, delivery: Delivery, error: DecodeError) -> None:
        logger.error(
            "undecodable message %s in group %s: %s",
            delivery.id,
            self._sub.group,
            error.reason,
            extra={"group": self._sub.group, "message_id": delivery.id, "reason": error.reason},
        )
        notes = failure_notes(error, reason=error.reason, handler=None, first_failed_at=None)
        await self._subscription.dead_letter(delivery, notes)
        self._host._record_dead_letter(error)
