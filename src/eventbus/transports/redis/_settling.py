"""Retrying and dead-lettering the deliveries of one consumer, until Redis confirms."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from redis.exceptions import ResponseError

from eventbus._backoff import Backoff
from eventbus.transports._contract import FailureNotes

from ._entries import RedisDelivery, message_fields
from ._state import RedisState, logger

__all__ = ["Settler"]


class Settler:
    """Runs the retry and dead-letter scripts of one consumer's deliveries (see
    ``_settle`` for what happens while Redis cannot take them)."""

    def __init__(
        self, state: RedisState, topic: str, group: str, closed: Callable[[], bool]
    ) -> None:
        self._state = state
        self._topic = topic
        self._group = group
        self._keys = state.keys(topic, group)
        self._closed = closed

    async def retry(self, d: RedisDelivery, delay: float, notes: FailureNotes) -> None:
        """Schedule the entry in the group's retry set, then XACK it (one Lua script);
        dead-letter it as ``deleted`` when it left its stream meanwhile."""
        key, delete = self.source(d)
        args: list[Any] = [
            self._group, d.entry_id, delete, int(max(0.0, delay) * 1000),
            d.attempt + 1, json.dumps(notes.as_dict()), d.id,
        ]  # fmt: skip
        script = self._state.scripts.retry
        moved = await self._settle(d, lambda: script(keys=[key, self._keys.retry], args=args))
        if int(moved) < 0:
            await self._record_deleted(d, notes)

    def source(self, delivery: RedisDelivery) -> tuple[str, str]:
        """The stream the entry was read from, and whether it is the redeliver stream."""
        if delivery.from_redeliver:
            return self._keys.redeliver, "1"
        return self._keys.stream, "0"

    async def _settle(self, d: RedisDelivery, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a retry or dead-letter script until Redis confirms it; return its reply.

        The scripts are idempotent, so repeating one whose reply was lost is harmless,
        and they write nothing when Redis refuses them (WRONGTYPE, OOM, NOPERM). While
        Redis is unreachable, or refuses the script, the entry stays held (its lease
        renewed) and the script is tried again with backoff; once the subscription
        closes it is left pending for the group to take over.
        """
        backoff = self._state.settle_backoff()
        while True:
            try:
                return await call()
            except self._state.connection_errors:
                if self._closed():
                    raise
                await self._state.back_off(backoff, "settling a delivery")
            except ResponseError as exc:
                if self._closed():
                    raise
                await self._refused(d, backoff, exc)

    async def _refused(self, d: RedisDelivery, backoff: Backoff, exc: ResponseError) -> None:
        delay = backoff.failed()
        logger.error(
            "Redis refused to settle entry %s of %s in group %s (failure %d): %s: %s; "
            "the entry stays held, trying again in %.2f s",
            d.entry_id,
            self.source(d)[0],
            self._group,
            backoff.failures,
            type(exc).__name__,
            exc,
            delay,
            extra={"group": self._group, "message_id": d.id},
        )
        await backoff.wait(delay)

    async def dead_letter(self, d: RedisDelivery, notes: FailureNotes) -> None:
        """Copy the entry's raw fields (those this consumer holds) to the group's
        dead-letter stream, then XACK it (one Lua script)."""
        key, delete = self.source(d)
        args: list[Any] = [
            self._group, d.entry_id, delete, self._topic, d.attempt,
            json.dumps(notes.as_dict()), d.id, "0", *message_fields(d.message),
        ]  # fmt: skip
        script = self._state.scripts.dead_letter
        await self._settle(d, lambda: script(keys=[key, self._keys.dead], args=args))

    async def _record_deleted(self, d: RedisDelivery, notes: FailureNotes) -> None:
        """Dead-letter, as ``deleted``, a failed delivery whose entry left the stream."""
        logger.error(
            "entry %s of %s was deleted from the stream while its handler ran, which then "
            "failed; dead-lettered as deleted instead of retried",
            d.entry_id,
            self.source(d)[0],
            extra={"group": self._group, "message_id": d.id},
        )
        why = "the entry was deleted from the stream while its handler ran; then " + (
            f"{notes.error_type}: {notes.error_message}" if notes.error_type else notes.reason
        )
        await self.dead_letter(d, replace(notes, reason="deleted", error_message=why))
