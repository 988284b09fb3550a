"""In-memory benchmark: eventbus against a no-bus floor, pyee and blinker.

What it measures, for N events (default 100,000) cycled from a pool of 1,000 pre-built
``OrderCreated`` events (three line items each, ``Decimal`` prices), every handler
doing trivial work (incrementing a counter):

- ``EventBus`` on the default ``InMemoryTransport`` with 1 and 3 background groups:
  end-to-end events/s (from the first ``publish()`` until ``await bus.drain()``
  returns), ``publish()`` p50/p99 (``time.perf_counter_ns`` around each await) and the
  peak RSS growth of the run;
- the same with ``mode="immediate"`` subscribers (they run inside ``publish()``);
- the floor: building the same pydantic event (``OrderCreated.model_validate`` of the
  same field values) and awaiting the handler(s) directly, no bus;
- for information, awaiting the handler on a pre-built event (the cost of the loop);
- pyee's ``AsyncIOEventEmitter.emit`` with 1 and 3 async handlers (end to end: emit
  all, then ``await emitter.wait_for_complete()``), latency per ``emit()`` call;
- blinker's ``Signal.send_async`` with 1 and 3 receivers (inline, no queue).

Each run of each variant happens in a fresh child process (this script with
``--child``), so that peak RSS figures do not mask each other: the growth is
``ru_maxrss`` after the run minus the current RSS just before it (``/proc/self/statm``;
the ``ru_maxrss`` high-water mark where that file is missing). The runs are interleaved
(one run of every variant, then the next round) and the table reports medians. Ratios
compare medians of this one invocation, so they carry over between machines better than
the absolute figures do. Every process runs ``anyio.run`` on the asyncio backend.

pyee and blinker are the optional ``bench`` dependency group; a missing one is reported
and its rows skipped. Run it with::

    make bench
    .venv/bin/python benchmarks/inmemory.py [--events N] [--repeat K] [--quick]

``--quick`` is a smoke run (5,000 events, one run per variant); docs/performance.md has
the figures of a full run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from time import perf_counter_ns
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from eventbus import Event, EventBus

POOL = 1_000
WARM_UP = 200
DEFAULT_EVENTS = 100_000
DEFAULT_REPEAT = 5
QUICK_EVENTS = 5_000
QUICK_REPEAT = 1
MIB = 1024.0  # KiB per MiB
NOISY_SPREAD = 0.25  # (max - min) / median of events/s above which the table warns

# Targets from the issue, as ratios measured in one invocation.
TARGET_BG_1 = 0.8  # background, 1 group: >= 0.8x the floor's events/s
TARGET_BG_3 = 0.5  # background, 3 groups: >= 0.5x the floor's events/s
TARGET_RSS_MIB = 30.0  # peak RSS growth for 100,000 events
TARGET_IMMEDIATE = 0.5  # immediate mode: >= 0.5x blinker's events/s


# -- the workload ----------------------------------------------------------------------


class LineItem(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(frozen=True)

    sku: str
    quantity: int
    unit_price: Decimal


class OrderCreated(Event):
    """A customer placed an order."""

    order_id: str
    customer_id: str
    currency: str
    items: tuple[LineItem, ...]
    total: Decimal


def order_fields(i: int) -> dict[str, Any]:
    """The field values of order number ``i``: three line items with Decimal prices."""
    items: list[dict[str, Any]] = [
        {"sku": f"sku-{(i * 7 + k) % 500:04d}", "quantity": 1 + (i + k) % 4,
         "unit_price": Decimal(f"{3 + (i * 13 + k * 5) % 97}.{(i + k) % 100:02d}")}
        for k in range(3)
    ]  # fmt: skip
    total = sum((item["quantity"] * item["unit_price"] for item in items), Decimal(0))
    return {
        "order_id": f"o-{i:06d}",
        "customer_id": f"c-{i % 97:04d}",
        "currency": "EUR",
        "items": items,
        "total": total,
    }


class Counter:
    """What the handlers increment."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def make_handler(counter: Counter) -> Callable[[OrderCreated], Awaitable[None]]:
    """A new handler (a distinct function each call) that counts the events it gets."""

    async def handle(event: OrderCreated) -> None:
        counter.n += 1

    return handle


