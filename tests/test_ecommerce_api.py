"""The e-commerce example end to end through its HTTP API, on the in-memory transport."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from eventbus import Envelope, Event, Middleware, TransportError
from eventbus.testing import drain
from examples.ecommerce.app import create_app
from examples.ecommerce.events import Address, LineItem, OrderCreated, OrderPaid, PaymentFailed
from examples.ecommerce.inprocess import in_process
from examples.ecommerce.modules.email import Mail, MailServerError
from examples.ecommerce.settings import Settings
from examples.ecommerce.shop import Shop
from tests.databases import PostgresDatabase

pytestmark = pytest.mark.anyio
Next = Callable[[], Awaitable[None]]

ADMIN = {"Authorization": "Bearer admin-secret"}
CARD_OK = "4242 4242 4242 4242"
CARD_NO_FUNDS = "4000 0000 0000 9995"
SHIP_TO = {
    "name": "Ada",
    "street": "1 Main Street",
    "city": "Lyon",
    "postal_code": "69001",
    "country": "FR",
}
MODULES = Path(__file__).resolve().parent.parent / "examples" / "ecommerce" / "modules"


@pytest.fixture
def anyio_backend() -> str:
    """The API and its tests run on asyncio (uvicorn's loop)."""
    return "asyncio"


def fast_settings(**changes: Any) -> Settings:
    """Fast settings: cheap password hashing, 10 ms retries, a mail server that works."""
    base = Settings(
        admin_token="admin-secret", retry_delay=0.01, mail_fail_every=None, password_cost=16
    )
    return replace(base, **changes)


@dataclass
class Client:
    """The API, with helpers for the steps every test takes."""

    shop: Shop
    http: httpx.AsyncClient

    async def customer(self, name: str = "Ada") -> dict[str, str]:
        """Register and log in a customer; their auth headers."""
        email = f"{name.lower()}@example.com"
        account = {"email": email, "name": name, "password": "correct horse"}
        assert (await self.http.post("/users", json=account)).status_code == 201
        login = await self.http.post(
            "/sessions", json={"email": email, "password": "correct horse"}
        )
        assert login.status_code == 201, login.text
        return {"Authorization": f"Bearer {login.json()['token']}"}

    async def order(self, who: dict[str, str], **lines: int) -> dict[str, Any]:
        """Place an order of ``SKU=quantity`` lines; its JSON."""
        items = [{"sku": sku.replace("_", "-"), "quantity": n} for sku, n in lines.items()]
        response = await self.http.post(
            "/orders", json={"items": items, "ship_to": SHIP_TO}, headers=who
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def pay(self, who: dict[str, str], order_id: str, card: str) -> httpx.Response:
        """Pay an order with a card."""
        return await self.http.post(
            f"/orders/{order_id}/pay", json={"card_number": card}, headers=who
        )

    async def get(self, path: str, who: dict[str, str] = ADMIN) -> Any:
        """The JSON of a GET that must succeed."""
        response = await self.http.get(path, headers=who)
        assert response.status_code == 200, response.text
        return response.json()

    async def stock(self, sku: str) -> int:
        """A product's stock."""
        return int((await self.get(f"/products/{sku}"))["stock"])

    async def outbox(self) -> dict[str, dict[str, Any]]:
        """The outbox by subject."""
        return {mail["subject"]: mail for mail in await self.get("/admin/outbox")}

    async def drain(self) -> None:
        """Wait until every event is handled; a dead letter fails the test."""
        await drain(self.shop.bus)


@asynccontextmanager
async def running(shop: Shop | None = None) -> AsyncIterator[Client]:
    """The app on ``shop`` (default: the test settings), started, with a client."""
    shop = shop or Shop(fast_settings())
    async with in_process(create_app(shop=shop)) as http:
        yield Client(shop, http)


class GatedMail:
    """A mail server that holds order confirmations until ``release`` is set."""

    def __init__(self) -> None:
        self.holding = anyio.Event()
        self.release = anyio.Event()

    async def send(self, mail: Mail) -> None:
        """Hold order confirmations; take anything else at once."""
        if mail.key.startswith("order:"):
            self.holding.set()
            await self.release.wait()


class FlakyMail:
    """A mail server that fails the first attempt of every message."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def send(self, mail: Mail) -> None:
        """Fail once per message, then take it."""
        if mail.key not in self.seen:
            self.seen.add(mail.key)
            raise MailServerError("the mail server timed out")


class DownMail:
    """A mail server that is down until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False

    async def send(self, mail: Mail) -> None:
        """Refuse everything while down."""
        if not self.up:
            raise MailServerError("connection refused")


@pytest.fixture(params=["sqlite", "postgresql"])
def orders_db(request: pytest.FixtureRequest) -> str | None:
    """The orders database: the default SQLite file, or the test session's PostgreSQL."""
    if request.param == "sqlite":
        return None
    postgres: PostgresDatabase = request.getfixturevalue("postgres_database")
    if postgres.error is not None:
        pytest.skip(postgres.error)
    return postgres.url


async def test_an_order_and_its_payment_reach_every_consumer(orders_db: str | None) -> None:
    """Stock, confirmation mail, analytics and the shipment all follow an order."""
    async with running(Shop(fast_settings(orders_db=orders_db))) as api:
        ada = await api.customer()
        order = await api.order(ada, MUG_01=2, TEE_01=1)
        assert (order["status"], order["total"]) == ("pending", "44.90")
        await api.drain()
        assert await api.stock("MUG-01") == 38
        assert await api.stock("TEE-01") == 24
        mail = (await api.outbox())[f"Order {order['order_id']} received"]
        assert (mail["to"], mail["status"]) == ("ada@example.com", "sent")

        assert (await api.pay(ada, order["order_id"], CARD_OK)).status_code == 200
        await api.drain()
        paid = await api.get(f"/orders/{order['order_id']}", ada)
        shipment = await api.get(f"/orders/{order['order_id']}/shipment", ada)
        figures = await api.get("/analytics")
    assert paid["status"] == "paid"
    assert paid["payment_id"].startswith("pay_")
    assert shipment["status"] == "ready to pick"
    assert [(i["sku"], i["quantity"]) for i in shipment["items"]] == [("MUG-01", 2), ("TEE-01", 1)]
    assert (figures["users"], figures["orders_created"], figures["orders_paid"]) == (1, 1, 1)
    assert figures["revenue"] == "44.90"
    mugs = next(p for p in figures["products"] if p["sku"] == "MUG-01")
    assert (mugs["units_ordered"], mugs["units_paid"], mugs["revenue"]) == (2, 2, "25.00")


async def test_a_declined_payment_cancels_the_order_and_releases_its_stock(
    orders_db: str | None,
) -> None:
    """402, the order cancelled before the answer, then stock back and the customer told."""
    async with running(Shop(fast_settings(orders_db=orders_db))) as api:
        ben = await api.customer("Ben")
        order = await api.order(ben, CAP_01=2)
        await api.drain()
        assert await api.stock("CAP-01") == 4

        declined = await api.pay(ben, order["order_id"], CARD_NO_FUNDS)
        assert declined.status_code == 402
        assert "insufficient funds" in declined.json()["detail"]
        now = await api.get(f"/orders/{order['order_id']}", ben)  # no drain: immediate
        assert (now["status"], now["failure_reason"]) == ("cancelled", "insufficient funds")

        await api.drain()
        assert await api.stock("CAP-01") == 6
        mail = (await api.outbox())[f"Payment for order {order['order_id']} declined"]
        assert (mail["to"], mail["status"]) == ("ben@example.com", "sent")
        assert (await api.get("/analytics"))["payments_failed"] == 1
        again = await api.pay(ben, order["order_id"], CARD_OK)
    assert again.status_code == 409


async def test_reviews_update_the_products_rating() -> None:
    """Two reviews give the product their average, and analytics counts them."""
    async with running() as api:
        for name, rating in (("Ada", 5), ("Ben", 4)):
            who = await api.customer(name)
            response = await api.http.post(
                "/products/MUG-01/reviews", json={"rating": rating}, headers=who
            )
            assert response.status_code == 201
        await api.drain()
        mug = await api.get("/products/MUG-01")
        figures = await api.get("/analytics")
    assert (mug["rating"], mug["reviews"]) == ("4.50", 2)
    assert figures["reviews"] == 2
    assert next(p for p in figures["products"] if p["sku"] == "MUG-01")["average_rating"] == "4.50"


async def test_stock_falling_below_the_threshold_alerts_the_admins_once() -> None:
    """Caps go from 6 to 4 (below 5): one StockLow alert; going lower raises no other."""
    async with running() as api:
        ada = await api.customer()
        await api.order(ada, CAP_01=2)
        await api.drain()
        await api.order(ada, CAP_01=1)
        await api.drain()
        alerts = await api.get("/admin/alerts")
    assert [(a["sku"], a["stock"], a["threshold"]) for a in alerts] == [("CAP-01", 4, 5)]


async def test_post_orders_answers_before_the_slow_consumers_finish() -> None:
    """The order is answered while its confirmation mail is still being sent."""
    mail = GatedMail()
    async with running(Shop(fast_settings(), mail=mail)) as api:
        ada = await api.customer()
        order = await api.order(ada, MUG_01=1)
        with anyio.fail_after(5):
            await mail.holding.wait()  # the email consumer is inside its send
        subject = f"Order {order['order_id']} received"
        assert (await api.outbox())[subject]["status"] == "queued"
        mail.release.set()
        await api.drain()
        assert (await api.outbox())[subject]["status"] == "sent"


async def test_a_banned_user_is_refused_on_the_very_next_request() -> None:
    """The ban is in force when its request returns: 403 everywhere, others unaffected."""
    async with running() as api:
        mallory, ada = await api.customer("Mallory"), await api.customer("Ada")
        me = await api.get("/users/me", mallory)
        ban = await api.http.post(
            f"/admin/users/{me['user_id']}/ban", json={"reason": "fraud"}, headers=ADMIN
        )
        assert ban.status_code == 200
        refused = await api.http.get("/users/me", headers=mallory)
        order = await api.http.post(
            "/orders", json={"items": [{"sku": "MUG-01", "quantity": 1}], "ship_to": SHIP_TO},
            headers=mallory,
        )  # fmt: skip
        login = await api.http.post(
            "/sessions", json={"email": "mallory@example.com", "password": "correct horse"}
        )
        assert (await api.http.get("/users/me", headers=ada)).status_code == 200
        await api.drain()
        notice = (await api.outbox())["Account suspended"]
    assert (refused.status_code, order.status_code, login.status_code) == (403, 403, 403)
    assert notice["to"] == "mallory@example.com"


async def test_admin_endpoints_need_the_admin_token() -> None:
    """No token is 401; a customer's token is 403."""
    async with running() as api:
        ada = await api.customer()
        anonymous = await api.http.get("/analytics")
        customer = await api.http.get("/admin/outbox", headers=ada)
    assert (anonymous.status_code, customer.status_code) == (401, 403)


async def test_a_flaky_mail_server_is_retried_until_the_mail_goes_out() -> None:
    """Every message fails once, then goes out on its second attempt; no dead letter."""
    async with running(Shop(fast_settings(), mail=FlakyMail())) as api:
        ada = await api.customer()
        await api.order(ada, BAG_01=1)
        await api.drain()
        mails = list((await api.outbox()).values())
        assert await api.get("/admin/dead-letters") == []
    assert [(m["status"], m["attempts"]) for m in mails] == [("sent", 2), ("sent", 2)]


async def test_a_mail_server_that_stays_down_dead_letters_the_mail_and_replay_sends_it() -> None:
    """Four failed attempts make a dead letter; other consumers go on; replay delivers."""
    mail = DownMail()
    async with running(Shop(fast_settings(), mail=mail)) as api:
        ada = await api.customer()
        order = await api.order(ada, BAG_01=1)
        await drain(api.shop.bus, reraise=False)
        letters = await api.get("/admin/dead-letters")
        queued = [(m["status"], m["attempts"]) for m in (await api.outbox()).values()]
        assert await api.stock("BAG-01") == 29  # the stock consumer was not held up

        mail.up = True
        replayed = await api.http.post("/admin/dead-letters/replay", headers=ADMIN)
        await api.drain()
        sent = [m["status"] for m in (await api.outbox()).values()]
        assert await api.get("/admin/dead-letters") == []
    found = {(d["group"], d["event"], d["reason"], d["attempts"]) for d in letters}
    assert found == {
        ("email", "UserRegistered", "retries-exhausted", 4),
        ("email", "OrderCreated", "retries-exhausted", 4),
    }
    assert order["order_id"] in {d["correlation_id"] for d in letters}
    assert queued == [("queued", 4), ("queued", 4)]
    assert replayed.json() == {"replayed": 2}
    assert sent == ["sent", "sent"]


def order_body(**changes: Any) -> dict[str, Any]:
    """A valid order body, with some fields changed."""
    return {"items": [{"sku": "MUG-01", "quantity": 1}], "ship_to": SHIP_TO, **changes}


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/users", {"email": "not-an-email", "name": "A", "password": "long enough"}, "email"),
    ("POST", "/users", {"email": "a@example.com", "name": "A", "password": "short"}, "password"),
    ("POST", "/orders", order_body(items=[]), "items"),
    ("POST", "/orders", order_body(items=[{"sku": "MUG-01", "quantity": 0}]), "quantity"),
    ("POST", "/orders", order_body(items=[{"sku": "NOPE", "quantity": 1}]), "unknown product NOPE"),
    ("POST", "/orders", order_body(items=[{"sku": "MUG-01", "quantity": 1}] * 2), "once"),
    ("POST", "/orders", order_body(ship_to={**SHIP_TO, "country": "France"}), "country"),
    ("POST", "/orders/{order}/pay", {"card_number": "4242 4242 4242 4241"}, "card number"),
    ("POST", "/products/MUG-01/reviews", {"rating": 6}, "rating"),
]


@pytest.mark.parametrize(("method", "path", "body", "reason"), BAD_REQUESTS)
async def test_bad_requests_get_422_with_the_reason(
    method: str, path: str, body: dict[str, Any], reason: str
) -> None:
    """Invalid input is refused with 422, and the answer says what is wrong."""
    async with running() as api:
        ada = await api.customer()
        order = await api.order(ada, MUG_01=1)
        response = await api.http.request(
            method, path.format(order=order["order_id"]), json=body, headers=ada
        )
    assert response.status_code == 422
    assert reason in response.text


NOT_FOUND: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/orders/o-nope", None),
    ("GET", "/orders/{theirs}", None),
    ("POST", "/orders/o-nope/pay", {"card_number": CARD_OK}),
    ("GET", "/orders/{theirs}/shipment", None),
    ("GET", "/products/NOPE", None),
    ("POST", "/products/NOPE/reviews", {"rating": 5}),
    ("POST", "/admin/users/u-nope/ban", {"reason": "spam"}),
]


