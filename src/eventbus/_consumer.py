"""``Consumer``: the loops that take one topic's deliveries for one subscriber."""

from __future__ import annotations

import anyio
import anyio.abc
import anyio.lowlevel

from ._backoff import Backoff
from ._codec import Codec
from ._delivery import Delivering, logger
from ._envelope import Envelope
from ._errors import DecodeError, MalformedMessageError
from ._event import Event
from .transports._contract import Delivery, Subscription

__all__ = ["Consumer"]

_CHECKPOINT_EVERY = 64


class _Slot:
    """One loop: its cancel scope, and whether it is inside a handler right now."""

    __slots__ = ("busy", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.busy = False


class Consumer:
    """Runs ``concurrency`` loops over one subscription of ``event_type``.

    Each loop receives a delivery, decodes it and hands it to the delivery engine,
    which handles it and acks, retries or dead-letters it. ``stop()`` cancels the loops
    that are waiting for work and lets the busy ones finish their current delivery.
    A failing transport is logged and retried after a backoff, in real time (it waits
    for the outside world, which a virtual clock cannot hurry).
    """

    def __init__(
        self,
        engine: Delivering,
        subscription: Subscription,
        event_type: type[Event],
        codec: Codec,
        limiter: anyio.CapacityLimiter | None,
    ) -> None:
        self._engine = engine
        self._subscription = subscription
        self._event_type = event_type
        self._codec = codec
        self._limiter = limiter
        self._slots: set[_Slot] = set()
        self._stopping = False
        self._stopped = anyio.Event()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the loops in ``task_group``."""
        for _ in range(self._engine.sub.concurrency):
            task_group.start_soon(self._loop)

    def stop(self) -> None:
        """Cancel idle loops; busy ones exit after their current delivery."""
        self._stopping = True
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
                if not self._slots and self._stopping:
                    self._stopped.set()

    async def _run(self, slot: _Slot) -> None:
        engine = self._engine
        receive = self._subscription.receive
        deliver = engine.deliver_once if engine.sub.idempotent else engine.deliver
        subscription, event_type, limiter = self._subscription, self._event_type, self._limiter
        backoff, handled = Backoff(0.1, 2.0, jitter=0.0), 0
        while not self._stopping:
            try:
                delivery = await receive()
                if delivery is None:
                    return
                slot.busy = True
                try:
                    ref = delivery.reference
                    if (
                        type(ref) is tuple
                        and type(ref[0]) is event_type
                        and type(ref[1]) is Envelope
                    ):
                        decoded: tuple[Event, Envelope] | None = ref  # of this very class
                    else:
                        decoded = await self._decode(delivery)  # None: dead-lettered
                    if decoded is None:
                        pass
                    elif limiter is None:
                        await deliver(subscription, delivery, decoded[0], decoded[1])
                    else:
                        async with limiter:
                            await deliver(subscription, delivery, decoded[0], decoded[1])
                finally:
                    slot.busy = False
            except Exception:  # a transport failure: log, back off (real time), go on
                logger.exception("eventbus consumer of %s failed", self._engine.sub.group)
                await backoff.wait(backoff.failed())
                continue
            backoff.failures = 0
            handled += 1
            if handled % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def _decode(self, delivery: Delivery) -> tuple[Event, Envelope] | None:
        """The event of a delivery; None after dead-lettering one that is not valid."""
        codec = self._codec
        try:
            if delivery.reference is not None:
                event, envelope = codec.decode_reference(delivery.reference, delivery.attempt)
            else:
                event, envelope = codec.decode(delivery.message, delivery.attempt)
            if type(event) is not self._event_type:
                raise MalformedMessageError(
                    f"a {envelope.name} event arrived on the topic of {self._event_type.event_name}"
                )
        except DecodeError as exc:
            await self._engine.undecodable(self._subscription, delivery, exc)
            return None
        return event, envelope
