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

from eventbus import Event, EventBus, Middleware, Registry, Subscriber
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

    - ``groups``: the background groups this process runs (None: all of them; ``()``:
      none, for an API whose workers run elsewhere). Unknown names raise ``ValueError``.
    - ``immediate``: whether to run the immediate subscribers (the publishing process).
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
        immediate: bool = True,
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
        self.bus = EventBus(
            transport=settings.transport(),
            middleware=middleware,
            shutdown_grace=settings.shutdown_grace,
        )
        every = [*self._registries(), *registries]
        self.bus.include(_select(every, groups, immediate, settings.delivery == "inline"))

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
        """The background groups this process runs."""
        return sorted({s.group for s in self.bus.subscribers if s.mode == "background"})

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


def _select(
    registries: list[Registry], groups: Collection[str] | None, immediate: bool, inline: bool
) -> Registry:
    """The subscribers this process runs (all of them immediate when ``inline``)."""
    if groups is not None:
        unknown = set(groups) - set(background_groups(registries))
        if unknown:
            known = ", ".join(background_groups(registries))
            raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))}; groups: {known}")
    chosen = Registry()
    for registry in registries:
        for sub in registry:
            if inline:
                chosen.add(replace(sub, mode="immediate"))
            elif _runs_here(sub, groups, immediate):
                chosen.add(sub)
    return chosen


def _runs_here(sub: Subscriber, groups: Collection[str] | None, immediate: bool) -> bool:
    if sub.mode == "immediate":
        return immediate
    return groups is None or sub.group in groups
