"""``Shop``: what one process of the shop runs — the database, every module's store and
subscribers, and the bus. The composition root of the event side; ``app.py`` adds HTTP.

Which subscribers a process runs:

- in one process (the demo; ``serve`` on the in-memory transport): all of them;
- the API process on Redis: the immediate ones only (auth's ban, orders' cancel), which
  must run where the events are published; workers run the background groups;
- a worker: the background groups it was given (``worker --group products email``).
"""

from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from types import TracebackType

from eventbus import Event, EventBus, Middleware, Registry
from examples.ecommerce.modules import admin, analytics, auth, email, orders, products, shipping
from examples.ecommerce.payments import FakePaymentGateway, PaymentGateway
from examples.ecommerce.settings import Settings
from examples.ecommerce.storage import Database
from examples.ecommerce.web import Publish

__all__ = ["Shop"]

SCHEMAS = (
    auth.SCHEMA,
    products.SCHEMA,
    orders.SCHEMA,
    email.SCHEMA,
    analytics.SCHEMA,
    shipping.SCHEMA,
    admin.SCHEMA,
)


class Shop:
    """The modules of the shop on one database and one bus; ``async with shop:`` runs it.

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
        self.users = auth.AuthStore(self.db)
        self.hasher = auth.PasswordHasher(settings.password_cost)
        self.products = products.ProductStore(self.db)
        self.orders = orders.OrderStore(self.db)
        self.outbox = email.OutboxStore(self.db)
        self.analytics = analytics.AnalyticsStore(self.db)
        self.shipments = shipping.ShipmentStore(self.db)
        self.admin = admin.AdminStore(self.db)
        self.mail = mail or email.FakeMailServer(fail_every=settings.mail_fail_every)
        self.gateway = gateway or FakePaymentGateway(latency=settings.gateway_latency)
        every = [*self._registries(), *registries]
        _check_groups(every, groups)
        self._groups = background_groups(every) if groups is None else sorted(groups)
        self.bus = EventBus(
            transport=settings.transport(),
            middleware=middleware,
            shutdown_grace=settings.shutdown_grace,
            consume=True if groups is None else frozenset(groups),
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

        async def publish(event: Event, *, correlation_id: str) -> None:
            if not off:
                await self.bus.publish(event, headers=headers, correlation_id=correlation_id)

        return publish

    async def __aenter__(self) -> "Shop":
        self.db.open()
        try:
            for schema in SCHEMAS:
                self.db.create(schema)
            self.products.seed()
            await self.bus.__aenter__()
        except BaseException:
            self.db.close()
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
            self.db.close()


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
