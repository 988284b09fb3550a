"""``Publisher``: how a running bus hands events to its connection, and what follows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from ._codec import Codec
from ._delivery import Delivering, run_immediate
from ._envelope import Envelope
from ._errors import ImmediateHandlerError, PublishOutcomeUnknownError, PublishRefusedError
from ._event import Event
from ._middleware import run_around
from ._observer import Observers
from ._outbox import OutboxStore
from ._partitions import topic_of
from .transports._contract import BatchPublishing, Connection, Message, ReferencePublishing

__all__ = ["Publisher"]

Batch = list[tuple[Event, Envelope]]


class Publisher:
    """Hands events to one connection: by reference when it offers
    ``ReferencePublishing``, else encoded; a batch in one call when it offers
    ``BatchPublishing`` and no middleware wants each event; within the middleware's
    ``on_publish`` hooks; then tells the observers and runs the immediate subscribers.

    ``EventBus.publish`` keeps an inline copy of ``write`` for its fast path, reading
    ``publish_to`` and ``by_reference`` from here.
    """

    __slots__ = (
        "_batch",
        "_codec",
        "_on_publish",
        "by_reference",
        "immediate",
        "observers",
        "publish_to",
    )

    def __init__(
        self,
        conn: Connection,
        codec: Codec,
        observers: Observers,
        immediate: Mapping[type[Event], Sequence[Delivering]],
        on_publish: Sequence[Callable[..., Awaitable[None]]],
    ) -> None:
        self.by_reference = isinstance(conn, ReferencePublishing)
        self.publish_to: Callable[..., Awaitable[Any]] = (
            conn.publish_reference if isinstance(conn, ReferencePublishing) else conn.publish
        )
        self._batch = conn if isinstance(conn, BatchPublishing) and not self.by_reference else None
        self._codec = codec
        self.observers = observers
        self.immediate = immediate
        self._on_publish = tuple(on_publish)

    def pack(self, event: Event, envelope: Envelope) -> object:
        """What the transport receives: the event by reference, or its bytes."""
        return (event, envelope) if self.by_reference else self._codec.encode(event, envelope)

    async def write(
        self, event: Event, envelope: Envelope, item: object, timeout: float | None, immediate: bool
    ) -> str:
        """Hand one event to the transport (``item``: what it gets, made here when None),
        tell the observers, then run its immediate subscribers when ``immediate``; return
        the transport's id of it."""
        stored_id: str = await self.publish_to(
            topic_of(event, envelope),
            self.pack(event, envelope) if item is None else item,
            timeout=timeout,
        )
        if self.observers.published:
            self.observers.published_event(event, envelope)
        engines = self.immediate.get(type(event))
        if immediate and engines:
            await run_immediate(engines, event, envelope)
        return stored_id

    async def write_around(
        self, event: Event, envelope: Envelope, item: object, timeout: float | None, immediate: bool
    ) -> tuple[str, Envelope] | None:
        """``write`` within the middleware's ``on_publish`` hooks; the transport's id of
        the event and its envelope (with the headers a middleware added), None when a
        middleware did not pass it on."""
        written: list[tuple[str, Envelope]] = []

        async def write(event: Event, final: Envelope) -> None:
            packed = item if final is envelope else None  # headers added: pack it again
            written.append((await self.write(event, final, packed, timeout, immediate), final))

        await run_around(self._on_publish, (event, envelope), write)
        return written[0] if written else None

    async def write_many(self, batch: Batch, timeout: float | None) -> list[Envelope]:
        """Hand a batch over, every event encoded before any is sent; then run the
        immediate subscribers of every event, raising the first failure after all ran."""
        items = [self.pack(event, envelope) for event, envelope in batch]
        if self._batch is not None and not self._on_publish:
            messages = cast(list[Message], items)  # a batch transport takes bytes only
            pairs = [(topic_of(e, env), msg) for (e, env), msg in zip(batch, messages, strict=True)]
            await self._batch.publish_many(pairs, timeout=timeout)
            for event, envelope in batch:
                self.observers.published_event(event, envelope)
            written, finals = batch, [envelope for _, envelope in batch]
        else:
            written, finals = await self._write_each(batch, items, timeout)
        await self._run_immediate(written)
        return finals

    async def stage(self, outbox: OutboxStore, transaction: object, batch: Batch) -> list[Envelope]:
        """Write the batch into ``outbox`` within the application's ``transaction`` (each
        event within the middleware's ``on_publish`` hooks, when there are any), tell the
        observers, then run the immediate subscribers of every event (inside the open
        transaction: it may still roll back). Returns the envelopes, with the headers a
        middleware added."""
        written: Batch = []
        finals = [envelope for _, envelope in batch]
        if self._on_publish:
            for index, pair in enumerate(batch):

                async def write(event: Event, envelope: Envelope, at: int = index) -> None:
                    message = self._codec.encode(event, envelope)
                    await outbox.write(transaction, [(topic_of(event, envelope), message)])
                    written.append((event, envelope))
                    finals[at] = envelope

                await run_around(self._on_publish, pair, write)
        else:
            encode = self._codec.encode
            rows = [(topic_of(e, env), encode(e, env)) for e, env in batch]
            await outbox.write(transaction, rows)
            written = batch
        if self.observers.published:
            for event, envelope in written:
                self.observers.published_event(event, envelope)
        await self._run_immediate(written)
        return finals

    async def _run_immediate(self, batch: Batch) -> None:
        """Run the immediate subscribers of every event, raising the first failure after
        all ran."""
        first: ImmediateHandlerError | None = None
        for event, envelope in batch:
            engines = self.immediate.get(type(event))
            if engines:
                try:
                    await run_immediate(engines, event, envelope)
                except ImmediateHandlerError as exc:
                    first = first or exc
        if first is not None:
            raise first

    async def _write_each(
        self, batch: Batch, items: list[object], timeout: float | None
    ) -> tuple[Batch, list[Envelope]]:
        """Hand the events over one by one: the observers hear of each as it is accepted.
        Return those handed over (a middleware may keep one back), and every event's
        envelope (with the headers a middleware added). A failure counts the events
        handed over before it (``stored``, ``stored_ids``)."""
        ids: list[str | None] = []
        written: Batch = []
        finals = [envelope for _, envelope in batch]
        for (event, envelope), item in zip(batch, items, strict=True):
            try:
                if self._on_publish:
                    done = await self.write_around(event, envelope, item, timeout, False)
                else:
                    done = (await self.write(event, envelope, item, timeout, False), envelope)
            except PublishOutcomeUnknownError as exc:
                exc.stored += len(ids)
                raise
            except PublishRefusedError as exc:
                exc.stored_ids = (*ids, *exc.stored_ids)
                raise
            ids.append(None if done is None else done[0])
            if done is not None:
                written.append((event, done[1]))
                finals[len(ids) - 1] = done[1]
        return written, finals
