"""Writes that Redis refuses for a while, tried again later while the rest goes on."""

from __future__ import annotations

import logging

from redis.exceptions import ResponseError

from eventbus._backoff import Backoff

__all__ = ["RefusedWrite"]

logger = logging.getLogger("eventbus.redis")

_LOG_EVERY = 60.0  # seconds between two error lines of one write that stays refused


class RefusedWrite:
    """One write that Redis may refuse for a while (``OOM`` under ``maxmemory``,
    ``WRONGTYPE``, ``NOPERM``) and that its caller tries again later, doing the rest of
    its work meanwhile: when to try again, and what is logged.

    The first refusal is logged as an error, then at most one error a minute while the
    refusals go on (with their count), and a warning once Redis takes the write again.
    The lines name the write by what it does and its keys, the error by its type and
    Redis's message; never a payload. One instance per write and loop.
    """

    def __init__(self, what: str, meanwhile: str, backoff: Backoff) -> None:
        self._what = what
        self._meanwhile = meanwhile
        self._backoff = backoff
        self._logged_at = float("-inf")

    @property
    def refusals(self) -> int:
        """How many times in a row Redis refused the write."""
        return self._backoff.failures

    def refused(self, exc: ResponseError, now: float) -> float:
        """Count a refusal at ``now`` (the caller's clock, in seconds), log it when due;
        return the seconds to wait before trying again (the backoff's next delay)."""
        delay = self._backoff.failed()
        if now - self._logged_at >= _LOG_EVERY:
            self._logged_at = now
            logger.error(
                "Redis refused to %s (refusal %d): %s: %s; %s",
                self._what,
                self.refusals,
                type(exc).__name__,
                exc,
                self._meanwhile,
            )
        return delay

    def taken(self) -> None:
        """Redis took the write: log it when it had been refused, and start over."""
        if self._backoff.failures:
            logger.warning(
                "Redis took the write to %s after %d refusals", self._what, self.refusals
            )
            self._backoff.reset()
            self._logged_at = float("-inf")
