"""The command line: ``eventbus worker package.module:bus`` runs a bus's subscribers;
``dead-letters`` and ``graph`` are for operators (``_cli_ops``)."""

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

from ._backoff import Backoff
from ._bus import EventBus
from ._cli_ops import add_commands, dead_letters, graph, groups, inspect_groups, schema
from ._errors import EventBusError, TransportError

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


async def run_worker(
    target: Target, groups: Sequence[str] = (), connect_timeout: float = 60.0
) -> None:
    """Run the bus (for ``groups`` only, when given) until SIGTERM or SIGINT, then shut
    it down gracefully (and then leave the context that yielded it). Waits up to
    ``connect_timeout`` seconds for the transport to be reachable at start."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if isinstance(target, EventBus):
            await _serve(target, signals, groups, connect_timeout)
            return
        async with target as bus:
            if not isinstance(bus, EventBus):
                raise SystemExit(f"eventbus: the context yielded {type(bus).__name__}, not a bus")
            await _serve(bus, signals, groups, connect_timeout)


async def _serve(
    bus: EventBus, signals: AsyncIterator[int], groups: Sequence[str], connect_timeout: float
) -> None:
    transport = bus.transport
    if not transport.features.survives_restart:
        raise SystemExit(
            f"eventbus: the bus uses {type(transport).__name__}, which other processes "
            "cannot reach; a worker needs a transport such as RedisTransport"
        )
    if groups:
        bus.consume_only(groups)
    if not await _start(bus, connect_timeout, signals):
        return
    try:
        _log_start(bus, groups)
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            break
    finally:
        await bus.__aexit__(None, None, None)
    logger.info("worker stopped")


def _log_start(bus: EventBus, groups: Sequence[str]) -> None:
    """Log the transport, then each group served with its event types; print the ready
    line that scripts wait for."""
    served = [s for s in bus.subscribers if s.mode == "background"]
    served = [s for s in served if not groups or s.group in groups]
    names = sorted({s.group for s in served})
    logger.info("worker started on %r", bus.transport)
    for group in names:
        types = {t.event_name for s in served if s.group == group for t in s.event_types}
        logger.info("serving group %s: %s", group, ", ".join(sorted(types)))
    print(f"eventbus worker ready: {len(names)} group(s)", flush=True)


async def _start(bus: EventBus, connect_timeout: float, signals: AsyncIterator[int]) -> bool:
    """Start the bus, waiting with capped backoff while the transport cannot connect;
    False when a signal came meanwhile (nothing was started)."""
    backoff = Backoff(0.25, 5.0)
    deadline = anyio.current_time() + connect_timeout
    while True:
        try:
            await bus.__aenter__()
            return True
        except TransportError as exc:
            left = deadline - anyio.current_time()
            if left <= 0:
                raise
            delay = min(backoff.failed(), left)
            logger.warning("%s; trying again in %.1f s (%.0f s left)", exc, delay, left)
            with anyio.move_on_after(delay):
                async for signum in signals:
                    logger.info("received %s before the start", signal.Signals(signum).name)
                    return False


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``eventbus`` and ``python -m eventbus``."""
    parser = argparse.ArgumentParser(prog="eventbus", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the subscribers of a bus until stopped")
    worker.add_argument(
        "target", help="package.module:bus (an EventBus, a factory, or a lifespan factory)"
    )
    worker.add_argument("--name", help="stable worker name (the Redis consumer name)")
    worker.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="serve only this group (repeat for several; default: every group of the bus)",
    )
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the transport at start (default 60)",
    )
    worker.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    add_commands(commands)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    if args.command != "worker":
        _operate(args)
        return
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.name:
        os.environ[WORKER_NAME_ENV] = args.name
    try:
        anyio.run(run_worker, load_bus(args.target), args.group, args.connect_timeout)
    except EventBusError as exc:
        raise SystemExit(f"eventbus worker: {type(exc).__name__}: {exc}") from None


def _operate(args: argparse.Namespace) -> None:
    """Run an operator's command; exit with its code (one line on a failure)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = anyio.run(run_operation, load_bus(args.target), args)
    except KeyboardInterrupt:  # Ctrl-C ends a --watch
        code = 0
    except EventBusError as exc:
        raise SystemExit(f"eventbus {args.command}: {type(exc).__name__}: {exc}") from None
    if code:
        raise SystemExit(code)


async def run_operation(target: Target, args: argparse.Namespace) -> int:
    """``dead-letters`` or ``graph`` on the target's bus (its lifespan entered first);
    the bus consumes nothing. Returns the exit code."""
    if isinstance(target, EventBus):
        return await _on_bus(target, args)
    async with target as bus:
        if not isinstance(bus, EventBus):
            raise SystemExit(f"eventbus: the context yielded {type(bus).__name__}, not a bus")
        return await _on_bus(bus, args)


async def _on_bus(app: EventBus, args: argparse.Namespace) -> int:
    """Run the command on a bus of the app's transport that subscribes to nothing (it
    neither consumes nor declares groups) and knows the app's event types."""
    if args.command == "graph":
        print(graph(app))
        return 0
    if args.command == "schema":
        print(schema(app, args.format))
        return 0
    bus = EventBus(transport=app.transport)
    bus.register(*{t for s in app.subscribers for t in s.event_types})
    async with bus:
        if args.command == "inspect":
            return await inspect_groups(bus, args)
        if args.command == "groups":
            return await groups(bus, args)
        return await dead_letters(bus, args)
