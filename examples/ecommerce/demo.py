"""``python -m examples.ecommerce demo``: the shop's story in one process, as a timeline.

Four customers sign up (one with an address whose mail never gets through), three
order, one payment goes through and one is declined, a product runs low, two reviews
arrive, and an admin bans a customer whose next request is refused. Every step goes
through the HTTP API (httpx in process); every event and handler attempt is a line of
the timeline. Retry delays are real but short (50 ms, doubling), so the demo takes a
second or two and its times are true.
"""

import secrets
import time
from collections.abc import Mapping
from typing import Any, TextIO

import httpx

from examples.ecommerce.app import create_app
from examples.ecommerce.inprocess import in_process
from examples.ecommerce.settings import Settings
from examples.ecommerce.shop import Shop
from examples.ecommerce.summary import print_summary
from examples.ecommerce.timeline import Timeline

__all__ = ["DemoError", "demo_settings", "run_demo"]

CARD_OK = "4242 4242 4242 4242"
CARD_NO_FUNDS = "4000 0000 0000 9995"
ADDRESS = {"street": "1 Main Street", "city": "Lyon", "postal_code": "69001", "country": "FR"}
CUSTOMERS = {
    "Ada": "ada@example.com",
    "Ben": "ben@example.com",
    "Cleo": "cleo@mailhost.invalid",  # mistyped: her mail never gets through
    "Mallory": "mallory@example.com",
}


class DemoError(RuntimeError):
    """The API answered something the story did not expect."""


def demo_settings(base: Settings) -> Settings:
    """The demo's settings: short real retry delays, a mail server failing 1 send in 4,
    and on Redis a key prefix of its own (deleted at the end)."""
    prefix = f"ecommerce-demo-{secrets.token_hex(3)}" if base.redis_url else base.redis_prefix
    return Settings(
        db_path=base.db_path,
        orders_db=base.orders_db,
        redis_url=base.redis_url,
        redis_prefix=prefix,
        admin_token=base.admin_token,
        retry_delay=0.05,
        mail_fail_every=4,
    )


async def run_demo(settings: Settings, out: TextIO, *, colour: bool, trace: bool = False) -> None:
    """Run the story on ``settings`` (see ``demo_settings``) and print it to ``out``;
    with ``trace``, print the OpenTelemetry trace of the first order at the end."""
    timeline = Timeline(out, colour=colour)
    recorder = None
    if trace:
        from examples.ecommerce.tracing import TraceRecorder  # needs opentelemetry-sdk

        recorder = TraceRecorder()
    shop = Shop(settings, middleware=[timeline, *([recorder.middleware] if recorder else [])])
    timeline.watch(shop.bus.subscribers)
    app = create_app(shop=shop)
    print(_banner(shop), file=out)
    async with in_process(app) as http:
        timeline.header()
        story = Story(Api(http, timeline, settings.admin_token), shop)
        await story.run()
        await print_summary(story.api.get, story.orders, "Mallory", timeline.counts, out)
    if recorder is not None:
        recorder.print_first("OrderCreated", out)
    if settings.redis_url:
        await _delete_keys(settings.redis_url, settings.redis_prefix)


def _banner(shop: Shop) -> str:
    settings = shop.settings
    transport = f"Redis (prefix {settings.redis_prefix})" if settings.redis_url else "in memory"
    database = "in memory" if settings.db_path == ":memory:" else settings.db_path
    immediate = sorted({s.group for s in shop.bus.subscribers if s.mode == "immediate"})
    return (
        f"eventbus e-commerce demo: transport {transport}, SQLite database {database}\n"
        f"background groups: {', '.join(shop.groups)}; "
        f"immediate subscribers: {', '.join(immediate)}\n"
    )


class Api:
    """The story's HTTP client: each call checks its status and may print a line."""

    def __init__(self, http: httpx.AsyncClient, timeline: Timeline, admin_token: str) -> None:
        self.http = http
        self.timeline = timeline
        self.admin = admin_token
        self.tokens: dict[str, str] = {}

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: str | None = None,
        body: Mapping[str, Any] | None = None,
        expect: int = 200,
        say: str | None = None,
    ) -> Any:
        """Send a request as ``who`` (a customer, "admin", or nobody); check the status."""
        token = self.admin if who == "admin" else self.tokens.get(who or "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = time.perf_counter()
        response = await self.http.request(method, path, json=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != expect:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text}")
        if say is not None:
            status = f"{response.status_code} {response.reason_phrase}"
            self.timeline.note(f"{say}: {method} {path} -> {status} in {elapsed:.1f} ms")
        return response.json()

    async def get(self, path: str, who: str) -> Any:
        """The JSON of ``GET path`` as ``who``."""
        return await self.call("GET", path, who=who)


class Story:
    """The scripted story; ``orders`` maps each customer to their order id."""

    def __init__(self, api: Api, shop: Shop) -> None:
        self.api = api
        self.shop = shop
        self.orders: dict[str, str] = {}

    async def run(self) -> None:
        """Every act, each followed by waiting until its events are handled."""
        for act in (self.sign_up, self.order, self.pay, self.review, self.ban):
            await act()
            await self.shop.bus.drain(timeout=30)

    async def sign_up(self) -> None:
        """Four customers register and log in; each gets a welcome mail."""
        self.api.timeline.note("== Ada, Ben, Cleo and Mallory sign up and log in", heading=True)
        for name, email in CUSTOMERS.items():
            account = {"email": email, "name": name, "password": f"{name.lower()}-secret-1"}
            await self.api.call("POST", "/users", body=account, expect=201, say=name)
            login = {"email": email, "password": account["password"]}
            session = await self.api.call("POST", "/sessions", body=login, expect=201)
            self.api.tokens[name] = session["token"]

    async def order(self) -> None:
        """Three orders; Ben's takes the caps below the low-stock threshold."""
        self.api.timeline.note(
            "== Ada, Ben and Mallory order (Ben's caps leave 3 in stock)", heading=True
        )
        baskets = {
            "Ada": [("MUG-01", 2), ("CAP-01", 1)],
            "Ben": [("TEE-01", 1), ("CAP-01", 2)],
            "Mallory": [("BAG-01", 1)],
        }
        for name, lines in baskets.items():
            items = [{"sku": sku, "quantity": quantity} for sku, quantity in lines]
            body = {"items": items, "ship_to": {"name": name, **ADDRESS}}
            order = await self.api.call(
                "POST", "/orders", who=name, body=body, expect=201, say=name
            )
            self.orders[name] = order["order_id"]

    async def pay(self) -> None:
        """Ada's card is approved; Ben's is declined, which cancels his order at once."""
        self.api.timeline.note(
            "== Ada pays; Ben's card is declined (insufficient funds)", heading=True
        )
        path = f"/orders/{self.orders['Ada']}/pay"
        await self.api.call("POST", path, who="Ada", body={"card_number": CARD_OK}, say="Ada")
        path = f"/orders/{self.orders['Ben']}/pay"
        card = {"card_number": CARD_NO_FUNDS}
        await self.api.call("POST", path, who="Ben", body=card, expect=402, say="Ben")

    async def review(self) -> None:
        """Ada and Cleo review the mug."""
        self.api.timeline.note("== Ada and Cleo review the enamel mug", heading=True)
        for name, rating in (("Ada", 5), ("Cleo", 4)):
            body = {"rating": rating, "comment": "Keeps coffee hot"}
            await self.api.call(
                "POST", "/products/MUG-01/reviews", who=name, body=body, expect=201, say=name
            )

    async def ban(self) -> None:
        """An admin bans Mallory; her very next request is refused."""
        self.api.timeline.note(
            "== An admin bans Mallory; her very next request is refused", heading=True
        )
        me = await self.api.call("GET", "/users/me", who="Mallory")
        body = {"reason": "payment fraud"}
        path = f"/admin/users/{me['user_id']}/ban"
        await self.api.call("POST", path, who="admin", body=body, say="admin")
        path = f"/orders/{self.orders['Mallory']}/pay"
        card = {"card_number": CARD_OK}
        await self.api.call("POST", path, who="Mallory", body=card, expect=403, say="Mallory")


async def _delete_keys(url: str, prefix: str) -> None:
    """Remove the demo's keys from Redis."""
    import redis.asyncio as aioredis  # the redis extra, present when Redis is used

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
