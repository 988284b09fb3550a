"""Redis benchmark: eventbus on Redis Streams against plain redis-py and FastStream.

Everything runs against a private ``redis-server`` that this script starts on a free
port of 127.0.0.1, in a temporary directory, with ``--save "" --appendonly no`` (no
persistence: the figures are throughput without disk writes), and stops at the end,
also after an error. The shared Redis of the machine is never touched.

The workload is N events (default 40,000) cycled from the pool of 1,000 pre-built
``OrderCreated`` events of ``benchmarks/inmemory.py`` (three line items, ``Decimal``
prices); every handler increments a counter. What it measures:

- **End to end**, one process: every event published with one awaited call while one
  consumer of one group runs in the same event loop; events/s from the first publish
  until the last event was handled and acknowledged, p50/p99 of the publish call, peak
  RSS growth. ``EventBus`` on ``RedisTransport``: ``await bus.publish(event)``, then
  ``await bus.drain()``. Plain redis-py asyncio: ``await client.xadd(stream,
  {"payload": event.model_dump_json()})`` with the raw consumer below. FastStream:
  ``await broker.publish(event, stream=...)`` with a ``StreamSub`` consumer group.
- **50 publisher tasks** (a busy web app), one awaited publish each, end to end:
  eventbus and redis-py.
- **Batches of 100**, publish only (until Redis acknowledged the last batch):
  ``bus.publish_many`` against a redis-py pipeline of 100 XADDs (and, for information,
  FastStream's ``publish(..., pipeline=)``).
- **Drain** of a pre-filled stream: another process first publishes the N events (with
  the batch calls above) while no consumer runs; then the worker starts and the clock
  runs until every entry is handled and acknowledged. The raw consumer reads with
  ``XREADGROUP COUNT 100``, validates each entry with ``model_validate_json`` and
  acknowledges each batch with one ``XACK``; the eventbus worker is an ``EventBus``
  with one subscriber and the transport's defaults (``prefetch=64``); FastStream's is
  a ``StreamSub(max_records=100)`` subscriber. The eventbus drain runs again with N/4
  events, to show whether the worker's memory follows the backlog.

Each run happens in a fresh child process (this script with ``--child``), after a
warm-up of 200 events and a ``FLUSHALL``; peak RSS growth is ``ru_maxrss`` after the run
minus the RSS just before it, as in ``benchmarks/inmemory.py``. The runs are interleaved
round by round and the table reports medians; the targets are ratios of medians of this
one invocation. FastStream is in the optional ``bench`` dependency group; when it is
missing its rows are skipped and said so. Run it with::

    .venv/bin/python benchmarks/redis_throughput.py [--events N] [--repeat K] [--quick]

It needs ``redis-server`` on PATH (or ``--redis-server PATH``). The children silence the
transport's warning that this Redis persists nothing. ``--quick`` is a smoke
run (4,000 events, one run per variant); docs/performance.md has the figures of a full
run. ``--cluster`` measures a private Redis Cluster instead (``cluster_throughput.py``).
``--retention SECONDS|none`` and ``--claim-timeout SECONDS`` set those options of
the eventbus rows' ``RedisTransport`` (trimming runs every quarter of the claim timeout),
to compare runs with and without trimming.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter_ns
from types import FrameType
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis

from eventbus import EventBus
from eventbus.transports.redis import RedisTransport
from inmemory import (
    MIB,
    NOISY_SPREAD,
    POOL,
    Counter,
    OrderCreated,
    Workload,
    current_rss_kib,
    make_handler,
    peak_rss_kib,
    percentile_index,
)

DEFAULT_EVENTS = 40_000
DEFAULT_REPEAT = 3
QUICK_EVENTS = 4_000
QUICK_REPEAT = 1
WARM_UP = 200
BATCH = 100  # events per pipeline, publish_many call and XREADGROUP of the raw consumer
TASKS = 50  # concurrent publishers of the "50 tasks" rows
GROUP = "bench"
STREAM = "raw:{OrderCreated}"  # the raw redis-py rows
FS_STREAM = "faststream:{OrderCreated}"
PREFIX = "bench"  # the eventbus rows: the stream is bench:{OrderCreated}
POLL = 0.001  # seconds between two looks at FastStream's progress
RSS_SLACK_MIB = 2.0  # allowed extra RSS growth of the drain with 4x the backlog

# Targets from the issue, as ratios of medians measured in one invocation.
TARGET_E2E = 0.9  # end to end, one awaited publish(): >= 0.9x raw single XADD
TARGET_MANY = 0.6  # publish_many(100): >= 0.6x a raw pipeline of 100 XADDs
TARGET_DRAIN = 0.5  # drain: >= 0.5x the raw consumer
TARGET_P50 = 1.2  # publish() p50 <= 1.2x a raw XADD's p50
TARGET_IDEMPOTENT = 0.75  # idempotent=True end to end: >= 0.75x a plain subscriber

Sample = dict[str, float]


# -- measuring one run -----------------------------------------------------------------


class Meter:
    """Latency slots for ``calls`` calls, the wall time of ``events`` events, peak RSS."""

    def __init__(self, events: int, calls: int) -> None:
        self.events = events
        self.lat = array("q", bytes(8 * calls))  # allocated before the RSS baseline
        self.rss_before = self.rss_peak = self.t0 = self.t1 = 0

    def start(self) -> None:
        gc.collect()
        self.rss_before = current_rss_kib()
        self.t0 = perf_counter_ns()

    def stop(self) -> None:
        self.t1 = perf_counter_ns()
        # ru_maxrss lags the current RSS by a few pages (per-CPU counters): take both
        self.rss_peak = max(peak_rss_kib(), current_rss_kib())

    def result(self, handled: int) -> Sample:
        sample = {
            "events_per_s": self.events * 1e9 / (self.t1 - self.t0),
            "rss_growth_kib": float(max(0, self.rss_peak - self.rss_before)),
            "rss_peak_kib": float(self.rss_peak),
            "handled": float(handled),
        }
        if self.lat:
            lat = sorted(self.lat)
            sample["p50_ns"] = float(lat[percentile_index(len(lat), 0.50)])
            sample["p99_ns"] = float(lat[percentile_index(len(lat), 0.99)])
        return sample


@dataclass(frozen=True)
class Setup:
    """What every run gets: the server's URL, the pre-built events, and the options of the
    ``RedisTransport`` of the eventbus rows (with the flags that set them, for a fill)."""

    url: str
    work: Workload
    options: dict[str, Any]
    flags: tuple[str, ...] = ()

    @property
    def pool(self) -> list[OrderCreated]:
        """The 1,000 events that the runs cycle through."""
        return self.work.pool


def time_limit(events: int) -> float:
    """Seconds one measured wait may take before the run fails (200 events/s at worst)."""
    return 60.0 + events / 200


def raw_client(url: str) -> Any:
    # redis-py types its commands for sync and async clients at once; Any keeps the
    # awaited results usable under mypy --strict (as eventbus's own transport does).
    client: Any = aioredis.Redis.from_url(url, decode_responses=False)
    return client


async def flush(url: str) -> None:
    """Empty the private server between runs."""
    client = raw_client(url)
    await client.flushall()
    await client.aclose()


def batches(pool: Sequence[OrderCreated], n: int) -> list[list[OrderCreated]]:
    """The ``n`` events of a run in batches of ``BATCH``, built before the clock starts."""
    return [[pool[i % POOL] for i in range(s, min(n, s + BATCH))] for s in range(0, n, BATCH)]


Publish = Callable[[OrderCreated], Awaitable[object]]


async def publish_all(
    publish: Publish, pool: Sequence[OrderCreated], meter: Meter, tasks: int
) -> None:
    """Publish ``meter.events`` events from ``tasks`` tasks, timing each call."""
    lat = meter.lat

    async def publisher(first: int) -> None:
        for i in range(first, meter.events, tasks):
            event = pool[i % POOL]
            t0 = perf_counter_ns()
            await publish(event)
            lat[i] = perf_counter_ns() - t0

    if tasks == 1:
        await publisher(0)
        return
    async with anyio.create_task_group() as tg:
        for first in range(tasks):
            tg.start_soon(publisher, first)


# -- plain redis-py ----------------------------------------------------------------------


async def raw_consume(client: Any, n: int, counter: Counter) -> None:
    """Read ``n`` entries in batches of 100, validate and handle each, XACK each batch."""
    handler, validate, acked = make_handler(counter), OrderCreated.model_validate_json, 0
    while acked < n:
        reply = await client.xreadgroup(GROUP, "raw-1", {STREAM: ">"}, count=BATCH, block=1000)
        for _stream, entries in reply:
            for _entry_id, fields in entries:
                await handler(validate(fields[b"payload"]))
            await client.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
            acked += len(entries)


async def e2e_raw(setup: Setup, meter: Meter, tasks: int) -> int:
    """One awaited XADD per event, the raw consumer in the same event loop."""
    counter, client = Counter(), raw_client(setup.url)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)

    async def xadd(event: OrderCreated) -> object:
        return await client.xadd(STREAM, {"payload": event.model_dump_json()})

    with anyio.fail_after(time_limit(meter.events)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(raw_consume, client, meter.events, counter)
            meter.start()
            await publish_all(xadd, setup.pool, meter, tasks)
        meter.stop()
    await client.aclose()
    return counter.n


async def fill_raw(setup: Setup, meter: Meter) -> int:
    """Pipelines of 100 XADDs, each awaited: publish only."""
    client, lat = raw_client(setup.url), meter.lat
    todo = batches(setup.pool, meter.events)
    meter.start()
    for b, batch in enumerate(todo):
        t0 = perf_counter_ns()
        pipe = client.pipeline(transaction=False)
        for event in batch:
            pipe.xadd(STREAM, {"payload": event.model_dump_json()})
        await pipe.execute()
        lat[b] = perf_counter_ns() - t0
    meter.stop()
    await client.aclose()
    return meter.events


async def drain_raw(setup: Setup, meter: Meter) -> int:
    """Create the group, then consume until every pre-filled entry is acknowledged."""
    counter, client = Counter(), raw_client(setup.url)
    with anyio.fail_after(time_limit(meter.events)):
        meter.start()
        await client.xgroup_create(STREAM, GROUP, id="0")
        await raw_consume(client, meter.events, counter)
        meter.stop()
    await client.aclose()
    return counter.n


# -- eventbus ----------------------------------------------------------------------------


def redis_bus(setup: Setup, counter: Counter | None, idempotent: bool = False) -> EventBus:
    """A bus on a ``RedisTransport`` (its defaults, but for ``--retention`` and
    ``--claim-timeout``); one subscriber when counting."""
    bus = EventBus(transport=RedisTransport(setup.url, prefix=PREFIX, **setup.options))
    if counter is not None:
        bus.subscribe(group=GROUP, idempotent=idempotent)(make_handler(counter))
    return bus


async def e2e_bus(setup: Setup, meter: Meter, tasks: int, idempotent: bool = False) -> int:
    """``await bus.publish()`` per event on the worker's own bus, then ``drain()``."""
    counter = Counter()
    async with redis_bus(setup, counter, idempotent) as bus:
        meter.start()
        await publish_all(bus.publish, setup.pool, meter, tasks)
        await bus.drain(timeout=time_limit(meter.events))
        meter.stop()
    return counter.n


