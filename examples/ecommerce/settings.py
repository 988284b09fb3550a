"""``Settings``: how one run of the shop is configured, from the command line or the
environment.

| setting | environment | default |
| --- | --- | --- |
| ``db_path`` | ``ECOMMERCE_DB`` | ``:memory:``, a fresh database per run |
| ``orders_db`` | ``ECOMMERCE_ORDERS_DB`` | an SQLite file beside ``db_path`` |
| ``redis_url`` | ``ECOMMERCE_REDIS_URL`` | none: the in-memory transport |
| ``redis_prefix`` | ``ECOMMERCE_REDIS_PREFIX`` | ``ecommerce`` |
| ``admin_token`` | ``ECOMMERCE_ADMIN_TOKEN`` | random, printed by ``serve`` |
| ``mail_fail_every`` | ``ECOMMERCE_MAIL_FAIL_EVERY`` | 5 (``0``: never) |
| ``mail_latency`` | ``ECOMMERCE_MAIL_LATENCY`` | 0 seconds |
| ``mail_log`` | ``ECOMMERCE_MAIL_LOG`` | none |
"""

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from eventbus import InMemoryTransport
from eventbus.transports import Transport
from examples.ecommerce.engines import sqlite_url

__all__ = ["EventDelivery", "Settings"]

EventDelivery = Literal["background", "inline", "off"]


@dataclass(frozen=True)
class Settings:
    """One run's configuration; every field has a default that works with no server.

    - ``db_path``: the SQLite database (``:memory:`` keeps it for the process only).
    - ``orders_db``: the SQLAlchemy URL of the orders module's database, which holds the
      outbox too (``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///...``). None: an
      SQLite file beside ``db_path`` (``shop.db`` -> ``shop.orders.db``), or in a
      temporary directory removed at the end when ``db_path`` is in memory.
    - ``outbox``: publish ``OrderCreated`` through the outbox, in the order's
      transaction (the default); False publishes it directly, before the commit.
    - ``redis_url`` / ``redis_prefix``: use Redis Streams instead of the in-memory
      transport, so that the API and the workers can be separate processes.
    - ``consumer_name``: a stable Redis consumer name for this worker (``--name``).
    - ``admin_token``: the bearer token of the admin endpoints.
    - ``retry_delay``: seconds before the first retry of a failed background consumer
      (then doubling, up to a minute).
    - ``mail_fail_every``: the stand-in mail server fails every n-th send (None: never).
    - ``mail_latency``: seconds each send to the stand-in mail server takes.
    - ``mail_log``: a file the stand-in mail server appends each message it takes to,
      one JSON line each (None: none).
    - ``gateway_latency``: seconds the stand-in payment gateway takes to answer.
    - ``low_stock_threshold``: a product whose stock falls below it raises StockLow.
    - ``password_cost``: scrypt's ``n`` (a power of two); lower it only in tests.
    - ``delivery``: ``"background"`` (the event-driven design), ``"inline"`` (every
      consumer runs inside the request, as the blocking design did) or ``"off"``
      (nothing is published: the benchmark's floor).
    """

    db_path: str = ":memory:"
    orders_db: str | None = None
    outbox: bool = True
    redis_url: str | None = None
    redis_prefix: str = "ecommerce"
    consumer_name: str | None = None
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    retry_delay: float = 1.0
    mail_fail_every: int | None = 5
    mail_latency: float = 0.0
    mail_log: str | None = None
    gateway_latency: float = 0.0
    low_stock_threshold: int = 5
    password_cost: int = 2**14
    delivery: EventDelivery = "background"
    shutdown_grace: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """The defaults, overridden by the ``ECOMMERCE_*`` variables that are set."""
        base = cls()
        fail_every = environ.get("ECOMMERCE_MAIL_FAIL_EVERY")
        latency = environ.get("ECOMMERCE_MAIL_LATENCY")
        return replace(
            base,
            db_path=environ.get("ECOMMERCE_DB", base.db_path),
            orders_db=environ.get("ECOMMERCE_ORDERS_DB", base.orders_db),
            mail_fail_every=base.mail_fail_every if fail_every is None else int(fail_every) or None,
            mail_latency=base.mail_latency if latency is None else float(latency),
            mail_log=environ.get("ECOMMERCE_MAIL_LOG", base.mail_log),
            redis_url=environ.get("ECOMMERCE_REDIS_URL", base.redis_url),
            redis_prefix=environ.get("ECOMMERCE_REDIS_PREFIX", base.redis_prefix),
            admin_token=environ.get("ECOMMERCE_ADMIN_TOKEN", base.admin_token),
        )

    @property
    def shared_database(self) -> bool:
        """Whether other processes can open the same database (a file, not memory)."""
        return self.db_path != ":memory:" and not self.db_path.startswith("file::memory:")

    @property
    def orders_need_scratch(self) -> bool:
        """Whether the orders database goes in a temporary directory: no ``orders_db``,
        and the shop's database in memory."""
        return self.orders_db is None and not self.shared_database

    def orders_url(self, scratch: Path | None) -> str:
        """The orders database's URL: ``orders_db``, else an SQLite file beside the shop's
        database, else ``orders.db`` in the directory ``scratch`` (``ValueError`` if None)."""
        if self.orders_db is not None:
            return self.orders_db
        if not self.orders_need_scratch:
            path = Path(self.db_path)
            return sqlite_url(path.with_name(f"{path.stem}.orders{path.suffix or '.db'}"))
        if scratch is None:
            raise ValueError("a database in memory needs a scratch directory for its orders")
        return sqlite_url(scratch / "orders.db")

    def transport(self) -> Transport:
        """The transport these settings choose: Redis when a URL is set, else in memory."""
        if self.redis_url is None:
            return InMemoryTransport()
        from eventbus.transports.redis import RedisTransport  # needs the redis extra

        return RedisTransport(
            self.redis_url, prefix=self.redis_prefix, consumer_name=self.consumer_name
        )
