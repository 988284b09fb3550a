"""Retention: a worker trims the streams it reads of what every group acknowledged."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
from redis.exceptions import RedisError, ResponseError

from ._state import RedisState, logger

__all__ = ["Retention"]

_BATCH = 10_000  # most entries one script call trims (XTRIM ... LIMIT): one call stays short
_MOST_CALLS = 100  # per stream and round: a backlog of a million entries goes in one round


class Retention:
    """Trims the streams a worker reads, every quarter of ``claim_timeout``.

    Each round trims each stream (one atomic script) of the entries that every consumer
    group of the stream has acknowledged and that are older than ``retention`` seconds;
    a stream without groups is left whole. An entry pending in a group, or not delivered
    to it yet, is never trimmed, whatever its age. Failures (Redis unreachable, or
    refusing: an ACL without ``XTRIM``) are logged and tried again the next round; they
    never stop the worker. One task only.
    """

    def __init__(self, state: RedisState, retention: float) -> None:
        self._state = state
        self._retention_ms = int(retention * 1000)

    @property
    def every(self) -> float:
        """Seconds between two rounds: a quarter of the claim timeout."""
        return self._state.settings.claim_timeout / 4

    async def run(self, topics: Callable[[], Iterable[str]]) -> None:
        """Trim the stream of each of ``topics()`` every round, until cancelled."""
        while True:
            await anyio.sleep(self.every)
            for topic in sorted(set(topics())):
                await self._trim_logged(topic)

    async def trim(self, topic: str) -> int:
        """Trim the stream of ``topic`` now; return how many entries went.

        One script call trims at most a batch of entries; a call that trimmed half a
        batch or more may have stopped at that limit, so it is called again (a bounded
        number of times; the next round goes on).
        """
        stream = self._state.stream(topic)
        total = 0
        for _ in range(_MOST_CALLS):
            args = [self._retention_ms, _BATCH]
            trimmed = int(await self._state.scripts.trim(keys=[stream], args=args))
            total += trimmed
            if trimmed < _BATCH // 2:
                break
        return total

    async def _trim_logged(self, topic: str) -> None:
        stream = self._state.stream(topic)
        try:
            trimmed = await self.trim(topic)
        except ResponseError as exc:
            logger.error(
                "Redis refused to trim %s: %s; trying again in %.1f s", stream, exc, self.every
            )
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not trim %s (%s: %s); trying again in %.1f s",
                stream,
                type(exc).__name__,
                exc,
                self.every,
            )
        else:
            if trimmed:
                logger.debug("trimmed %d acknowledged entries of %s", trimmed, stream)
