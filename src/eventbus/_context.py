"""``Context``: what a handler may receive besides its event."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

from ._envelope import Envelope
from ._event import Event

__all__ = ["Context"]


class _Publish(Protocol):
    def __call__(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        causation_id: str | None = ...,
    ) -> Awaitable[Envelope]: ...


class Context:
    """The delivery a handler is working on, given as its optional second parameter::

        async def reserve_stock(event: OrderCreated, context: Context) -> None:
            context.envelope.correlation_id
            await context.publish(StockLow(...))  # same correlation id, caused by event

    - ``envelope``: the event's metadata, with the current ``attempt``.
    - ``group``: the group this delivery belongs to.
    - ``publish``: publishes a follow-up event on the same bus, with the correlation id
      of this event and this event's id as causation id.
    """

    __slots__ = ("_publish", "envelope", "group")

    def __init__(self, envelope: Envelope, group: str, publish: _Publish) -> None:
        self.envelope = envelope
        self.group = group
        self._publish = publish

    @property
    def attempt(self) -> int:
        """1 on the first delivery, one more on every retry."""
        return self.envelope.attempt

    async def publish(self, event: Event, *, headers: Mapping[str, str] | None = None) -> Envelope:
        """Publish a follow-up event that continues this event's flow."""
        return await self._publish(
            event,
            headers=headers,
            correlation_id=self.envelope.correlation_id,
            causation_id=self.envelope.id,
        )

    def __repr__(self) -> str:
        env = self.envelope
        return f"Context(event={env.name}:{env.id}, group={self.group!r}, attempt={env.attempt})"