@dataclass(frozen=True)
class Workload:
    """The pre-built events and, for the floor, their field values."""

    fields: list[dict[str, Any]]
    pool: list[OrderCreated]

    @classmethod
    def build(cls) -> Workload:
        fields = [order_fields(i) for i in range(POOL)]
        return cls(fields, [OrderCreated.model_validate(f) for f in fields])


# -- measuring one run -----------------------------------------------------------------


def current_rss_kib() -> int:
    """The resident set size now, in KiB (the peak so far where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return peak_rss_kib()
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    """The peak resident set size of this process, in KiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


class Meter:
    """Latency slots for ``n`` calls, the run's wall time and its peak RSS growth."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lat = array("q", bytes(8 * n))  # allocated before the RSS baseline
        self.rss_before = self.rss_peak = self.t0 = self.t1 = 0

    def start(self) -> None:
        gc.collect()
        self.rss_before = current_rss_kib()
        self.t0 = perf_counter_ns()

    def stop(self) -> None:
        self.t1 = perf_counter_ns()
        self.rss_peak = peak_rss_kib()

    def result(self, handled: int) -> dict[str, float]:
        lat = sorted(self.lat)
        return {
            "events_per_s": self.n * 1e9 / (self.t1 - self.t0),
            "p50_ns": float(lat[percentile_index(self.n, 0.50)]),
            "p99_ns": float(lat[percentile_index(self.n, 0.99)]),
            "rss_growth_kib": float(max(0, self.rss_peak - self.rss_before)),
            "handled": float(handled),
        }


def percentile_index(n: int, q: float) -> int:
    """The nearest-rank index of quantile ``q`` in ``n`` sorted values."""
    return max(0, min(n - 1, math.ceil(q * n) - 1))


# -- the variants: each returns how many handler calls ran ----------------------------

Runner = Callable[[Workload, int, Meter], Awaitable[int]]


async def run_floor(work: Workload, handlers: int, meter: Meter) -> int:
    """Build each event from its field values and await the handler(s): no bus."""
    counter, lat, fields = Counter(), meter.lat, work.fields
    calls = [make_handler(counter) for _ in range(handlers)]
    validate = OrderCreated.model_validate
    meter.start()
    for i in range(meter.n):
        t0 = perf_counter_ns()
        event = validate(fields[i % POOL])
        for call in calls:
            await call(event)
        lat[i] = perf_counter_ns() - t0
    meter.stop()
    return counter.n


async def run_direct(work: Workload, handlers: int, meter: Meter) -> int:
    """Await the handler(s) on a pre-built event: the loop alone, for information."""
    counter, lat, pool = Counter(), meter.lat, work.pool
    calls = [make_handler(counter) for _ in range(handlers)]
    meter.start()
    for i in range(meter.n):
        t0 = perf_counter_ns()
        event = pool[i % POOL]
        for call in calls:
            await call(event)
        lat[i] = perf_counter_ns() - t0
    meter.stop()
    return counter.n


async def run_bus(work: Workload, handlers: int, meter: Meter, mode: str) -> int:
    """Publish every event on an ``EventBus`` with ``handlers`` groups, then drain."""
    counter, lat, pool = Counter(), meter.lat, work.pool
    bus = EventBus()
    for g in range(handlers):
        bus.subscribe(group=f"group-{g}", mode=mode)(make_handler(counter))
    async with bus:
        publish = bus.publish
        meter.start()
        for i in range(meter.n):
            event = pool[i % POOL]
            t0 = perf_counter_ns()
            await publish(event)
            lat[i] = perf_counter_ns() - t0
        await bus.drain()
        meter.stop()
    return counter.n


async def run_background(work: Workload, handlers: int, meter: Meter) -> int:
    """Background subscribers, one group each."""
    return await run_bus(work, handlers, meter, "background")


async def run_immediate(work: Workload, handlers: int, meter: Meter) -> int:
    """Immediate subscribers: they run inside ``publish()``."""
    return await run_bus(work, handlers, meter, "immediate")


async def run_pyee(work: Workload, handlers: int, meter: Meter) -> int:
    """``AsyncIOEventEmitter.emit`` of every event, then wait for every handler call."""
    from pyee.asyncio import AsyncIOEventEmitter

    counter, lat, pool = Counter(), meter.lat, work.pool
    emitter = AsyncIOEventEmitter()
    for _ in range(handlers):
        emitter.add_listener("order_created", make_handler(counter))
    emit = emitter.emit
    meter.start()
    for i in range(meter.n):
        event = pool[i % POOL]
        t0 = perf_counter_ns()
        emit("order_created", event)
        lat[i] = perf_counter_ns() - t0
    await emitter.wait_for_complete()
    meter.stop()
    return counter.n


async def run_blinker(work: Workload, handlers: int, meter: Meter) -> int:
    """``Signal.send_async`` of every event: receivers are awaited inline."""
    from blinker import Signal

    counter, lat, pool = Counter(), meter.lat, work.pool
    signal = Signal()
    for _ in range(handlers):
        signal.connect(make_receiver(counter), weak=False)
    send = signal.send_async
    meter.start()
    for i in range(meter.n):
        event = pool[i % POOL]
        t0 = perf_counter_ns()
        await send(None, event=event)
        lat[i] = perf_counter_ns() - t0
    meter.stop()
    return counter.n


def make_receiver(counter: Counter) -> Callable[..., Awaitable[None]]:
    """A blinker receiver (sender first, the event as a keyword) that counts calls."""

    async def receive(sender: object, *, event: OrderCreated) -> None:
        counter.n += 1

    return receive


@dataclass(frozen=True)
class Variant:
    """One line of the table."""

    key: str
    label: str
    handlers: int
    run: Runner
    needs: str | None = None  # the optional package it measures


VARIANTS = (
    Variant("floor-1", "floor: build event, await 1 handler", 1, run_floor),
    Variant("floor-3", "floor: build event, await 3 handlers", 3, run_floor),
    Variant("direct-1", "info: pre-built event, await 1 handler", 1, run_direct),
    Variant("bus-1", "eventbus background, 1 group", 1, run_background),
    Variant("bus-3", "eventbus background, 3 groups", 3, run_background),
    Variant("pyee-1", "pyee emit, 1 handler", 1, run_pyee, "pyee"),
    Variant("pyee-3", "pyee emit, 3 handlers", 3, run_pyee, "pyee"),
    Variant("immediate-1", "eventbus immediate, 1 subscriber", 1, run_immediate),
    Variant("immediate-3", "eventbus immediate, 3 subscribers", 3, run_immediate),
    Variant("blinker-1", "blinker send_async, 1 receiver", 1, run_blinker, "blinker"),
    Variant("blinker-3", "blinker send_async, 3 receivers", 3, run_blinker, "blinker"),
)
BY_KEY = {v.key: v for v in VARIANTS}
# The reference each variant's events/s is compared with, besides the floor.
PEER = {
    "bus-1": "pyee-1",
    "bus-3": "pyee-3",
    "immediate-1": "blinker-1",
    "immediate-3": "blinker-3",
}


def child(key: str, events: int) -> None:
    """Measure one run of one variant in this process; print it as one JSON line."""
    variant = BY_KEY[key]
    work = Workload.build()

    async def main() -> dict[str, float]:
        await variant.run(work, variant.handlers, Meter(min(WARM_UP, events)))
        meter = Meter(events)
        handled = await variant.run(work, variant.handlers, meter)
        if handled != events * variant.handlers:
            raise SystemExit(
                f"{key}: {handled} handler calls, expected {events * variant.handlers}"
            )
        return meter.result(handled)

    print(json.dumps(anyio.run(main, backend="asyncio")))


# -- the parent: run the children, then report -----------------------------------------

Sample = dict[str, float]


@dataclass(frozen=True)
class Figures:
    """The medians of one variant's runs."""

    rate: float
    spread: float  # (max - min) / median of events/s
    p50_us: float
    p99_us: float
    rss_mib: float


