"""Worker processes for the fault tests: ``python -m eventbus worker
tests.worker_app:make_bus`` (configured through the environment, see ``worker_app``),
and the ledger their handlers write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["Ledger", "Worker"]

ROOT = Path(__file__).resolve().parent.parent


class Ledger:
    """The lines the workers' handlers wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int]]:
        """(kind, order id, pid) of every line, in the order they were written."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().split(b"\n")[:-1]:  # a line being written waits
            kind, order, pid = line.decode().split()
            out.append((kind, order, int(pid)))
        return out

    def count(self, kind: str) -> Counter[str]:
        """How many ``kind`` lines (``start`` or ``done``) each order id has."""
        return Counter(order for k, order, _ in self.lines() if k == kind)

    def done(self) -> Counter[str]:
        """How many times each order id was handled to the end."""
        return self.count("done")

    def pids(self, kind: str, order: str) -> list[int]:
        """The processes that wrote a ``kind`` line for ``order``."""
        return [pid for k, o, pid in self.lines() if k == kind and o == order]


class Worker:
    """One worker process; its stdout and stderr go to files in the test's directory."""

    def __init__(self, label: str, consumer: str, env: dict[str, str], directory: Path) -> None:
        self.label = label
        self.stdout = directory / f"{label}.out"
        self.stderr = directory / f"{label}.err"
        argv = [sys.executable, "-m", "eventbus", "worker", "tests.worker_app:make_bus"]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [*argv, "--name", consumer],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def ready(self) -> bool:
        """Whether the worker printed its ready line."""
        return "eventbus worker ready" in self.stdout.read_text()

    def exited(self) -> bool:
        """Whether the process has exited."""
        return self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if not self.exited():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def log(self, tail: int = 3000) -> str:
        """The end of the worker's stderr (its log)."""
        return f"--- {self.label} (pid {self.pid}) ---\n{self.stderr.read_text()[-tail:]}"
