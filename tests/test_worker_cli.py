"""`python -m eventbus worker module:bus` runs subscribers in their own process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from eventbus import EventBus
from eventbus.testing import drain
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def start_worker(
    env: dict[str, str], *extra: str, target: str = "tests.worker_app:make_bus"
) -> subprocess.Popen[str]:
    """Start a worker process and wait for its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "eventbus", "worker", target, *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "eventbus worker ready: 1 group(s)" in line, (
        process.stderr.read() if process.stderr else ""
    )
    return process


def test_worker_handles_events_and_exits_cleanly_on_sigterm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker process handles what a producer publishes and exits 0 on SIGTERM."""
    prefix = f"cli{secrets.token_hex(3)}"
    ledger = tmp_path / "ledger"
    env = {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": prefix,
        "EVENTBUS_TEST_LEDGER": str(ledger),
    }
    worker = start_worker(env, "--name", "worker-a")

    async def produce() -> None:
        async with EventBus(transport=RedisTransport(redis_server.url, prefix=prefix)) as bus:
            for i in range(20):
                await bus.publish(OrderCreated(order_id=f"o-{i}"))
            await drain(bus, timeout=20)

    try:
        anyio.run(produce)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    done = sorted(
        line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("done")
    )
    assert done == sorted(f"o-{i}" for i in range(20))
    assert worker.returncode == 0, stderr
    assert "worker stopped" in stderr


def test_worker_rejects_a_target_that_is_not_a_bus() -> None:
    """A target that is not an EventBus gives a clear error and a non-zero exit."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "tests.events:OrderCreated"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "is not an EventBus" in result.stderr
    assert time.monotonic() - started < 30


def test_worker_opens_a_lifespan_around_the_bus_and_closes_it_last(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A target yielding the bus from an async context manager: the context opens before
    the bus starts and closes after it stopped (after SIGTERM), exit code 0."""
    prefix = f"cli{secrets.token_hex(3)}"
    ledger = tmp_path / "ledger"
    env = {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": prefix,
        "EVENTBUS_TEST_LEDGER": str(ledger),
    }
    worker = start_worker(env, target="tests.worker_app:lifespan")

    async def produce() -> None:
        async with EventBus(transport=RedisTransport(redis_server.url, prefix=prefix)) as bus:
            for i in range(5):
                await bus.publish(OrderCreated(order_id=f"o-{i}"))
            await drain(bus, timeout=20)

    try:
        anyio.run(produce)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    kinds = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert kinds[0] == "opened"
    assert kinds[-1] == "closed"
    assert kinds.count("done") == 5
    assert worker.returncode == 0, stderr


def test_worker_rejects_a_context_that_yields_no_bus() -> None:
    """A lifespan that yields something else: a clear error and a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "tests.worker_app:not_a_bus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "yielded str, not a bus" in result.stderr
