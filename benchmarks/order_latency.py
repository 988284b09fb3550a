"""``POST /orders`` latency of the e-commerce example: event-driven against blocking.

One client sends N orders (default 1,000, after 50 unmeasured warm-up orders), one at a
time, to the example's real app in this process (httpx's ASGI transport: no socket, the
same for every variant); the time of each request is measured around its ``await``
with ``time.perf_counter``. The orders module saves each order in its own database
(SQLite through aiosqlite, or PostgreSQL through asyncpg). Variants, each on a fresh app
and database:

- **floor**: the same endpoint with publishing off: it only saves the order;
- **event-driven, in memory**: saves, publishes ``OrderCreated`` and answers; the
  consumers run in the background in the same process;
- **event-driven, Redis**: the same on a private ``redis-server`` that this script
  starts on a free port (append-only, fsync every second) and stops; consumers in the
  same process read from Redis;
- **outbox, ...**: the example's default: the order and its event written in one
  transaction, the bus's relay publishing the event once committed;
- **blocking**: the seed's design, every consumer called inside the request (the same
  handlers, made immediate);
- **PostgreSQL floor** and **PostgreSQL outbox, Redis**: the orders database on the
  machine's PostgreSQL server (``EVENTBUS_BENCH_POSTGRES``, default
  ``postgresql://postgres@127.0.0.1:5432``; a database created for the run and dropped);
  skipped when the server is not reachable.

Consumers cost what a middleware makes them wait, in every variant: email 50 ms, stock
3 ms, analytics 2 ms per order. For the event-driven variants the table also gives how
long the consumers took to finish the backlog after the last answer. Targets: p50 within
1 ms of the floor in memory and within 2 ms on Redis; through the outbox on PostgreSQL,
within 2 ms of the PostgreSQL floor; the blocking p50 at least the consumers' cost above
the floor.

Run it from the repository's root::

    .venv/bin/python benchmarks/order_latency.py [--requests N] [--quick]

``--quick`` is a smoke run of 200 requests. Figures: examples/ecommerce/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the examples package is beside benchmarks/
    sys.path.insert(0, str(ROOT))

from eventbus import Context, Event, Middleware  # noqa: E402 (after the path set-up above)
from examples.ecommerce.app import create_app  # noqa: E402 (after the path set-up above)
from examples.ecommerce.inprocess import in_process  # noqa: E402 (after the path set-up above)
from examples.ecommerce.settings import Settings  # noqa: E402 (after the path set-up above)
from examples.ecommerce.shop import Shop  # noqa: E402 (after the path set-up above)

DEFAULT_REQUESTS = 1_000
QUICK_REQUESTS = 200
WARM_UP = 50
COSTS = {"email": 0.050, "products": 0.003, "analytics": 0.002}  # seconds per order
TARGET_MEMORY_MS = 1.0
TARGET_REDIS_MS = 2.0
TARGET_OUTBOX_PG_MS = 2.0
PG_SERVER = os.environ.get("EVENTBUS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
ORDER = {
    "items": [{"sku": "MUG-01", "quantity": 1}, {"sku": "TEE-01", "quantity": 2}],
    "ship_to": {
        "name": "Ada",
        "street": "1 Main Street",
        "city": "Lyon",
        "postal_code": "69001",
        "country": "FR",
    },
}
Next = Callable[[], Awaitable[None]]


class SimulatedCost(Middleware):
    """Makes each handler attempt of a group wait as long as the real work would."""

    async def on_handle(self, event: Event, context: Context, call_next: Next) -> None:
        """Wait the group's cost, then handle."""
        await anyio.sleep(COSTS.get(context.group, 0.0))
        await call_next()