@pytest.mark.parametrize(("method", "path", "body"), NOT_FOUND)
async def test_unknown_ids_get_404(method: str, path: str, body: dict[str, Any] | None) -> None:
    """Unknown ids, and other customers' orders, are 404."""
    async with running() as api:
        ben, ada = await api.customer("Ben"), await api.customer("Ada")
        theirs = await api.order(ben, MUG_01=1)
        headers = ADMIN if path.startswith("/admin") else ada
        response = await api.http.request(
            method, path.format(theirs=theirs["order_id"]), json=body, headers=headers
        )
    assert response.status_code == 404, response.text


async def test_an_order_for_more_than_the_stock_is_409() -> None:
    """Ordering more than is left is refused before anything is saved."""
    async with running() as api:
        ada = await api.customer()
        body = order_body(items=[{"sku": "CAP-01", "quantity": 7}])
        response = await api.http.post("/orders", json=body, headers=ada)
    assert response.status_code == 409
    assert "only 6 left of CAP-01" in response.text


class TransportDown(Middleware):
    """Fails every publish of OrderCreated as a transport that cannot be reached."""

    async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
        """Raise for orders; publish the rest."""
        if isinstance(event, OrderCreated):
            raise TransportError("cannot reach the broker")
        await call_next()


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "direct"])
async def test_an_order_that_cannot_be_published_is_not_kept_and_answers_503(
    outbox: bool,
) -> None:
    """No event, no order: the order's transaction rolls back; the client tries again."""
    shop = Shop(fast_settings(outbox=outbox), middleware=[TransportDown()])
    async with running(shop) as api:
        ada = await api.customer()
        response = await api.http.post("/orders", json=order_body(), headers=ada)
        kept = await api.shop.orders.count()
        if api.shop.event_outbox is not None:
            assert await api.shop.event_outbox.pending() == 0
    assert response.status_code == 503
    assert "TransportError" in response.json()["detail"]
    assert kept == 0


