"""The command line: ``python -m examples.ecommerce demo|serve|worker``.

Every command takes ``--db PATH`` (default: a database in memory, for this run only),
``--orders-db URL`` (the orders module's database, which holds the outbox; default: an
SQLite file beside the other) and ``--redis-url URL`` (default: the in-memory transport);
``ECOMMERCE_DB``, ``ECOMMERCE_ORDERS_DB`` and ``ECOMMERCE_REDIS_URL`` set them too.
"""

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

import anyio

from examples.ecommerce.settings import Settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and run the command."""
    parser = _parser()
    args = parser.parse_args(argv)
    env = Settings.from_env()
    settings = replace(
        env,
        db_path=args.db or env.db_path,
        orders_db=args.orders_db or env.orders_db,
        redis_url=args.redis_url or env.redis_url,
        redis_prefix=args.prefix or env.redis_prefix,
        consumer_name=getattr(args, "name", None),
    )
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command != "demo" and settings.redis_url and not settings.shared_database:
        parser.error("with Redis, give --db PATH: the API and the workers share the database")
    commands = {"demo": _demo, "serve": _serve, "worker": _worker}
    commands[args.command](parser, args, settings)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", help="SQLite file (default: in memory)")
    common.add_argument(
        "--orders-db",
        metavar="URL",
        help="the orders database, SQLAlchemy URL (postgresql+asyncpg://... or "
        "sqlite+aiosqlite:///...; default: an SQLite file beside --db)",
    )
    common.add_argument("--redis-url", metavar="URL", help="use Redis instead of memory")
    common.add_argument("--prefix", help="Redis key prefix (default: ecommerce)")
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce",
        description="The e-commerce example of eventbus: a demo, the HTTP API, workers.",
        epilog="Environment: ECOMMERCE_DB, ECOMMERCE_ORDERS_DB, ECOMMERCE_REDIS_URL, "
        "ECOMMERCE_REDIS_PREFIX, ECOMMERCE_ADMIN_TOKEN, ECOMMERCE_MAIL_FAIL_EVERY, "
        "ECOMMERCE_MAIL_LATENCY, ECOMMERCE_MAIL_LOG.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", parents=[common], help="run the story in one process")
    demo.add_argument(
        "--log-level", default="critical", help="default: critical (the timeline shows the rest)"
    )
    demo.add_argument(
        "--trace", action="store_true", help="print the first order's OpenTelemetry trace"
    )
    serve = commands.add_parser("serve", parents=[common], help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    worker = commands.add_parser("worker", parents=[common], help="run consumer groups")
    worker.add_argument(
        "--group",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="groups to run: products, email, analytics, shipping, admin (default: all)",
    )
    worker.add_argument("--name", help="stable worker name (the Redis consumer name)")
    for command in (serve, worker):
        command.add_argument("--log-level", default="warning", help="default: warning")
        command.add_argument("--quiet", action="store_true", help="no timeline")
    return parser


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> None:
    from examples.ecommerce.demo import demo_settings, run_demo

    demo = functools.partial(
        run_demo, demo_settings(settings), sys.stdout, colour=_colour(), trace=args.trace
    )
    anyio.run(demo)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from examples.ecommerce.app import create_app
    from examples.ecommerce.shop import Shop
    from examples.ecommerce.timeline import Timeline

    timeline = [] if args.quiet else [Timeline(sys.stdout, colour=_colour())]
    groups = None if settings.redis_url is None else ()
    shop = Shop(settings, groups=groups, middleware=timeline)
    if "ECOMMERCE_ADMIN_TOKEN" not in os.environ:
        print(f"admin token (set ECOMMERCE_ADMIN_TOKEN to choose it): {settings.admin_token}")
    for line in timeline:
        line.watch(shop.bus.subscribers)
        line.header()
    uvicorn.run(create_app(shop=shop), host=args.host, port=args.port)


def _worker(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> None:
    from examples.ecommerce.shop import Shop
    from examples.ecommerce.timeline import Timeline
    from examples.ecommerce.worker import run_worker

    if settings.redis_url is None:
        parser.error("a worker needs Redis: --redis-url URL or ECOMMERCE_REDIS_URL")
    timeline = [] if args.quiet else [Timeline(sys.stdout, colour=_colour())]
    try:
        shop = Shop(settings, groups=args.group, middleware=timeline)
    except ValueError as exc:
        parser.error(str(exc))
    for line in timeline:
        line.watch(shop.bus.subscribers)
    anyio.run(run_worker, shop, sys.stdout, timeline)
