"""``drain``: wait for all published work, and surface handler failures."""

from __future__ import annotations

from eventbus import EventBus

__all__ = ["drain"]


async def drain(bus: EventBus, *, reraise: bool = True, timeout: float | None = 10.0) -> None:
    """Wait until every published event is handled or dead-lettered.

    With ``reraise`` (the default), the first exception that sent an event to the dead
    letters since the previous ``drain`` is raised again, so a failing handler fails the
    test that triggered it. Failures that a retry later fixed are not raised. ``timeout``
    (seconds, default 10) turns a hang into a ``TimeoutError``.
    """
    await bus.drain(timeout=timeout)
    errors = bus.take_dead_letter_errors()
    if reraise and errors:
        raise errors[0]