@dataclass(frozen=True)
class Result:
    """One variant's request latencies (seconds) and backlog time (None: no backlog)."""

    name: str
    latencies: list[float]
    backlog: float | None
    floor: str = "floor"
    """The name of the variant this one is compared with."""

    def percentile(self, p: int) -> float:
        """The p-th percentile in milliseconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000


async def measure(name: str, settings: Settings, requests: int, floor: str) -> Result:
    """Send ``requests`` orders one at a time to a fresh app on ``settings``."""
    shop = Shop(settings, middleware=[SimulatedCost()])
    async with in_process(create_app(shop=shop)) as http:
        for sku in ("MUG-01", "TEE-01"):
            shop.products.set_stock(sku, 10**9)
        headers = await log_in(http)
        for _ in range(WARM_UP):
            await place_order(http, headers)
        latencies = [await place_order(http, headers) for _ in range(requests)]
        answered = time.perf_counter()
        await shop.bus.drain(timeout=600)
        backlog = time.perf_counter() - answered if settings.delivery == "background" else None
    return Result(name, latencies, backlog, floor)


async def log_in(http: httpx.AsyncClient) -> dict[str, str]:
    """Register and log in a customer; their auth headers."""
    account = {"email": "ada@example.com", "name": "Ada", "password": "correct horse"}
    (await http.post("/users", json=account)).raise_for_status()
    login = await http.post("/sessions", json={k: account[k] for k in ("email", "password")})
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['token']}"}


async def place_order(http: httpx.AsyncClient, headers: dict[str, str]) -> float:
    """One ``POST /orders``; its latency in seconds."""
    started = time.perf_counter()
    response = await http.post("/orders", json=ORDER, headers=headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"POST /orders: {response.status_code} {response.text}")
    return elapsed


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A private redis-server on a free port; None when redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as directory, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # a process has no readiness event to wait on


@asynccontextmanager
async def postgres() -> AsyncIterator[str | None]:
    """A database of its own on the PostgreSQL server (None when it is not reachable)."""
    name = f"eventbus_bench_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def variants(redis_url: str | None, pg_url: str | None) -> list[tuple[str, Settings, str]]:
    """Each variant: its name, its settings, and the floor it is compared with."""
    base = Settings(mail_fail_every=None)
    direct = replace(base, outbox=False)
    on_redis = replace(base, redis_url=redis_url, redis_prefix=f"bench-{secrets.token_hex(3)}")
    chosen = [
        ("floor (saves the order only)", replace(base, delivery="off"), "floor"),
        ("event-driven, in memory", direct, "floor"),
        ("outbox, in memory", base, "floor"),
    ]
    if redis_url is not None:
        chosen.append(("event-driven, Redis", replace(on_redis, outbox=False), "floor"))
        chosen.append(("outbox, Redis", on_redis, "floor"))
    chosen.append(("blocking (consumers inline)", replace(direct, delivery="inline"), "floor"))
    if pg_url is not None:
        pg_floor = "PostgreSQL floor"
        chosen.append((pg_floor, replace(base, orders_db=pg_url, delivery="off"), pg_floor))
        if redis_url is not None:
            outbox = replace(on_redis, orders_db=pg_url)
            chosen.append(("PostgreSQL outbox, Redis", outbox, pg_floor))
    return chosen


async def run(requests: int, redis_url: str | None) -> list[Result]:
    """Every variant, one after the other."""
    results = []
    async with postgres() as pg_url:
        for name, settings, floor in variants(redis_url, pg_url):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results.append(await measure(name, settings, requests, floor))
    return results


def report(results: Sequence[Result], requests: int, redis_missing: bool) -> None:
    """Print the table and whether each target is met."""
    floors = {r.floor: r.percentile(50) for r in results if r.name.split(" (")[0] == r.floor}
    costs = ", ".join(f"{group} {cost * 1000:g} ms" for group, cost in COSTS.items())
    print(f"POST /orders, {requests} requests per variant, one client, in process (httpx ASGI)")
    print(f"simulated consumer costs per order: {costs}")
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs\n")
    print(f"{'variant':<30}{'p50 ms':>9}{'p99 ms':>9}{'p50 - floor':>13}{'backlog done':>14}")
    by_name = {}
    for r in results:
        short = r.name.split(" (")[0]
        by_name[short] = r.percentile(50) - floors[r.floor]
        over = "-" if short == r.floor else f"{by_name[short]:+.2f}"
        backlog = "-" if r.backlog is None else f"{r.backlog:.1f} s"
        print(
            f"{r.name:<30}{r.percentile(50):>9.2f}{r.percentile(99):>9.2f}{over:>13}{backlog:>14}"
        )
    print()
    verdict(
        "event-driven p50 in memory within 1 ms of the floor",
        by_name.get("event-driven, in memory"),
        lambda d: d <= TARGET_MEMORY_MS,
    )
    verdict(
        "event-driven p50 on Redis within 2 ms of the floor",
        None if redis_missing else by_name.get("event-driven, Redis"),
        lambda d: d <= TARGET_REDIS_MS,
    )
    verdict(
        "outbox p50 on PostgreSQL within 2 ms of the PostgreSQL floor",
        by_name.get("PostgreSQL outbox, Redis"),
        lambda d: d <= TARGET_OUTBOX_PG_MS,
    )
    cost = sum(COSTS.values()) * 1000
    verdict(f"blocking p50 pays the consumers' {cost:g} ms over the floor",
            by_name.get("blocking"), lambda d: d >= cost)  # fmt: skip


def verdict(target: str, over_floor: float | None, met: Callable[[float], bool]) -> None:
    """One 'met / not met' line."""
    if over_floor is None:
        print(f"{target}: not measured (redis-server or PostgreSQL is not available)")
    else:
        print(f"{target}: {'met' if met(over_floor) else 'NOT MET'} ({over_floor:+.2f} ms)")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments, run every variant, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, help=f"per variant (default {DEFAULT_REQUESTS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests")
    args = parser.parse_args(argv)
    requests = args.requests or (QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS)
    with redis_server() as url:
        results = anyio.run(run, requests, url)
    report(results, requests, redis_missing=url is None)


if __name__ == "__main__":
    main()