async def fill_bus(setup: Setup, meter: Meter) -> int:
    """``publish_many`` of 100 events at a time on a bus without subscribers."""
    lat, todo = meter.lat, batches(setup.pool, meter.events)
    async with redis_bus(setup, None) as bus:
        meter.start()
        for b, batch in enumerate(todo):
            t0 = perf_counter_ns()
            await bus.publish_many(batch)
            lat[b] = perf_counter_ns() - t0
        meter.stop()
    return meter.events


async def drain_bus(setup: Setup, meter: Meter) -> int:
    """Start a worker bus, then ``drain()`` the pre-filled stream."""
    counter = Counter()
    bus = redis_bus(setup, counter)
    meter.start()
    async with bus:
        await bus.drain(timeout=time_limit(meter.events))
        meter.stop()
    return counter.n


# -- FastStream --------------------------------------------------------------------------


def fs_broker(setup: Setup, counter: Counter | None) -> Any:
    """A ``RedisBroker`` without per-message logging; a ``StreamSub`` group when counting."""
    from faststream.redis import RedisBroker, StreamSub

    # logger=None turns FastStream's per-message logging off, as its docs say; the
    # annotation of the parameter does not admit None, hence the untyped keywords.
    quiet: dict[str, Any] = {"logger": None}
    broker = RedisBroker(setup.url, **quiet)
    if counter is not None:
        sub = StreamSub(FS_STREAM, group=GROUP, consumer="fs-1", last_id="0", max_records=BATCH)
        broker.subscriber(stream=sub)(make_handler(counter))
    return broker


