"""Checks of option values, shared by every class that takes options."""

from __future__ import annotations

import math

from ._errors import ConfigurationError

__all__ = ["START", "check_count", "check_seconds", "check_start"]

START = ("earliest", "latest")
"""Where a new group starts, or where a reset moves it."""


def check_seconds(owner: str, name: str, value: object, *, zero: bool = True) -> float:
    """A finite number of seconds (>= 0, or > 0 when ``zero`` is False), as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{owner}({name}=...) must be a finite number of seconds {bound}")
    return float(value)


def check_count(owner: str, name: str, value: object, *, minimum: int = 1) -> int:
    """An int of at least ``minimum`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{owner}({name}=...) must be an int >= {minimum}")
    return value


def check_start(value: object, owner: str = "start") -> str:
    """``"earliest"`` or ``"latest"``; ``ConfigurationError`` for anything else."""
    if value not in START:
        raise ConfigurationError(f"{owner} must be 'earliest' or 'latest', not {value!r}")
    return str(value)
