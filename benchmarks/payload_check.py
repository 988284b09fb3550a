"""What a payload-size check would cost on the in-memory transport's by-reference path.

The default ``InMemoryTransport`` hands events to subscribers by reference: they never
become bytes, so ``max_payload_bytes`` is not checked there. Checking it would mean
encoding every event only to measure it. This script measures, in one process, on the
pool of ``benchmarks/inmemory.py`` (an order with three line items):

- encoding one event to JSON (pydantic's ``to_json``, what the check would call);
- one whole background delivery through ``EventBus()`` (publish, handle, ack), 1 group.

It prints the medians of ``--repeat`` runs and their ratio::

    .venv/bin/python benchmarks/payload_check.py [--events N] [--repeat K]
"""

from __future__ import annotations

import argparse
import statistics
from time import perf_counter

import anyio

from eventbus import EventBus
from inmemory import OrderCreated, Workload


def encode_us(work: Workload, events: int) -> float:
    """Microseconds per event to encode the pool's events to JSON."""
    pool = work.pool
    to_json = OrderCreated.__pydantic_serializer__.to_json
    started = perf_counter()
    for i in range(events):
        to_json(pool[i % len(pool)], by_alias=True)
    return (perf_counter() - started) / events * 1e6


async def delivery_us(work: Workload, events: int) -> float:
    """Microseconds per event from the first publish until drain() returned, 1 group."""
    bus = EventBus()
    handled = 0

    @bus.subscribe(group="g")
    async def handle(event: OrderCreated) -> None:
        nonlocal handled
        handled += 1

    async with bus:
        pool = work.pool
        started = perf_counter()
        for i in range(events):
            await bus.publish(pool[i % len(pool)])
        await bus.drain()
        took = perf_counter() - started
    assert handled == events
    return took / events * 1e6


def main() -> None:
    """Measure both, alternately, and print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each")
    args = parser.parse_args()
    work = Workload.build()
    encodes, deliveries = [], []
    for _ in range(args.repeat):
        encodes.append(encode_us(work, args.events))
        deliveries.append(anyio.run(delivery_us, work, args.events))
    encode, delivery = statistics.median(encodes), statistics.median(deliveries)
    size = len(OrderCreated.__pydantic_serializer__.to_json(work.pool[0], by_alias=True))
    print(f"encode one event to JSON ({size} bytes): {encode:.2f} us (median of {args.repeat})")
    print(f"one background delivery, 1 group:       {delivery:.2f} us")
    print(f"a size check by reference would add {encode / delivery:.0%} to each delivery")


if __name__ == "__main__":
    main()
