"""A process that commits orders with their events through the outbox, then kills
itself with SIGKILL right after the last commit: ``python -m tests.outbox_writer
DATABASE_URL TABLE REDIS_URL PREFIX COUNT``. Prints each committed event id."""

from __future__ import annotations

import os
import signal
import sys

import anyio

from eventbus import EventBus
from eventbus.outbox import Outbox
from eventbus.transports.redis import RedisTransport
from tests.databases import engine_for
from tests.events import OrderCreated


async def main(database_url: str, table: str, redis_url: str, prefix: str, count: int) -> None:
    """Commit ``count`` transactions of one event each, then die at once."""
    engine = engine_for(database_url)
    transport = RedisTransport(redis_url, prefix=prefix)
    async with EventBus(transport=transport, outbox=Outbox(engine, table=table)) as bus:
        for number in range(count):
            async with engine.begin() as conn:
                envelope = await bus.publish(OrderCreated(order_id=f"o-{number}"), transaction=conn)
            print(envelope.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no await: the relay gets no turn now


if __name__ == "__main__":
    url, table_name, redis, key_prefix, how_many = sys.argv[1:6]
    anyio.run(main, url, table_name, redis, key_prefix, int(how_many))
