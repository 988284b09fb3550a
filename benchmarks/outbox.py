"""Outbox benchmark: what writing an event in the order's transaction costs, and how
fast the relay moves committed rows to Redis.

Everything runs in this process against a private ``redis-server`` (started on a free
port, stopped at the end; see ``order_latency.py``) and a database of its own: a
PostgreSQL database created on the machine's server (``EVENTBUS_BENCH_POSTGRES``,
default ``postgresql://postgres@127.0.0.1:5432``) and dropped at the end, and a SQLite
file in a temporary directory. What it measures, per database:

- **Save latency**: one transaction per order, one at a time, timed around it with
  ``time.perf_counter``: *floor*: ``INSERT`` the order and commit; *outbox*: the same
  plus ``await bus.publish(OrderCreated(...), transaction=conn)``, while the bus's relay
  publishes the committed rows to Redis in the background of the same event loop. The
  two variants alternate in rounds; p50/p99 of each and the p50 difference. Target on
  PostgreSQL: within 2 ms p50 of the floor.
- **Relay throughput**: N rows (default 20,000) committed beforehand by a bus whose
  relay is off; then a bus with the relay on hands them all to Redis (``drain()``
  flushes the outbox); events/s from its start to the last row deleted. Target: at
  least 5,000 events/s.

Run it from the repository's root::

    .venv/bin/python benchmarks/outbox.py [--orders N] [--rows N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Column, MetaData, Numeric, String, Table
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventbus import Event, EventBus
from eventbus.outbox import Outbox
from eventbus.transports.redis import RedisTransport
from order_latency import postgres, redis_server  # beside this script

TARGET_LATENCY_MS = 2.0
TARGET_RELAY_PER_S = 5_000
ROUNDS = 5


class OrderCreated(Event):
    """The event each order publishes."""

    order_id: str
    total: Decimal


def orders_table() -> Table:
    """The application's table."""
    return Table(
        "bench_orders",
        MetaData(),
        Column("order_id", String(40), primary_key=True),
        Column("total", Numeric(10, 2), nullable=False),
    )


async def save(engine: AsyncEngine, orders: Table, bus: EventBus | None) -> float:
    """One order in one transaction (with its event when ``bus``); seconds taken."""
    order_id = secrets.token_hex(8)
    started = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(orders.insert().values(order_id=order_id, total=Decimal("9.90")))
        if bus is not None:
            event = OrderCreated(order_id=order_id, total=Decimal("9.90"))
            await bus.publish(event, transaction=conn)
    return time.perf_counter() - started


async def latency(engine: AsyncEngine, redis_url: str, count: int) -> dict[str, list[float]]:
    """Floor and outbox saves, alternating in rounds."""
    orders = orders_table()
    async with engine.begin() as conn:
        await conn.run_sync(orders.create)
    transport = RedisTransport(redis_url, prefix=f"bench-{secrets.token_hex(3)}")
    times: dict[str, list[float]] = {"floor": [], "outbox": []}
    async with EventBus(transport=transport, outbox=Outbox(engine)) as bus:
        for _ in range(50):  # warm-up
            await save(engine, orders, bus)
        per_round = max(1, count // ROUNDS)
        for _ in range(ROUNDS):
            times["floor"] += [await save(engine, orders, None) for _ in range(per_round)]
            times["outbox"] += [await save(engine, orders, bus) for _ in range(per_round)]
        await bus.drain(timeout=60)
    return times


async def relay_rate(engine: AsyncEngine, redis_url: str, rows: int) -> float:
    """Rows committed beforehand, then relayed: events per second."""
    transport = RedisTransport(redis_url, prefix=f"bench-{secrets.token_hex(3)}")
    outbox = Outbox(engine, table="relay_outbox", relay=False)
    async with EventBus(transport=transport, outbox=outbox) as writer:
        for start in range(0, rows, 500):
            async with engine.begin() as conn:
                events = [
                    OrderCreated(order_id=f"o-{i}", total=Decimal("9.90"))
                    for i in range(start, min(rows, start + 500))
                ]
                await writer.publish_many(events, transaction=conn)
    relaying = Outbox(engine, table="relay_outbox", poll_interval=60)
    started = time.perf_counter()
    async with EventBus(transport=transport, outbox=relaying) as bus:
        await bus.drain(timeout=600)
        elapsed = time.perf_counter() - started
        left = await relaying.pending()
    if left:
        raise RuntimeError(f"{left} rows were left in the outbox")
    return rows / elapsed


def ms(values: list[float], p: int) -> float:
    """The p-th percentile in milliseconds."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] * 1000


async def measure(name: str, url: str, redis_url: str, orders: int, rows: int) -> None:
    """Both measurements on one database; print their lines."""
    options = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    engine = create_async_engine(url, **options)
    try:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        times = await latency(engine, redis_url, orders)
        rate = await relay_rate(engine, redis_url, rows)
    finally:
        await engine.dispose()
    floor, outbox = ms(times["floor"], 50), ms(times["outbox"], 50)
    print(f"{name}")
    print(f"  save, floor        p50 {floor:7.3f} ms   p99 {ms(times['floor'], 99):7.3f} ms")
    print(f"  save + outbox      p50 {outbox:7.3f} ms   p99 {ms(times['outbox'], 99):7.3f} ms")
    print(f"  p50 difference     {outbox - floor:+.3f} ms")
    print(f"  relay              {rate:,.0f} events/s ({rows:,} rows)")
    if name.startswith("PostgreSQL"):
        met = outbox - floor <= TARGET_LATENCY_MS
        print(f"  target: p50 within {TARGET_LATENCY_MS} ms of the floor: {_met(met)}")
    print(f"  target: relay >= {TARGET_RELAY_PER_S:,} events/s: {_met(rate >= TARGET_RELAY_PER_S)}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


async def main(orders: int, rows: int) -> None:
    """Every database, one after the other."""
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{orders} orders per variant, {rows:,} rows relayed; Redis on loopback\n")
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as directory:
        if redis_url is None:
            raise SystemExit("redis-server is not installed")
        async with postgres() as pg_url:
            if pg_url is not None:
                await measure("PostgreSQL (asyncpg)", pg_url, redis_url, orders, rows)
        sqlite_url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        await measure("SQLite (aiosqlite)", sqlite_url, redis_url, orders, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2_000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.rows = 200, 2_000
    asyncio.run(main(args.orders, args.rows))
