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
from tests.waiting import wait_for

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


class Process:
    """A worker process whose output goes to files (read while it runs)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.out, self.err = tmp_path / "worker.out", tmp_path / "worker.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "worker", *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=err,
                text=True,
            )

    def ready(self) -> bool:
        """Whether the worker printed its ready line."""
        return "eventbus worker ready" in self.out.read_text()

    def log(self) -> str:
        """What the worker logged so far."""
        return self.err.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def env_for(server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """The worker app's environment on a fresh prefix, with a ledger in ``tmp_path``."""
    return {
        "EVENTBUS_TEST_REDIS_URL": server.url,
        "EVENTBUS_TEST_PREFIX": f"cli{secrets.token_hex(3)}",
        "EVENTBUS_TEST_LEDGER": str(tmp_path / "ledger"),
    }


def test_a_worker_serves_only_the_groups_it_is_given(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """--group email serves email only, leaves stock declared, and logs what it serves."""
    env = env_for(redis_server, tmp_path)
    worker = Process(tmp_path, env, "tests.worker_app:two_groups", "--group", "email")
    transport = RedisTransport(redis_server.url, prefix=env["EVENTBUS_TEST_PREFIX"])

    async def produce() -> dict[str, int]:
        await wait_for(lambda: worker.ready() or worker.process.poll() is not None, 20, "ready")
        assert worker.ready(), worker.log()
        async with EventBus(transport=transport) as bus:
            await bus.publish_many([OrderCreated(order_id=f"o-{i}") for i in range(3)])
            ledger = tmp_path / "ledger"
            await wait_for(
                lambda: ledger.exists() and ledger.read_text().count("email") == 3, 20, "email"
            )
            return {s.group: s.waiting for s in await bus.inspect()}

    try:
        waiting = anyio.run(produce)
    finally:
        code = worker.stop()
    assert waiting == {"email": 0, "stock": 3}
    assert "stock" not in (tmp_path / "ledger").read_text()
    log = worker.log()
    assert f"RedisTransport('redis://127.0.0.1:{redis_server.port}/0', prefix='cli" in log
    assert "serving group email: OrderCreated" in log
    assert "serving group stock" not in log
    assert code == 0, log


def test_a_worker_refuses_an_in_memory_bus() -> None:
    """Another process cannot reach an in-memory bus: one clear line, exit 1."""
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "tests.worker_app:in_memory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "InMemoryTransport, which other processes cannot reach" in result.stderr


def test_a_worker_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    """Redis comes up after the worker: the worker waits (saying so), then serves."""
    server = RedisServer(tmp_path)
    env = env_for(server, tmp_path)
    worker = Process(tmp_path, env, "tests.worker_app:make_bus", "--connect-timeout", "60")

    async def scenario() -> None:
        await wait_for(lambda: "trying again in" in worker.log(), 20, "the worker to wait")
        server.start()
        await wait_for(lambda: worker.ready(), 20, "the worker to start")

    try:
        anyio.run(scenario)
        code = worker.stop()
    finally:
        worker.stop()
        server.stop()
    assert code == 0, worker.log()
    assert "Traceback" not in worker.log()


def test_a_worker_that_cannot_reach_redis_in_time_says_so_in_one_line(tmp_path: Path) -> None:
    """No Redis within --connect-timeout: exit 1, one line, no traceback, no password."""
    server = RedisServer(tmp_path, password="s3cret-pw")
    argv = ["worker", "tests.worker_app:make_bus", "--connect-timeout", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "eventbus", *argv],
        cwd=ROOT,
        env={**os.environ, **env_for(server, tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert last.startswith("eventbus worker: TransportError: cannot use Redis at redis://127.0.0.1")
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr
