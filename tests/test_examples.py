"""The runnable examples run and tell the story they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_demo_shows_retries_and_a_dead_letter() -> None:
    """`make demo`'s example handles every order, retries one and dead-letters another."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.quickstart"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert out.count("stock     reserved") == 3
    assert "email     confirmed o-1 (attempt 1)" in out
    assert "email     confirmed o-2 (attempt 3)" in out
    assert "blocked u-7 inside publish()" in out
    assert "dead      email: OrderCreated after 4 attempts, retries-exhausted" in out
    assert "o-3" not in out.split("drained")[1].split("dead")[0]
    assert "gave up after 4 attempt(s)" in result.stderr
