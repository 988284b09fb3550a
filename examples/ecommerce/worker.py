"""``python -m examples.ecommerce worker --group NAME...``: consumer groups in a process
of their own, on Redis, until SIGTERM or SIGINT.

Start as many as you like: workers of one group share its events, each handled once.
On a signal the worker stops reading, lets its handlers finish within the shutdown
grace, and exits; what it did not finish is redelivered to another worker.
"""

import signal
from collections.abc import Sequence
from typing import TextIO

import anyio

from examples.ecommerce.shop import Shop
from examples.ecommerce.timeline import Timeline

__all__ = ["run_worker"]


async def run_worker(shop: Shop, out: TextIO, timelines: Sequence[Timeline] = ()) -> None:
    """Run ``shop`` (a shop built with the worker's groups) until a signal arrives.

    Prints a ready line first, then the ``timelines``' headers.
    """
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with shop:
            print(f"ecommerce worker ready: groups {', '.join(shop.groups)}", file=out, flush=True)
            for timeline in timelines:
                timeline.header()
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=out, flush=True)
                break
