"""Publishing: envelopes, the middleware chain, the transport write, immediate handlers.

``Publishing`` is the half of ``EventBus`` that publishes; ``EventBus`` inherits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from ._codec import Codec, EventMessage
from ._envelope import Envelope
from ._errors import ImmediateHandlerError, PublishError
from ._event import Event
from ._immediate import run_immediate
from ._middleware import Middleware
from ._subscriber import Subscriber
from .transports._protocol import Connection

__all__ = ["Publishing"]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_MAX_ID = 200


class Publishing:
    """``publish`` and ``publish_many`` of ``EventBus``."""

    _conn: Connection | None
    _codec: Codec
    _middleware: list[Middleware]
    _immediate: dict[type[Event], list[Subscriber]]
    _wire: dict[type[Event], tuple[str, int]]

    def _next_id(self) -> str:
        raise NotImplementedError

    def _open_connection(self) -> Connection:
        raise NotImplementedError

    async def publish(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
    ) -> Envelope:
        """Publish ``event`` to every group subscribed to its type; return its envelope.

        Returns once the transport accepted the event (and immediate subscribers ran).
        Raises ``BusStateError`` outside ``async with bus:``, ``PublishError`` for
        something that is not an event or bad headers or ids, ``PublishTimeoutError``
        when the transport had no room within ``timeout`` seconds,
        ``PayloadTooLargeError`` when a transport encoded it past the size limit,
        ``PublishOutcomeUnknownError`` when the transport cannot tell whether it stored
        the event, ``TransportError`` when the transport failed, and
        ``ImmediateHandlerError`` when an immediate subscriber failed (the event was
        published all the same). Safe to call from many tasks at once.
        """
        conn = self._conn
        if conn is None:
            conn = self._open_connection()  # raises BusStateError
        envelope = self._envelope(event, headers, correlation_id, causation_id)
        if self._middleware:
            await self._publish_through(0, event, envelope, timeout, True)
            return envelope
        await conn.publish(
            envelope.name, EventMessage(event, envelope, self._codec), timeout=timeout
        )
        immediate = self._immediate.get(type(event))
        if immediate:
            await run_immediate(immediate, event, envelope, self.publish, self._middleware)
        return envelope

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
    ) -> list[Envelope]:
        """Publish several events at once, in order; return their envelopes.

        The transport may send them in one round trip (Redis pipelines the writes); the
        middleware still sees each event. Every event is checked before any is sent.
        The same errors as ``publish()``; on a transport failure a first part of the
        batch may have been stored (``PublishOutcomeUnknownError`` says the outcome is
        unknown). Immediate subscribers run after the whole batch is written, for every
        event; the first ``ImmediateHandlerError`` is raised after all of them ran.
        """
        conn = self._open_connection()
        batch = [(e, self._envelope(e, headers, correlation_id, causation_id)) for e in events]
        if self._middleware:
            for event, envelope in batch:
                await self._publish_through(0, event, envelope, timeout, False)
        else:
            items = [(env.name, EventMessage(e, env, self._codec)) for e, env in batch]
            await conn.publish_many(items, timeout=timeout)
        first: ImmediateHandlerError | None = None
        for event, envelope in batch:
            immediate = self._immediate.get(type(event))
            if immediate:
                try:
                    await run_immediate(immediate, event, envelope, self.publish, self._middleware)
                except ImmediateHandlerError as exc:
                    first = first or exc
        if first is not None:
            raise first
        return [envelope for _, envelope in batch]

    def _envelope(
        self,
        event: Event,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Envelope:
        """The envelope of a new event; checks the event type once, the ids always."""
        event_type = type(event)
        wire = self._wire.get(event_type)
        if wire is None:
            if not isinstance(event, Event) or event_type is Event:
                raise PublishError(
                    f"publish() takes an Event subclass instance, not {event_type!r}"
                )
            wire = self._wire[event_type] = (event_type.event_name, event_type.event_version)
        if correlation_id is not None or causation_id is not None:
            _check_ids(correlation_id, causation_id)
        event_id = self._next_id()
        return Envelope(
            event_id,
            wire[0],
            wire[1],
            datetime.now(UTC),
            correlation_id or event_id,
            causation_id,
            _EMPTY if headers is None else _checked_headers(headers),
        )

    async def _publish_through(
        self,
        index: int,
        event: Event,
        envelope: Envelope,
        timeout: float | None,
        with_immediate: bool,
    ) -> None:
        if index < len(self._middleware):

            async def call_next() -> None:
                await self._publish_through(index + 1, event, envelope, timeout, with_immediate)

            await self._middleware[index].on_publish(event, envelope, call_next)
            return
        conn = self._open_connection()
        await conn.publish(
            envelope.name, EventMessage(event, envelope, self._codec), timeout=timeout
        )
        immediate = self._immediate.get(type(event))
        if with_immediate and immediate:
            await run_immediate(immediate, event, envelope, self.publish, self._middleware)


def _checked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise PublishError("headers must map non-empty str keys to str values")
    return MappingProxyType(dict(headers))


def _check_ids(correlation_id: str | None, causation_id: str | None) -> None:
    for name, value in (("correlation_id", correlation_id), ("causation_id", causation_id)):
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= _MAX_ID):
            raise PublishError(f"{name} must be a non-empty string of at most {_MAX_ID} characters")
