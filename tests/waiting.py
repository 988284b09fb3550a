"""Waiting in tests for a condition, with a timeout (never a bare sleep)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_for(condition: Condition, timeout: float, what: str) -> None:
    """Poll ``condition`` (sync or async) every 50 ms until true; fail after ``timeout``."""
    deadline = anyio.current_time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.05)
