"""``Registry``: subscribers declared by a module, without a bus in hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from ._errors import DuplicateSubscriberError
from ._retry import RetryPolicy
from ._subscriber import Handler, Subscriber, make_subscriber

__all__ = ["Registry"]

H = TypeVar("H", bound=Handler)


class Registry:
    """A collection of subscribers, composed into a bus with ``bus.include(registry)``.

    Each module of an application declares its handlers on its own registry; the
    application includes them all into one bus, so that modules never import each other::

        orders = Registry()

        @orders.subscribe(group="email", retry=RetryPolicy(max_attempts=5))
        async def send_confirmation(event: OrderCreated) -> None: ...

    A registry is plain data: it holds no connection and may be included into several
    buses. Two subscribers of one group for the same event type raise
    ``DuplicateSubscriberError``, here or when registries are combined.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(
        self,
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        timeout: float | None = None,
        mode: str = "background",
        idempotent: bool = False,
        start: str = "earliest",
    ) -> Callable[[H], H]:
        """Decorate an ``async def handler(event: SomeEvent[, context])`` to subscribe it.

        The event types come from the first parameter's annotation (``A | B`` takes
        both). Options:

        - ``group``: the delivery group. Every group gets every event; the workers of
          one group share them. Default: the handler's module-qualified name, for
          the in-memory transport only: a transport that outlives the process refuses
          it at start (moving the code would start a new group that replays history).
        - ``retry``: a ``RetryPolicy`` (default ``RetryPolicy()``: 3 attempts).
        - ``concurrency``: handler calls at once for this subscriber (default 1, which
          keeps publish order), counted apart for its urgent and its background event
          types, so that urgent events never wait for a slot.
        - ``timeout``: seconds an attempt may take before it fails (default: no limit).
        - ``mode``: ``"background"`` (default) runs after ``publish()`` returns;
          ``"immediate"`` runs inside ``publish()``.
        - ``idempotent``: acknowledge, without calling the handler, a delivery of an
          event id that the group already handled successfully (a redelivery after a
          crash, or a second publish with the same id). The transport keeps the record
          (for ``idempotency_ttl``); it needs the ``HandledRecord`` ability.
        - ``start``: where the group begins when it is new: ``"earliest"`` (default:
          every message the transport keeps, history included) or ``"latest"`` (only
          messages published from then on; needs the ``GroupManagement`` ability).

        Returns the handler unchanged, so it stays callable in unit tests. Raises
        ``ConfigurationError`` (a ``TypeError``) for a handler or option that does not fit.
        """

        def decorate(handler: H) -> H:
            sub = make_subscriber(
                handler,
                group=group,
                retry=retry,
                concurrency=concurrency,
                timeout=timeout,
                mode=mode,
                idempotent=idempotent,
                start=start,
            )
            self.add(sub)
            return handler

        return decorate

    def add(self, subscriber: Subscriber) -> None:
        """Add a built subscriber; raises ``DuplicateSubscriberError`` on a clash."""
        if any(s is subscriber for s in self._subscribers):
            return
        for existing in self._subscribers:
            clash = set(existing.event_types) & set(subscriber.event_types)
            if existing.group == subscriber.group and clash:
                names = ", ".join(sorted(t.event_name for t in clash))
                raise DuplicateSubscriberError(
                    f"group {subscriber.group!r} already has a subscriber for {names} "
                    f"({existing.name}); {subscriber.name} would be a second one. "
                    "Give one of them another group=."
                )
        self._subscribers.append(subscriber)

    def include(self, other: Registry) -> None:
        """Add every subscriber of ``other``, or none when one clashes (like ``add``)."""
        candidate = Registry()
        candidate._subscribers = list(self._subscribers)
        for subscriber in other:
            candidate.add(subscriber)
        self._subscribers = candidate._subscribers

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(list(self._subscribers))

    def __len__(self) -> int:
        return len(self._subscribers)
