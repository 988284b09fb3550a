"""``RetryPolicy``: how many attempts a subscriber gets, and how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._errors import ConfigurationError, Retry

__all__ = ["RetryPolicy"]

_ExcTypes = tuple[type[BaseException], ...]


def _exception_types(value: object, what: str) -> _ExcTypes:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple | list) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ConfigurationError(f"RetryPolicy({what}=...) takes exception classes")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and backoff of one subscriber.

    - ``max_attempts`` counts the first try: 1 means never retry. Default 3.
    - The wait before attempt ``n + 1`` is ``initial_delay * multiplier ** (n - 1)``,
      capped at ``max_delay``, then shortened by a random fraction of at most ``jitter``
      (0.1 takes up to 10% off) so that failed events do not retry in lock-step.
      Defaults: 0.1 s, x2, at most 30 s, jitter 0.1.
    - ``retry_on``: the exceptions worth another attempt (default: any ``Exception``).
    - ``give_up_on``: exceptions that dead-letter the event at once, even when they also
      match ``retry_on``.

    A handler may raise ``Retry(delay=...)`` to ask for another attempt even when
    ``Retry`` is not in ``retry_on``; it still counts against ``max_attempts``, and
    ``give_up_on`` still wins when it lists ``Retry`` (or a base class of it). A handler
    that runs past its subscriber ``timeout`` fails that attempt with
    ``HandlerTimeoutError`` (a ``TimeoutError``).

    ``RetryPolicy.none()`` is one attempt and no retry.
    """

    max_attempts: int = 3
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_on: _ExcTypes = (Exception,)
    give_up_on: _ExcTypes = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError("RetryPolicy(max_attempts=...) must be an int")
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy(max_attempts=...) must be >= 1")
        for name in ("initial_delay", "max_delay"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigurationError(f"RetryPolicy({name}=...) must be a number >= 0")
        if not _is_number(self.multiplier) or self.multiplier < 1:
            raise ConfigurationError("RetryPolicy(multiplier=...) must be a number >= 1")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy(jitter=...) must be between 0 and 1")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "give_up_on", _exception_types(self.give_up_on, "give_up_on"))

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt: a failure goes straight to the dead letters."""
        return cls(max_attempts=1)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt``, which failed with ``error``, gets another."""
        if attempt >= self.max_attempts or isinstance(error, self.give_up_on):
            return False
        return isinstance(error, (Retry, *self.retry_on))

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, Retry) and error.delay is not None:
            return error.delay
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1 - self.jitter * random.random())


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