async def fs_done(setup: Setup, counter: Counter, n: int) -> None:
    """Wait until FastStream's handler saw ``n`` events and nothing is pending."""
    client = raw_client(setup.url)
    while counter.n < n or await fs_pending(client):  # noqa: ASYNC110 - no idle notification
        await anyio.sleep(POLL)
    await client.aclose()


async def fs_pending(client: Any) -> int:
    """Entries of FastStream's group that were delivered and not acknowledged yet."""
    reply = await client.xpending(FS_STREAM, GROUP)
    return int(reply["pending"])


async def e2e_fs(setup: Setup, meter: Meter, tasks: int) -> int:
    """``await broker.publish(event, stream=...)`` per event, a StreamSub consumer."""
    counter = Counter()
    broker = fs_broker(setup, counter)
    await broker.start()
    try:

        async def publish(event: OrderCreated) -> object:
            return await broker.publish(event, stream=FS_STREAM)

        with anyio.fail_after(time_limit(meter.events)):
            meter.start()
            await publish_all(publish, setup.pool, meter, tasks)
            await fs_done(setup, counter, meter.events)
            meter.stop()
    finally:
        await broker.stop()
    return counter.n


async def fill_fs(setup: Setup, meter: Meter) -> int:
    """``broker.publish(..., pipeline=)`` of 100 events per redis-py pipeline."""
    client, broker = raw_client(setup.url), fs_broker(setup, None)
    lat, todo = meter.lat, batches(setup.pool, meter.events)
    await broker.connect()
    meter.start()
    for b, batch in enumerate(todo):
        t0 = perf_counter_ns()
        pipe = client.pipeline(transaction=False)
        for event in batch:
            await broker.publish(event, stream=FS_STREAM, pipeline=pipe)
        await pipe.execute()
        lat[b] = perf_counter_ns() - t0
    meter.stop()
    await broker.stop()
    await client.aclose()
    return meter.events