def measure(variants: Sequence[Variant], events: int, repeat: int) -> dict[str, Figures]:
    """Run every variant ``repeat`` times, round by round; return the medians."""
    samples: dict[str, list[Sample]] = {v.key: [] for v in variants}
    for round_ in range(1, repeat + 1):
        print(f"round {round_}/{repeat}:", end="", flush=True)
        for variant in variants:
            samples[variant.key].append(run_child(variant.key, events))
            print(f" {variant.key}", end="", flush=True)
        print()
    return {key: summarize(runs) for key, runs in samples.items()}


def run_child(key: str, events: int) -> Sample:
    command = [sys.executable, os.path.abspath(__file__), "--child", key, "--events", str(events)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {key} run failed (exit status {done.returncode})")
    sample: Sample = json.loads(done.stdout.strip().splitlines()[-1])
    return sample


def summarize(runs: list[Sample]) -> Figures:
    rates = [r["events_per_s"] for r in runs]
    rate = statistics.median(rates)
    return Figures(
        rate=rate,
        spread=(max(rates) - min(rates)) / rate,
        p50_us=statistics.median(r["p50_ns"] for r in runs) / 1000,
        p99_us=statistics.median(r["p99_ns"] for r in runs) / 1000,
        rss_mib=statistics.median(r["rss_growth_kib"] for r in runs) / MIB,
    )


def floor_key(variant: Variant) -> str:
    return f"floor-{variant.handlers}"


def print_table(variants: Sequence[Variant], figures: dict[str, Figures]) -> None:
    head = (
        f"{'variant':<40} {'events/s':>9} {'spread':>7} {'us/event':>8} {'x floor':>7} "
        f"{'x peer':>15} {'p50 us':>7} {'p99 us':>8} {'RSS MiB':>7}"
    )
    print(head)
    print("-" * len(head))
    for v in variants:
        f = figures[v.key]
        floor = figures.get(floor_key(v))
        x_floor = f"{f.rate / floor.rate:.2f}x" if floor and not v.key.startswith("floor") else ""
        peer = PEER.get(v.key)
        x_peer = f"{f.rate / figures[peer].rate:.2f}x {peer}" if peer in figures else ""
        print(
            f"{v.label:<40} {f.rate:>9,.0f} {f.spread:>6.0%} {1e6 / f.rate:>8.2f} "
            f"{x_floor:>7} {x_peer:>15} {f.p50_us:>7.2f} {f.p99_us:>8.2f} {f.rss_mib:>7.1f}"
        )


Verdict = tuple[bool | None, str]  # (met, or None when not measured; the text)


def target_lines(figures: dict[str, Figures], events: int) -> list[Verdict]:
    """One verdict per target of the issue, from the medians of this invocation."""
    return [
        rate_target(figures, "bus-1", "floor-1", TARGET_BG_1, "background delivery, 1 group"),
        rate_target(figures, "bus-3", "floor-3", TARGET_BG_3, "background delivery, 3 groups"),
        *(p50_target(figures, groups) for groups in (1, 3)),
        *(rss_target(figures, groups, events) for groups in (1, 3)),
        *(
            rate_target(
                figures,
                f"immediate-{subs}",
                f"blinker-{subs}",
                TARGET_IMMEDIATE,
                f"immediate mode, {plural(subs, 'subscriber')}",
            )
            for subs in (1, 3)
        ),
    ]


def rate_target(
    figures: dict[str, Figures], key: str, ref: str, minimum: float, what: str
) -> Verdict:
    """events/s of ``key`` at least ``minimum`` times that of ``ref``."""
    if key not in figures or ref not in figures:
        return None, f"{what}: {ref} not measured"
    ratio = figures[key].rate / figures[ref].rate
    return ratio >= minimum, f"{what}: {ratio:.2f}x {ref} (target >= {minimum}x)"


def p50_target(figures: dict[str, Figures], groups: int) -> Verdict:
    """``publish()`` p50 no slower than pyee's ``emit()`` with as many handlers."""
    what = f"publish() p50, {plural(groups, 'group')}"
    pyee = figures.get(f"pyee-{groups}")
    if pyee is None:
        return None, f"{what}: pyee not measured"
    ours = figures[f"bus-{groups}"].p50_us
    return (
        ours <= pyee.p50_us,
        f"{what}: {ours:.2f} us vs pyee emit {pyee.p50_us:.2f} us (target <=)",
    )


def rss_target(figures: dict[str, Figures], groups: int, events: int) -> Verdict:
    """Peak RSS growth under the limit (the limit is set for 100,000 events)."""
    mib = figures[f"bus-{groups}"].rss_mib
    note = "" if events == DEFAULT_EVENTS else f"; the target is for {DEFAULT_EVENTS:,} events"
    text = (
        f"peak RSS growth, {plural(groups, 'group')}, {events:,} events: {mib:.1f} MiB "
        f"(target < {TARGET_RSS_MIB:.0f} MiB{note})"
    )
    return mib < TARGET_RSS_MIB, text


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_header(events: int, repeat: int) -> None:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    peers = ", ".join(
        f"{d} {version(d)}" for d in ("eventbus", "pydantic", "anyio", "pyee", "blinker")
    )
    print(f"eventbus in-memory benchmark: {events:,} events, {repeat} run(s) per variant")
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPU(s)")
    print(f"{peers}; asyncio backend; one child process per run")
    if hasattr(os, "getloadavg"):
        print(f"load average before the runs: {os.getloadavg()[0]:.2f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help=f"events per run (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--repeat", type=int, help=f"runs per variant (default {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few events, one run")
    parser.add_argument("--child", choices=sorted(BY_KEY), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.events)
        return
    print_header(args.events, args.repeat)
    missing = {v.needs for v in VARIANTS if v.needs and importlib.util.find_spec(v.needs) is None}
    for name in sorted(missing):
        print(f"{name} is not installed (pip install --group bench): skipping its rows")
    variants = [v for v in VARIANTS if v.needs not in missing]
    figures = measure(variants, args.events, args.repeat)
    print()
    print_table(variants, figures)
    print_notes(variants, figures)
    print("targets (ratios of this run's medians):")
    for met, text in target_lines(figures, args.events):
        status = "not measured" if met is None else "met" if met else "NOT MET"
        print(f"  [{status}] {text}")


def print_notes(variants: Sequence[Variant], figures: dict[str, Figures]) -> None:
    """What the columns mean, and a warning when the runs varied a lot."""
    print(
        "\nevents/s: first publish until every handler ran (medians; spread = (max - min) /"
        " median).\np50/p99 per call: await bus.publish(), pyee emit(), await send_async(); for"
        " the floor, build + await.\nRSS MiB: peak RSS growth of the run (ru_maxrss after,"
        " minus RSS before), own process.\n"
    )
    noisy = [v.key for v in variants if figures[v.key].spread > NOISY_SPREAD]
    if noisy:
        print(
            f"note: {', '.join(noisy)} varied by more than {NOISY_SPREAD:.0%} between runs; the"
            " machine was busy. Rerun on a quiet machine or with a larger --repeat.\n"
        )


if __name__ == "__main__":
    main()
