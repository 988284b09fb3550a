"""Redis Cluster benchmark (``redis_throughput.py --cluster``): eventbus on a private
cluster of three masters and three replicas against a private single server, in the same
run, and a hot event type spread over partitions against the same type unpartitioned.

Both set-ups keep nothing on disk (``--appendonly no``, ``--save ""``), on loopback. The
workload is the 1,000 pre-built ``OrderCreated`` events of ``benchmarks/inmemory.py``;
every handler counts. Each run is in this process, on a key prefix of its own; the
variants are interleaved round by round and the table gives medians:

- **end to end**: one awaited ``publish()`` per event while one subscriber of one group
  runs on the same bus; events/s from the first publish until ``drain()`` returns. On
  the single server, on the cluster, on a cluster of three masters without replicas
  (what the transport costs, without the replicas' work), and on the cluster with
  ``replicas=1`` (each publish waits for a replica: ``WAIT``).
- **drain**: the events first go in with ``publish_many`` (batches of 100), then a worker
  starts and the clock runs until every entry is handled and acknowledged.
- **hot event, 50 publishers**: 50 tasks publish one event type at once while a
  subscriber (``concurrency=8``) handles it: unpartitioned (one stream, one master) and
  with ``partitions=8`` (eight streams over the three masters), on the cluster.

Targets: the cluster end to end and drain at least 0.8x the single server. Run it from
the repository's root::

    .venv/bin/python benchmarks/redis_throughput.py --cluster [--events N] [--repeat K]
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the cluster helper of the tests is beside benchmarks/
    sys.path.insert(0, str(ROOT))

from eventbus import Event, EventBus  # noqa: E402 (after the path set-up above)
from eventbus.transports.redis import RedisTransport  # noqa: E402
from inmemory import OrderCreated, Workload  # noqa: E402 (beside this script)
from tests.redis_cluster import RedisCluster  # noqa: E402

__all__ = ["run_cluster_benchmark"]

TASKS = 50
BATCH = 100
TARGET_CLUSTER = 0.8  # cluster >= 0.8x the single server, end to end and drain


class HotOrder(OrderCreated, name="HotOrder"):
    """The hot event type, in one stream."""


class HotOrderSpread(OrderCreated, name="HotOrderSpread", partitions=8):
    """The same, over eight partitions."""


Run = Callable[[], Awaitable[float]]


def transport(url: str, cluster: bool, replicas: int = 0) -> RedisTransport:
    """A transport on a fresh key prefix."""
    prefix = f"c{secrets.token_hex(4)}"
    return RedisTransport(url, prefix=prefix, cluster=cluster, replicas=replicas)


async def end_to_end(url: str, cluster: bool, events: Sequence[Event], replicas: int = 0) -> float:
    """Events/s: one awaited publish per event, one subscriber, until drained."""
    bus, handled = EventBus(transport=transport(url, cluster, replicas)), [0]

    @bus.subscribe(group="bench")
    async def count(event: OrderCreated) -> None:
        handled[0] += 1

    async with bus:
        started = time.perf_counter()
        for event in events:
            await bus.publish(event)
        await bus.drain(timeout=600)
        elapsed = time.perf_counter() - started
    assert handled[0] == len(events), handled
    return len(events) / elapsed


async def drain(url: str, cluster: bool, events: Sequence[Event]) -> float:
    """Events/s of a worker draining a pre-filled stream."""
    chosen = transport(url, cluster)
    async with EventBus(transport=chosen) as publisher:
        for start in range(0, len(events), BATCH):
            await publisher.publish_many(events[start : start + BATCH])
    bus, handled = EventBus(transport=chosen), [0]

    @bus.subscribe(group="bench")
    async def count(event: OrderCreated) -> None:
        handled[0] += 1

    started = time.perf_counter()
    async with bus:
        await bus.drain(timeout=600)
        elapsed = time.perf_counter() - started
    assert handled[0] == len(events), handled
    return len(events) / elapsed


async def hot(url: str, events: Sequence[Event], spread: bool) -> float:
    """Events/s: 50 tasks publish ``events`` (``HotOrderSpread`` when ``spread``, else
    ``HotOrder``) while a subscriber with ``concurrency=8`` handles them."""
    bus, handled = EventBus(transport=transport(url, cluster=True)), [0]

    async def count_one(event: HotOrder) -> None:
        handled[0] += 1

    async def count_spread(event: HotOrderSpread) -> None:
        handled[0] += 1

    bus.subscribe(group="bench", concurrency=8)(count_spread if spread else count_one)

    async def publisher(first: int) -> None:
        for index in range(first, len(events), TASKS):
            await bus.publish(events[index])

    async with bus:
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for first in range(TASKS):
                tasks.start_soon(publisher, first)
        await bus.drain(timeout=600)
        elapsed = time.perf_counter() - started
    assert handled[0] == len(events), handled
    return len(events) / elapsed


def cycle(pool: Sequence[OrderCreated], count: int, as_type: type[Event]) -> list[Event]:
    """``count`` events of ``as_type`` cycled from ``pool``, built before any clock."""
    same = [as_type.model_validate(e.model_dump()) for e in pool]
    return [same[i % len(same)] for i in range(count)]


async def measure(
    single: str, cluster: str, bare: str, events: int, repeat: int
) -> dict[str, list[float]]:
    """Every variant, ``repeat`` rounds, interleaved; events/s of each run. ``bare`` is a
    cluster of three masters without replicas."""
    pool = Workload.build().pool
    plain = cycle(pool, events, OrderCreated)
    hot_one, hot_spread = cycle(pool, events, HotOrder), cycle(pool, events, HotOrderSpread)
    variants: dict[str, Run] = {
        "end to end, single server": lambda: end_to_end(single, False, plain),
        "end to end, cluster": lambda: end_to_end(cluster, True, plain),
        "end to end, cluster without replicas": lambda: end_to_end(bare, True, plain),
        "end to end, cluster, replicas=1": lambda: end_to_end(cluster, True, plain, 1),
        "drain, single server": lambda: drain(single, False, plain),
        "drain, cluster": lambda: drain(cluster, True, plain),
        "drain, cluster without replicas": lambda: drain(bare, True, plain),
        "hot event, 50 publishers, 1 stream": lambda: hot(cluster, hot_one, False),
        "hot event, 50 publishers, 8 partitions": lambda: hot(cluster, hot_spread, True),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(1, repeat + 1):
        print(f"round {round_}/{repeat}:", end="", file=sys.stderr, flush=True)
        for name, run in variants.items():
            print(f" {name.split(',')[0]}", end="", file=sys.stderr, flush=True)
            rates[name].append(await run())
        print(file=sys.stderr)
    return rates


def report(rates: dict[str, list[float]], events: int, repeat: int) -> None:
    """The table, the ratios and the targets."""
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"Redis Cluster benchmark: {events:,} events per run, {repeat} run(s) per variant")
    print("cluster: 3 masters, 3 replicas (and 3 masters alone); single server: one")
    print("redis-server; all on loopback, no persistence, on this machine's CPUs\n")
    print(f"{'variant':<42}{'events/s':>10}{'spread':>8}")
    for name, values in rates.items():
        spread = (max(values) - min(values)) / median[name] if median[name] else 0.0
        print(f"{name:<42}{median[name]:>10,.0f}{spread:>8.0%}")
    e2e = median["end to end, cluster"] / median["end to end, single server"]
    drained = median["drain, cluster"] / median["drain, single server"]
    bare_e2e = median["end to end, cluster without replicas"] / median["end to end, single server"]
    bare_drain = median["drain, cluster without replicas"] / median["drain, single server"]
    waited = median["end to end, cluster, replicas=1"] / median["end to end, cluster"]
    spread = (
        median["hot event, 50 publishers, 8 partitions"]
        / median["hot event, 50 publishers, 1 stream"]
    )
    print()
    print(f"cluster / single server, end to end: {e2e:.2f}x ({bare_e2e:.2f}x without replicas)")
    print(
        f"cluster / single server, drain:      {drained:.2f}x ({bare_drain:.2f}x without replicas)"
    )
    print(f"replicas=1 / none, cluster end to end: {waited:.2f}x")
    print(f"8 partitions / 1 stream, hot event:  {spread:.2f}x")
    print("\ntargets (ratios of this run's medians):")
    for what, ratio in (
        ("end to end", e2e),
        ("drain", drained),
        ("end to end, without replicas", bare_e2e),
        ("drain, without replicas", bare_drain),
    ):
        met = "met" if ratio >= TARGET_CLUSTER else "NOT MET"
        print(f"  [{met}] cluster {what}: {ratio:.2f}x the single server (target >= 0.8x)")


def run_cluster_benchmark(single_url: str, events: int, repeat: int) -> None:
    """Start the private cluster, measure against ``single_url``, print, stop."""
    if shutil.which("redis-cli") is None:
        raise SystemExit("redis-cli not found: it comes with redis-server")
    with tempfile.TemporaryDirectory(prefix="eventbus-cluster-bench-") as workdir:
        cluster = RedisCluster(Path(workdir) / "replicated", appendonly=False)
        bare = RedisCluster(Path(workdir) / "bare", replicas=0, appendonly=False)
        try:
            cluster.start()
            bare.start()
            rates = anyio.run(measure, single_url, cluster.url, bare.url, events, repeat)
        finally:
            cluster.stop()
            bare.stop()
    report(rates, events, repeat)