async def drain_fs(setup: Setup, meter: Meter) -> int:
    """Start the broker (its group reads from the stream's start) until all is acked."""
    counter = Counter()
    broker = fs_broker(setup, counter)
    with anyio.fail_after(time_limit(meter.events)):
        meter.start()
        await broker.start()
        try:
            await fs_done(setup, counter, meter.events)
            meter.stop()
        finally:
            await broker.stop()
    return counter.n


# -- the jobs: one child process each ------------------------------------------------------

Run = Callable[[Setup, Meter], Awaitable[int]]
E2E = Callable[[Setup, Meter, int], Awaitable[int]]
FILLS: dict[str, Run] = {"raw": fill_raw, "bus": fill_bus, "fs": fill_fs}
DRAINS: dict[str, Run] = {"raw": drain_raw, "bus": drain_bus, "fs": drain_fs}


async def e2e_idempotent(setup: Setup, meter: Meter, tasks: int) -> int:
    """``e2e_bus`` with an ``idempotent=True`` subscriber (a record read and written per
    event)."""
    return await e2e_bus(setup, meter, tasks, idempotent=True)


E2ES: dict[str, E2E] = {"raw": e2e_raw, "bus": e2e_bus, "fs": e2e_fs, "idem": e2e_idempotent}


@dataclass(frozen=True)
class Job:
    """One child process: an end-to-end run, or a fill (in a grandchild) and a drain."""

    key: str
    kind: str  # "raw", "bus" or "fs"
    drain: bool
    tasks: int = 1  # end to end: concurrent publishers
    divisor: int = 1  # drain: runs N // divisor events
    rows: tuple[str, ...] = ()  # the table rows it measures, in the order of its samples

    @property
    def needs(self) -> str | None:
        return "faststream" if self.kind == "fs" else None


