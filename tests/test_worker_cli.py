"""`python -m eventbus worker module:bus` runs subscribers in their own process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

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


def serve_and_stop(
    redis_server: RedisServer, tmp_path: Path, events: int, *extra: str, target: str
) -> tuple[list[str], int | None, str]:
    """Start a worker, publish ``events`` orders, drain, send SIGTERM; return the ledger's
    lines, the exit code and stderr."""
    prefix = f"cli{secrets.token_hex(3)}"
    ledger = tmp_path / "ledger"
    env = {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": prefix,
        "EVENTBUS_TEST_LEDGER": str(ledger),
    }
    worker = start_worker(env, *extra, target=target)

    async def produce() -> None:
        async with EventBus(transport=RedisTransport(redis_server.url, prefix=prefix)) as bus:
            for i in range(events):
                await bus.publish(OrderCreated(order_id=f"o-{i}"))
            await drain(bus, timeout=20)

    try:
        anyio.run(produce)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    return ledger.read_text().splitlines(), worker.returncode, stderr


def test_worker_handles_events_and_exits_cleanly_on_sigterm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker process handles what a producer publishes and exits 0 on SIGTERM."""
    lines, code, stderr = serve_and_stop(
        redis_server, tmp_path, 20, "--name", "worker-a", target="tests.worker_app:make_bus"
    )
    done = sorted(line.split()[1] for line in lines if line.startswith("done"))
    assert done == sorted(f"o-{i}" for i in range(20))
    assert code == 0, stderr
    assert "worker stopped" in stderr


def test_worker_opens_a_lifespan_around_the_bus_and_closes_it_last(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A target yielding the bus from an async context manager: the context opens before
    the bus starts and closes after it stopped (after SIGTERM), exit code 0."""
    lines, code, stderr = serve_and_stop(
        redis_server, tmp_path, 5, target="tests.worker_app:lifespan"
    )
    kinds = [line.split()[0] for line in lines]
    assert kinds[0] == "opened"
    assert kinds[-1] == "closed"
    assert kinds.count("done") == 5
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.events:OrderCreated", "is not an EventBus"),
        ("tests.worker_app:not_a_bus", "the context yielded str, not a bus"),
        ("tests.no_such_module:bus", "cannot import tests.no_such_module"),
        ("tests.worker_app", "expected package.module:bus"),
    ],
)
def test_worker_rejects_what_is_not_a_bus(target: str, message: str) -> None:
    """A wrong target gives a clear error and a non-zero exit, without starting."""
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_help_is_plain_text() -> None:
    """`eventbus --help` shows no reST markup."""
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "--help"], capture_output=True, text=True, check=True
    )
    assert "``" not in result.stdout
    assert "worker" in result.stdout
