"""``Shop``: what one process of the shop runs — the database, every module's store and
subscribers, and the bus. The composition root of the event side; ``app.py`` adds HTTP.

Which subscribers a process runs:

- in one process (the demo; ``serve`` on the in-memory transport): all of them;
- the API process on Redis: the immediate ones only (auth's ban, orders' cancel), which
  must run where the events are published; workers run the background groups;
- a worker: the background groups it was given (``worker --group products email``).
"""

import shutil
import tempfile
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from eventbus import Event, EventBus, Middleware, Registry
from eventbus.outbox import Outbox
from examples.ecommerce.engines import open_engine
from examples.ecommerce.modules import admin, analytics, auth, email, orders, products, shipping
from examples.ecommerce.payments import FakePaymentGateway, PaymentGateway
from examples.ecommerce.settings import Settings
from examples.ecommerce.storage import Database
from examples.ecommerce.web import Publish

__all__ = ["Shop"]

SCHEMAS = (
    auth.SCHEMA,
    products.SCHEMA,
    email.SCHEMA,
    analytics.SCHEMA,
    shipping.SCHEMA,
    admin.SCHEMA,
)


class Shop:
    """The modules of the shop on their databases and one bus; ``async with shop:`` runs it.

    Every module but orders shares one SQLite database (``settings.db_path``); orders
    has its own (``settings.orders_url``), which holds the bus's outbox too, so that an
    order and its ``OrderCreated`` commit together.

    - ``groups``: the background groups this process consumes (None: all of them;
      ``()``: none, for an API whose workers run elsewhere: ``EventBus(consume=...)``
      declares the others on the transport). Unknown names raise ``ValueError``.
      Immediate subscribers run wherever their events are published.
    - ``mail`` / ``gateway``: the outside services (default: the stand-ins).
    - ``middleware``: passed to the bus (the timeline of the demo, for instance).
    - ``registries``: extra subscribers to include.

    With ``settings.delivery == "inline"`` every subscriber runs inside ``publish()``,
    as the blocking design did; with ``"off"`` nothing is published.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        groups: Collection[str] | None = None,
        mail: email.MailSender | None = None,
        gateway: PaymentGateway | None = None,
        middleware: Sequence[Middleware] = (),
        registries: Iterable[Registry] = (),
    ) -> None:
        self.settings = settings
        self.db = Database(settings.db_path)
        scratch = _scratch() if settings.orders_need_scratch else None
        self._remove_scratch = weakref.finalize(self, _remove, scratch)
        self.orders_engine = open_engine(settings.orders_url(scratch))
        self.users = auth.AuthStore(self.db)
        self.hasher = auth.PasswordHasher(settings.password_cost)
        self.products = products.ProductStore(self.db)
        self.orders = orders.OrderStore(self.orders_engine)
        self.outbox = email.OutboxStore(self.db)
        self.analytics = analytics.AnalyticsStore(self.db)
        self.shipments = shipping.ShipmentStore(self.db)
        self.admin = admin.AdminStore(self.db)
        self.mail = mail or email.FakeMailServer(
            fail_every=settings.mail_fail_every,
            latency=settings.mail_latency,
            log=settings.mail_log,
        )
        self.gateway = gateway or FakePaymentGateway(latency=settings.gateway_latency)
        every = [*self._registries(), *registries]
        _check_groups(every, groups)
        self._groups = background_groups(every) if groups is None else sorted(groups)
        self.event_outbox = Outbox(self.orders_engine) if settings.outbox else None
        """The bus's outbox, in the orders database (None with ``settings.outbox`` off)."""
        self.bus = EventBus(
            transport=settings.transport(),
            middleware=middleware,
            shutdown_grace=settings.shutdown_grace,
            consume=True if groups is None else frozenset(groups),
            outbox=self.event_outbox,
        )
        for registry in every:
            self.bus.include(_inline(registry) if settings.delivery == "inline" else registry)

    def _registries(self) -> list[Registry]:
        threshold = self.settings.low_stock_threshold
        return [
            auth.subscribers(self.users),
            orders.subscribers(self.orders),
            products.subscribers(self.products, threshold),
            email.subscribers(self.outbox, self.mail, self.settings.retry_delay),
            analytics.subscribers(self.analytics),
            shipping.subscribers(self.shipments),
            admin.subscribers(self.admin),
        ]

    @property
    def groups(self) -> list[str]:
        """The background groups this process consumes."""
        return list(self._groups)

    def publisher(self, source: str) -> Publish:
        """How module ``source`` publishes: on the bus, with a ``source`` header."""
        headers = {"source": source}
        off = self.settings.delivery == "off"
        outbox = self.settings.outbox

        async def publish(
            event: Event, *, correlation_id: str, transaction: object | None = None
        ) -> None:
            if off:
                return
            await self.bus.publish(
                event,
                headers=headers,
                correlation_id=correlation_id,
                transaction=transaction if outbox else None,
            )

        return publish

    async def __aenter__(self) -> "Shop":
        self.db.open()
        try:
            for schema in SCHEMAS:
                self.db.create(schema)
            self.products.seed()
            await self.orders.create()
            await self.bus.__aenter__()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.bus.__aexit__(exc_type, exc, tb)
        finally:
            await self._close()

    async def _close(self) -> None:
        self.db.close()
        await self.orders_engine.dispose()
        self._remove_scratch()


def _scratch() -> Path:
    """A temporary directory for the orders database of a shop in memory."""
    return Path(tempfile.mkdtemp(prefix="ecommerce-orders-"))


def _remove(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def background_groups(registries: Iterable[Registry]) -> list[str]:
    """The names of the background groups of these registries."""
    return sorted({s.group for r in registries for s in r if s.mode == "background"})


def _check_groups(registries: list[Registry], groups: Collection[str] | None) -> None:
    """Refuse group names that no background subscriber has (``ValueError``)."""
    unknown = set(groups or ()) - set(background_groups(registries))
    if unknown:
        known = ", ".join(background_groups(registries))
        raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))}; groups: {known}")


def _inline(registry: Registry) -> Registry:
    """The same subscribers, every one immediate: the blocking design, for comparison."""
    inline = Registry()
    for sub in registry:
        inline.add(replace(sub, mode="immediate"))
    return inline