JOBS = (
    Job("raw-e2e", "raw", drain=False, rows=("raw-single",)),
    Job("bus-e2e", "bus", drain=False, rows=("bus-single",)),
    Job("idem-e2e", "idem", drain=False, rows=("idem-single",)),
    Job("fs-e2e", "fs", drain=False, rows=("fs-single",)),
    Job("raw-e2e-50", "raw", drain=False, tasks=TASKS, rows=("raw-50",)),
    Job("bus-e2e-50", "bus", drain=False, tasks=TASKS, rows=("bus-50",)),
    Job("raw-drain", "raw", drain=True, rows=("raw-pipe", "raw-drain")),
    Job("bus-drain", "bus", drain=True, rows=("bus-many", "bus-drain")),
    Job("fs-drain", "fs", drain=True, rows=("fs-pipe", "fs-drain")),
    Job("bus-drain-q", "bus", drain=True, divisor=4, rows=("", "bus-drain-q")),
)
BY_KEY = {job.key: job for job in JOBS}


def run_e2e(job: Job, setup: Setup, events: int) -> list[Sample]:
    """Warm up, flush, then one measured end-to-end run."""
    run = E2ES[job.kind]

    async def main() -> Sample:
        await flush(setup.url)
        await run(setup, Meter(WARM_UP, WARM_UP), job.tasks)
        await flush(setup.url)
        meter = Meter(events, events)
        return checked(job, meter, await run(setup, meter, job.tasks))

    return [anyio.run(main, backend="asyncio")]


