"""What a worker that reads many idle event types costs Redis: connections, commands per
second while nothing happens, and how long a first event after a quiet spell waits.

One worker (one bus) subscribes one group to ``--types`` event types (default 500) and
sits idle; nothing else uses the server. Measured on a private single server, and on a
private cluster of three masters (no replicas), both keeping nothing on disk:

- **connections**: the clients the servers count, the benchmark's own left out, once
  the worker has been idle for three ``block`` periods;
- **idle commands/s**: the commands the servers processed over ``--window`` seconds of
  idleness (``INFO stats``; the commands a script runs count), the benchmark's own
  ``INFO`` calls left out, and the CPU the servers used meanwhile (% of one core, all
  servers together);
- **first event**: the median time from ``publish()`` until the handler runs, for an
  event of a type that was idle (``--samples`` events, each after about a quiet
  second, at a random phase of the cluster's polls).

On the cluster the worker runs once per ``--idle-poll`` value: by default idle
subscriptions polled (``idle_poll=0.05``, the default) and each subscription on a
connection of its own (``none``). Run it from the repository's root::

    .venv/bin/python benchmarks/idle_connections.py [--types N] [--window S]
        [--idle-poll 0.05 0.2 none]
"""

from __future__ import annotations

import argparse
import functools
import operator
import random
import secrets
import shutil
import statistics
import sys
import tempfile
from inspect import signature
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the server helpers of the tests are beside benchmarks/
    sys.path.insert(0, str(ROOT))

from eventbus import Event, EventBus  # noqa: E402 (after the path set-up above)
from eventbus.transports.redis import RedisTransport  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BLOCK = 1.0  # the transport's default


def event_types(count: int) -> list[type[Event]]:
    """``count`` event types with fresh names."""
    tag = secrets.token_hex(3)
    fields = {"__annotations__": {"n": int}, "__module__": __name__}
    return [type(f"Quiet{tag}N{i}", (Event,), dict(fields)) for i in range(count)]


async def counts(servers: list[Any]) -> tuple[int, int, float]:
    """(connections, commands processed, CPU seconds used) so far over ``servers``, our
    own connection left out. Commands run by scripts count, as Redis counts them."""
    clients = commands = 0
    cpu = 0.0
    for server in servers:
        info = await server.info()
        clients += int(info["connected_clients"]) - 1
        commands += int(info["total_commands_processed"])
        cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return clients, commands, cpu


async def measure(transport: RedisTransport, servers: list[Any], args: Any) -> dict[str, float]:
    """Start a worker on ``transport``, let it idle, and take the three figures."""
    types = event_types(args.types)
    handled: dict[int, tuple[float, anyio.Event]] = {}
    bus = EventBus(transport=transport)

    async def handle(event: Event) -> None:
        _, done = handled[event.n]  # type: ignore[attr-defined]
        handled[event.n] = (anyio.current_time(), done)  # type: ignore[attr-defined]
        done.set()

    handle.__annotations__ = {"event": functools.reduce(operator.or_, types), "return": None}
    bus.subscribe(group="quiet")(handle)
    async with bus:
        await anyio.sleep(3 * BLOCK)  # the subscriptions settle (this is what is measured)
        _, before, cpu_before = await counts(servers)
        await anyio.sleep(args.window)
        connections, after, cpu_after = await counts(servers)
        idle_rate = (after - before - 2 * len(servers)) / args.window
        idle_cpu = (cpu_after - cpu_before) / args.window * 100
        waits = []
        for sample in range(args.samples):
            await anyio.sleep(random.uniform(0.75, 1.25))  # quiet, at a random phase
            done = anyio.Event()
            handled[sample] = (0.0, done)
            sent = anyio.current_time()
            await bus.publish(types[(sample * 37) % len(types)](n=sample))
            with anyio.fail_after(30):
                await done.wait()
            waits.append(handled[sample][0] - sent)
    return {
        "connections": connections,
        "idle commands/s": idle_rate,
        "Redis CPU %": idle_cpu,
        "first event p50 ms": statistics.median(waits) * 1000,
        "first event max ms": max(waits) * 1000,
    }


def report(name: str, figures: dict[str, float]) -> None:
    """One line of figures."""
    cells = ", ".join(f"{key} {value:,.1f}" for key, value in figures.items())
    print(f"{name:<34} {cells}", flush=True)


async def main(args: Any) -> None:
    """Run the worker on a single server, then on a cluster, and print the figures."""
    work = Path(tempfile.mkdtemp(prefix="eventbus-idle-"))
    server = RedisServer(work / "single", appendonly=False)
    (work / "single").mkdir()
    server.start()
    cluster = RedisCluster(work / "cluster", replicas=0, appendonly=False)
    cluster.start()
    try:
        print(f"{args.types} idle event types, one group, one worker; {args.window} s window")
        single = [aioredis.Redis.from_url(server.url)]
        report("single server", await measure(RedisTransport(server.url), single, args))
        masters = [aioredis.Redis(port=node.port) for node in cluster.masters()]
        known = "idle_poll" in signature(RedisTransport).parameters
        polls = args.idle_poll if known else [None]
        for poll in polls:  # an older eventbus without the option: one connection each
            options = {"idle_poll": poll} if known else {}
            transport = RedisTransport(cluster.url, cluster=True, **options)  # type: ignore[arg-type]
            report(f"cluster, idle_poll={poll}", await measure(transport, masters, args))
        for client in [*single, *masters]:
            await client.aclose()
    finally:
        cluster.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", type=int, default=500)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument(
        "--idle-poll",
        type=lambda text: None if text == "none" else float(text),
        nargs="+",
        default=[0.05, None],
        help="idle_poll values for the cluster runs ('none': a connection each)",
    )
    anyio.run(main, parser.parse_args())