def created(order_id: str, quantity: int) -> OrderCreated:
    """An OrderCreated for ``quantity`` caps."""
    cap = LineItem(sku="CAP-01", name="Canvas cap", quantity=quantity, unit_price=Decimal("15"))
    address = Address.model_validate(SHIP_TO)
    return OrderCreated(
        order_id=order_id,
        user_id="u-1",
        email="ada@example.com",
        items=(cap,),
        total=cap.subtotal,
        ship_to=address,
    )


async def test_an_urgent_payment_failure_that_overtakes_its_order_leaves_stock_alone() -> None:
    """PaymentFailed handled before its OrderCreated: the late reservation is skipped."""
    async with running() as api:
        failed = PaymentFailed(
            order_id="o-1", user_id="u-1", email="ada@example.com", amount=Decimal("30"),
            currency="EUR", reason="card declined", card_last4="0002",
        )  # fmt: skip
        await api.shop.bus.publish(failed)
        await api.drain()
        await api.shop.bus.publish(created("o-1", 2))
        await api.drain()
        assert await api.stock("CAP-01") == 6


async def test_events_delivered_twice_have_their_effects_once() -> None:
    """At least once: a second delivery of an order's events changes nothing more."""
    async with running() as api:
        order = created("o-2", 1)
        paid = OrderPaid(
            order_id="o-2", user_id="u-1", amount=order.total, currency="EUR",
            payment_id="pay_1", items=order.items, ship_to=order.ship_to,
        )  # fmt: skip
        for _ in range(2):
            await api.shop.bus.publish(order)
            await api.shop.bus.publish(paid)
            await api.drain()
        assert await api.stock("CAP-01") == 5
        assert len(await api.get("/admin/outbox")) == 1
        assert api.shop.shipments.of_order("o-2") is not None  # one, and no failure


async def test_inline_delivery_runs_every_consumer_inside_the_request() -> None:
    """The blocking design of the seed: the stock is reduced when POST /orders returns."""
    async with running(Shop(fast_settings(delivery="inline"))) as api:
        ada = await api.customer()
        order = await api.order(ada, CAP_01=2)
        stock = await api.stock("CAP-01")  # no drain: nothing runs in the background
        subjects = set(await api.outbox())
        alerts = await api.get("/admin/alerts")
    assert stock == 4
    assert f"Order {order['order_id']} received" in subjects
    assert [a["sku"] for a in alerts] == ["CAP-01"]


def imported_modules(path: Path) -> set[str]:
    """The modules a source file imports."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(MODULES.glob("[!_]*.py")), ids=lambda p: p.stem)
def test_modules_do_not_import_each_other(path: Path) -> None:
    """A module imports events and shared infrastructure, never another module."""
    imports = imported_modules(path)
    assert not {name for name in imports if name.startswith("examples.ecommerce.modules")}
    shared = {"events", "storage", "web", "contracts", "payments"}
    ours = {name for name in imports if name.startswith("examples.")}
    assert {name.rpartition(".")[2] for name in ours} <= shared, ours