def run_drain(job: Job, setup: Setup, events: int) -> list[Sample]:
    """Warm up, fill in another process, then drain the stream in this one."""
    n = max(1, events // job.divisor)

    async def warm_up() -> None:
        await flush(setup.url)
        await FILLS[job.kind](setup, Meter(WARM_UP, len(batches(setup.pool, WARM_UP))))
        await DRAINS[job.kind](setup, Meter(WARM_UP, 0))
        await flush(setup.url)

    async def drain() -> Sample:
        meter = Meter(n, 0)
        return checked(job, meter, await DRAINS[job.kind](setup, meter))

    anyio.run(warm_up, backend="asyncio")
    options = ["--fill", job.kind, "--events", str(n), *setup.flags]
    fill = run_process(options, setup.url, n, job.key)
    return [fill, anyio.run(drain, backend="asyncio")]


def run_fill(kind: str, setup: Setup, events: int) -> Sample:
    """Warm up, flush, then publish ``events`` events in batches: the drain's backlog."""

    async def main() -> Sample:
        await FILLS[kind](setup, Meter(WARM_UP, len(batches(setup.pool, WARM_UP))))
        await flush(setup.url)
        meter = Meter(events, len(batches(setup.pool, events)))
        return meter.result(await FILLS[kind](setup, meter))

    return anyio.run(main, backend="asyncio")


def checked(job: Job, meter: Meter, handled: int) -> Sample:
    if handled != meter.events:
        raise SystemExit(f"{job.key}: {handled} handler calls, expected {meter.events}")
    return meter.result(handled)


def child(args: argparse.Namespace) -> None:
    """Measure one job (or one fill) in this process; print its samples as JSON."""
    logging.getLogger("eventbus.redis").setLevel(logging.ERROR)  # "persists nothing"
    setup = Setup(args.redis_url, Workload.build(), transport_options(args), transport_flags(args))
    if args.fill:
        print(json.dumps(run_fill(args.fill, setup, args.events)))
        return
    job = BY_KEY[args.child]
    run = run_drain if job.drain else run_e2e
    samples = run(job, setup, args.events)
    print(json.dumps({row: s for row, s in zip(job.rows, samples, strict=True) if row}))


def run_process(options: list[str], url: str, events: int, what: str) -> Any:
    """Run this script with ``options`` in a child process; return its JSON line."""
    command = [sys.executable, os.path.abspath(__file__), *options, "--redis-url", url]
    limit = 3 * time_limit(events) + 60
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the {what} run took longer than {limit:.0f} s") from None
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {what} run failed (exit status {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the private Redis server -------------------------------------------------------------


@contextmanager
def private_redis(server: str) -> Iterator[str]:
    """Start ``redis-server`` on a free port of 127.0.0.1 in a temporary directory; stop
    it (and remove the directory) on the way out, error or not. Yields its URL."""
    with tempfile.TemporaryDirectory(prefix="eventbus-bench-") as workdir:
        for _attempt in range(5):  # another program may take the port in between
            port = free_port()
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--logfile", os.path.join(workdir, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                if wait_ready(proc, port):
                    yield f"redis://127.0.0.1:{port}/0"
                    return
            finally:
                stop(proc)
        raise SystemExit(f"{server} did not start; see its log in a rerun")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server answers PING (within 10 s); False when it exited."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server (SIGTERM; SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_version(url: str) -> str:
    client: Any = redis.Redis.from_url(url)
    version = str(client.info("server").get("redis_version", "?"))
    client.close()
    return version


# -- the parent: run the children, then report -------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    key: str
    label: str
    section: str
    ref: str | None = None  # the row its events/s is divided by


E2E_SECTION = "end to end: first publish until every event is handled and acked"
BATCH_SECTION = "publish only, batches of 100: until Redis acknowledged the last batch"
DRAIN_SECTION = "drain of a pre-filled stream: worker start until every entry is acked"
ROWS = (
    Row("raw-single", "redis-py: await xadd(), raw consumer", E2E_SECTION),
    Row("bus-single", "eventbus: await publish(), drain()", E2E_SECTION, "raw-single"),
    Row("idem-single", "eventbus, idempotent=True subscriber", E2E_SECTION, "bus-single"),
    Row("fs-single", "FastStream: await publish(), StreamSub", E2E_SECTION, "raw-single"),
    Row("raw-50", "redis-py: 50 tasks, await xadd()", E2E_SECTION),
    Row("bus-50", "eventbus: 50 tasks, await publish()", E2E_SECTION, "raw-50"),
    Row("raw-pipe", "redis-py: pipeline of 100 xadd()", BATCH_SECTION),
    Row("bus-many", "eventbus: publish_many(100 events)", BATCH_SECTION, "raw-pipe"),
    Row("fs-pipe", "info: FastStream publish(pipeline=) x100", BATCH_SECTION, "raw-pipe"),
    Row("raw-drain", "redis-py: XREADGROUP 100, validate, XACK", DRAIN_SECTION),
    Row("bus-drain", "eventbus worker (default prefetch)", DRAIN_SECTION, "raw-drain"),
    Row("fs-drain", "FastStream StreamSub(max_records=100)", DRAIN_SECTION, "raw-drain"),
    Row("bus-drain-q", "eventbus worker, N/4 events (for RSS)", DRAIN_SECTION),
)


@dataclass(frozen=True)
class Figures:
    """The medians of one row's runs."""

    rate: float
    spread: float  # (max - min) / median of events/s
    p50_us: float | None
    p99_us: float | None
    rss_mib: float  # peak growth during the run
    peak_mib: float  # the process's peak RSS
    runs: int


def measure(
    jobs: Sequence[Job], url: str, events: int, repeat: int, flags: Sequence[str] = ()
) -> dict[str, Figures]:
    """Run every job ``repeat`` times, round by round; return the medians per row."""
    samples: dict[str, list[Sample]] = {}
    for round_ in range(1, repeat + 1):
        print(f"round {round_}/{repeat}:", end="", flush=True)
        for job in jobs:
            options = ["--child", job.key, "--events", str(events), *flags]
            out = run_process(options, url, events, job.key)
            for row, sample in out.items():
                samples.setdefault(row, []).append(sample)
            print(f" {job.key}", end="", flush=True)
        print()
    return {row: summarize(runs) for row, runs in samples.items()}


def summarize(runs: list[Sample]) -> Figures:
    rates = [r["events_per_s"] for r in runs]
    rate = statistics.median(rates)

    def median_us(key: str) -> float | None:
        values = [r[key] for r in runs if key in r]
        return statistics.median(values) / 1000 if values else None

    return Figures(
        rate=rate,
        spread=(max(rates) - min(rates)) / rate,
        p50_us=median_us("p50_ns"),
        p99_us=median_us("p99_ns"),
        rss_mib=statistics.median(r["rss_growth_kib"] for r in runs) / MIB,
        peak_mib=statistics.median(r["rss_peak_kib"] for r in runs) / MIB,
        runs=len(runs),
    )


def print_table(figures: dict[str, Figures]) -> None:
    head = (
        f"{'variant':<42} {'events/s':>9} {'spread':>7} {'us/event':>8} {'x ref':>17} "
        f"{'p50 us':>8} {'p99 us':>8} {'RSS +MiB':>8} {'peak MiB':>8}"
    )
    print(head)
    section = ""
    for row in ROWS:
        f = figures.get(row.key)
        if f is None:
            continue
        if row.section != section:
            section = row.section
            print(f"-- {section} ".ljust(len(head), "-"))
        ref = figures.get(row.ref) if row.ref else None
        x_ref = f"{f.rate / ref.rate:.2f}x {row.ref}" if ref else ""
        print(
            f"{row.label:<42} {f.rate:>9,.0f} {f.spread:>6.0%} {1e6 / f.rate:>8.1f} "
            f"{x_ref:>17} {us(f.p50_us):>8} {us(f.p99_us):>8} {f.rss_mib:>8.1f} {f.peak_mib:>8.1f}"
        )


def us(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


Verdict = tuple[bool | None, str]  # (met, or None when not measured; the text)


def target_lines(figures: dict[str, Figures], events: int) -> list[Verdict]:
    """One verdict per target of the issue, from the medians of this invocation."""
    return [
        rate_target(figures, "bus-single", "raw-single", TARGET_E2E,
                    "end to end, one awaited publish() per event"),
        rate_target(figures, "idem-single", "bus-single", TARGET_IDEMPOTENT,
                    "end to end with an idempotent=True subscriber, against a plain one"),
        rate_target(figures, "bus-many", "raw-pipe", TARGET_MANY,
                    "publish_many(100) against a pipeline of 100 XADDs"),
        rate_target(figures, "bus-drain", "raw-drain", TARGET_DRAIN,
                    "drain against the raw consumer"),
        p50_target(figures),
        rss_target(figures, events),
    ]  # fmt: skip


def rate_target(
    figures: dict[str, Figures], key: str, ref: str, minimum: float, what: str
) -> Verdict:
    """events/s of ``key`` at least ``minimum`` times that of ``ref``."""
    if key not in figures or ref not in figures:
        return None, f"{what}: not measured"
    ratio = figures[key].rate / figures[ref].rate
    return ratio >= minimum, f"{what}: {ratio:.2f}x {ref} (target >= {minimum}x)"


def p50_target(figures: dict[str, Figures]) -> Verdict:
    """``publish()`` p50 at most 1.2 times a raw XADD's p50 (both end to end)."""
    ours, raw = figures["bus-single"].p50_us, figures["raw-single"].p50_us
    assert ours is not None
    assert raw is not None
    ratio = ours / raw
    return ratio <= TARGET_P50, (
        f"publish() p50: {ours:.0f} us vs xadd() {raw:.0f} us = {ratio:.2f}x "
        f"(target <= {TARGET_P50}x)"
    )


def rss_target(figures: dict[str, Figures], events: int) -> Verdict:
    """The drain's peak RSS growth does not follow the backlog (N against N/4)."""
    full, quarter = figures["bus-drain"].rss_mib, figures["bus-drain-q"].rss_mib
    return full <= quarter + RSS_SLACK_MIB, (
        f"worker RSS growth, drain of {events:,} vs {max(1, events // 4):,} events: "
        f"{full:.1f} vs {quarter:.1f} MiB (target: at most {RSS_SLACK_MIB:.0f} MiB more)"
    )


def print_header(events: int, repeat: int, url: str, options: dict[str, Any]) -> None:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    dists = ("eventbus", "redis", "hiredis", "pydantic", "anyio", "faststream")
    print(f"eventbus Redis benchmark: {events:,} events, {repeat} run(s) per variant")
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPU(s)")
    print(", ".join(f"{d} {version(d)}" for d in dists) + "; asyncio backend")
    print(
        f"private redis-server {server_version(url)} on {url.split('//')[1].split('/')[0]}"
        ' (--save "" --appendonly no: no persistence); one child process per run'
    )
    if options:
        print(
            "RedisTransport of the eventbus rows: "
            + ", ".join(f"{k}={v}" for k, v in options.items())
        )
    if hasattr(os, "getloadavg"):
        print(f"load average before the runs: {os.getloadavg()[0]:.2f}")


def print_notes(figures: dict[str, Figures]) -> None:
    """What the columns mean, and a warning when the runs varied a lot."""
    print(
        "\nevents/s: medians; spread = (max - min) / median. x ref: events/s over the row"
        " named.\np50/p99 per call: one publish (end to end), one batch of 100 (batches);"
        " drains have none.\nRSS +MiB: peak RSS growth of the run (ru_maxrss after, minus"
        " RSS before); peak MiB: the process's\npeak RSS (interpreter and imports included)."
        " Every run has its own process.\n"
    )
    noisy = [key for key, f in figures.items() if f.spread > NOISY_SPREAD]
    if noisy:
        print(
            f"note: {', '.join(noisy)} varied by more than {NOISY_SPREAD:.0%} between runs; the"
            " machine was busy. Rerun on a quiet machine or with a larger --repeat.\n"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help=f"events per run (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--repeat", type=int, help=f"runs per variant (default {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few events, one run")
    parser.add_argument("--redis-server", default="redis-server", help="the server binary")
    parser.add_argument(
        "--retention",
        help="RedisTransport(retention=...) of the eventbus rows: seconds, or 'none' to "
        "trim nothing (default: the transport's)",
    )
    parser.add_argument(
        "--claim-timeout",
        type=float,
        help="RedisTransport(claim_timeout=...) of the eventbus rows; trimming runs every "
        "quarter of it (default: the transport's)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="measure a private Redis Cluster against a single server instead "
        "(benchmarks/cluster_throughput.py)",
    )
    parser.add_argument("--child", choices=sorted(BY_KEY), help=argparse.SUPPRESS)
    parser.add_argument("--fill", choices=sorted(FILLS), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be >= 1")
    try:
        transport_options(args)
    except ValueError:
        parser.error("--retention takes a number of seconds or 'none'")
    return args


def transport_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RedisTransport`` options that the command line sets."""
    options: dict[str, Any] = {}
    if args.retention is not None:
        options["retention"] = None if args.retention == "none" else float(args.retention)
    if args.claim_timeout is not None:
        options["claim_timeout"] = args.claim_timeout
    return options


def transport_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags that set those options, to pass on to a child process."""
    flags: tuple[str, ...] = ()
    if args.retention is not None:
        flags += ("--retention", args.retention)
    if args.claim_timeout is not None:
        flags += ("--claim-timeout", repr(args.claim_timeout))
    return flags


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child or args.fill:
        child(args)
        return
    server = shutil.which(args.redis_server)
    if server is None:
        raise SystemExit(f"{args.redis_server} not found: install Redis (apt install redis-server)")
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # so that the server is stopped
    if args.cluster:
        from cluster_throughput import run_cluster_benchmark  # beside this script

        with private_redis(server) as url:
            run_cluster_benchmark(url, args.events, args.repeat)
        return
    jobs = [job for job in JOBS if job.needs is None or importlib.util.find_spec(job.needs)]
    with private_redis(server) as url:
        print_header(args.events, args.repeat, url, transport_options(args))
        if len(jobs) < len(JOBS):
            print("faststream is not installed (pip install --group bench): skipping its rows")
        figures = measure(jobs, url, args.events, args.repeat, transport_flags(args))
    print()
    print_table(figures)
    print_notes(figures)
    print("targets (ratios of this run's medians):")
    for met, text in target_lines(figures, args.events):
        status = "not measured" if met is None else "met" if met else "NOT MET"
        print(f"  [{status}] {text}")


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
