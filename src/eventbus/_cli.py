"""The command line: ``eventbus worker package.module:bus`` runs a bus's subscribers."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager

import anyio

from ._bus import EventBus

__all__ = ["load_bus", "main"]

logger = logging.getLogger("eventbus.worker")
WORKER_NAME_ENV = "EVENTBUS_WORKER_NAME"
_DESCRIPTION = "Typed events between the parts of a service. Commands:"


Target = EventBus | AbstractAsyncContextManager[object]
"""What a worker runs: a bus, or a context that opens resources and yields a bus."""


def load_bus(target: str) -> Target:
    """Import ``package.module:attribute``: an ``EventBus``, a function returning one, or
    a function returning an async context manager that yields one (to open resources,
    such as a database pool, around the bus)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"eventbus: expected package.module:bus, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"eventbus: cannot import {module_name}: {exc}") from exc
    found = getattr(module, attribute, None)
    if inspect.isfunction(found):
        found = found()
    if isinstance(found, EventBus | AbstractAsyncContextManager):
        return found
    raise SystemExit(
        f"eventbus: {target} is not an EventBus (or a function returning one, or an "
        "async context manager yielding one)"
    )


async def run_worker(target: Target) -> None:
    """Run the bus until SIGTERM or SIGINT, then shut it down gracefully (and then leave
    the context that yielded it)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if isinstance(target, EventBus):
            await _serve(target, signals)
            return
        async with target as bus:
            if not isinstance(bus, EventBus):
                raise SystemExit(f"eventbus: the context yielded {type(bus).__name__}, not a bus")
            await _serve(bus, signals)


async def _serve(bus: EventBus, signals: AsyncIterator[int]) -> None:
    async with bus:
        groups = sorted({s.group for s in bus.subscribers if s.mode == "background"})
        logger.info("worker started for groups %s", ", ".join(groups) or "(none)")
        print(f"eventbus worker ready: {len(groups)} group(s)", flush=True)
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            break
    logger.info("worker stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``eventbus`` and ``python -m eventbus``."""
    parser = argparse.ArgumentParser(prog="eventbus", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the subscribers of a bus until stopped")
    worker.add_argument(
        "target", help="package.module:bus (an EventBus, a factory, or a lifespan factory)"
    )
    worker.add_argument("--name", help="stable worker name (the Redis consumer name)")
    worker.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.name:
        os.environ[WORKER_NAME_ENV] = args.name
    sys.path.insert(0, os.getcwd())
    anyio.run(run_worker, load_bus(args.target))
