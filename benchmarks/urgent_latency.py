"""How long an urgent event waits behind a background backlog, in memory.

For each trial a group holds 10,000 queued OrderCreated whose handler awaits 0.5 ms of
I/O (``anyio.sleep``), so the backlog alone needs at least 5 s; then a UserBanned
(urgent) is published, and the figure is the time from that publish until its handler
runs. Prints the median, p99 and maximum over the trials next to the 50 ms target. The
bus is then closed with no grace (the backlog is not waited for).

Run: ``.venv/bin/python benchmarks/urgent_latency.py [--trials N] [--backlog N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import anyio
import anyio.lowlevel

from eventbus import Event, EventBus


class OrderCreated(Event):
    """A background event."""

    order_id: str


class UserBanned(Event, urgent=True):
    """An urgent event."""

    user_id: str


async def trial(backlog: int) -> float:
    """One trial: seconds from publishing the urgent event until its handler ran."""
    bus = EventBus(shutdown_grace=0)
    handled = anyio.Event()
    banned_at: list[float] = []

    @bus.subscribe(group="auth")
    async def background(event: OrderCreated) -> None:
        await anyio.sleep(0.0005)

    @bus.subscribe(group="auth")
    async def urgent(event: UserBanned) -> None:
        banned_at.append(time.perf_counter())
        handled.set()

    async with bus:
        for i in range(backlog):
            await bus.publish(OrderCreated(order_id=str(i)))
        await anyio.sleep(0.01)  # let the background consumer get going
        start = time.perf_counter()
        await bus.publish(UserBanned(user_id="u-1"))
        await handled.wait()
    return banned_at[0] - start


async def main(trials: int, backlog: int) -> None:
    """Run the trials and print the figures."""
    waits = sorted([await trial(backlog) * 1000 for _ in range(trials)])
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    print(
        f"urgent event behind {backlog:,} queued background events (0.5 ms each), {trials} trials"
    )
    print(f"  urgent handled after: p50 {statistics.median(waits):.2f} ms, p99 {p99:.2f} ms,")
    print(f"  max {waits[-1]:.2f} ms; the backlog alone needs >= {backlog * 0.5 / 1000:.0f} s")
    met = "met" if p99 < 50 else "NOT MET"
    print(f"  [{met}] urgent event handled within 50 ms (p99 {p99:.2f} ms)")


if __name__ == "__main__":
    # closing with no grace warns that the backlog stays unhandled: expected here
    logging.getLogger("eventbus").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    anyio.run(main, args.trials, args.backlog)
