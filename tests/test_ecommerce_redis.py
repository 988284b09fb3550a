"""The e-commerce story across processes on a private Redis: the API in this process,
consumer groups in ``python -m examples.ecommerce worker`` subprocesses."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from eventbus.testing import drain
from examples.ecommerce.app import create_app
from examples.ecommerce.events import OrderCreated
from examples.ecommerce.inprocess import in_process
from examples.ecommerce.settings import Settings
from examples.ecommerce.shop import Shop
from tests.redis_server import RedisServer
from tests.test_ecommerce_api import ADMIN, CARD_NO_FUNDS, CARD_OK, Client
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
GROUPS = (("products", "shipping", "admin"), ("email", "analytics"))
Worker = subprocess.Popen[str]


@pytest.fixture
def anyio_backend() -> str:
    """The Redis transport runs on asyncio."""
    return "asyncio"


def start_worker(
    url: str,
    db: Path,
    prefix: str,
    name: str,
    groups: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> Worker:
    """Start a worker process (``env``: extra environment) and wait for its ready line."""
    command = [sys.executable, "-m", "examples.ecommerce", "worker", "--redis-url", url]
    command += ["--db", str(db), "--prefix", prefix, "--name", name, "--group", *groups]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    if "ecommerce worker ready" not in ready:
        process.kill()
        _, errors = process.communicate(timeout=10)
        pytest.fail(f"worker {name} did not start: {ready}{errors}")
    return process


def stop(worker: Worker) -> tuple[int, str, str]:
    """SIGTERM a worker; its exit code, stdout and stderr."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=20)
    return worker.returncode, out, err


@pytest.fixture
def story_settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    """Settings of the API process: the private Redis, a fresh prefix, a database file."""
    return Settings(
        db_path=str(tmp_path / "shop.db"),
        redis_url=redis_server.url,
        redis_prefix=f"shop-{secrets.token_hex(3)}",
        admin_token="admin-secret",
        password_cost=16,
    )


@pytest.fixture
def workers(story_settings: Settings) -> Iterator[list[Worker]]:
    """Two worker processes sharing the background groups; stopped after the test."""
    url, db = story_settings.redis_url, Path(story_settings.db_path)
    assert url is not None
    started: list[Worker] = []
    try:
        for number, groups in enumerate(GROUPS, 1):
            prefix = story_settings.redis_prefix
            started.append(start_worker(url, db, prefix, f"worker-{number}", groups))
        yield started
    finally:
        for worker in started:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=10)


async def test_the_story_runs_across_processes_on_redis(
    story_settings: Settings, workers: list[Worker]
) -> None:
    """Workers in other processes do the background work; the ban acts in the API's."""
    shop = Shop(story_settings, groups=())  # the API process publishes only
    async with in_process(create_app(shop=shop)) as http:
        api = Client(shop, http)
        ada, ben = await api.customer("Ada"), await api.customer("Ben")
        paid = await api.order(ada, CAP_01=2, MUG_01=1)
        declined = await api.order(ben, TEE_01=3)
        await drain(shop.bus, timeout=20)  # the workers reserved the stock
        assert (await api.pay(ada, paid["order_id"], CARD_OK)).status_code == 200
        assert (await api.pay(ben, declined["order_id"], CARD_NO_FUNDS)).status_code == 402
        review = await http.post("/products/MUG-01/reviews", json={"rating": 4}, headers=ada)
        assert review.status_code == 201
        me = await api.get("/users/me", ben)
        ban = await http.post(
            f"/admin/users/{me['user_id']}/ban", json={"reason": "fraud"}, headers=ADMIN
        )
        assert ban.status_code == 200
        assert (await http.get("/users/me", headers=ben)).status_code == 403

        await drain(shop.bus, timeout=20)
        assert [await api.stock(sku) for sku in ("CAP-01", "MUG-01", "TEE-01")] == [4, 39, 25]
        assert (await api.get("/products/MUG-01"))["rating"] == "4.00"
        assert [a["sku"] for a in await api.get("/admin/alerts")] == ["CAP-01"]
        shipment = await api.get(f"/orders/{paid['order_id']}/shipment", ada)
        assert shipment["status"] == "ready to pick"
        outbox = await api.get("/admin/outbox")
        figures = await api.get("/analytics")
        assert await api.get("/admin/dead-letters") == []
    assert {m["status"] for m in outbox} == {"sent"}
    assert len(outbox) == 6  # 2 welcomes, 2 confirmations, 1 declined, 1 suspended
    assert (figures["orders_created"], figures["orders_paid"], figures["bans"]) == (2, 1, 1)
    for worker in workers:
        code, out, err = stop(worker)
        assert code == 0, err
        assert "handled" in out
        assert "SIGTERM: stopping" in out


def test_the_demo_runs_on_redis_and_removes_its_keys(redis_server: RedisServer) -> None:
    """``demo --redis-url`` tells the same story over Redis and cleans up after itself."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.ecommerce", "demo", "--redis-url", redis_server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "transport Redis (prefix ecommerce-demo-" in result.stdout
    assert "handled inside publish()" in result.stdout
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(match="ecommerce-demo-*")) == []
    finally:
        client.close()


def mails(log: Path) -> Counter[str]:
    """How many times the mail server took each message, by its key."""
    if not log.exists():
        return Counter()
    lines = log.read_text(encoding="utf-8").splitlines()
    return Counter(json.loads(line)["key"] for line in lines if line.endswith("}"))


def sent_at_least(log: Path, count: int) -> bool:
    """Whether the mail server took at least ``count`` messages."""
    return sum(mails(log).values()) >= count


def settled(client: Any, stream: str, group: str) -> bool:
    """Whether ``group`` has read and acknowledged every entry of ``stream``."""
    info = next(g for g in client.xinfo_groups(stream) if g["name"] == group)
    return bool(info["pending"] == 0 and info["lag"] == 0)


async def test_email_workers_killed_mid_flight_send_each_confirmation_once(
    story_settings: Settings, tmp_path: Path
) -> None:
    """Email worker killed twice mid-send, an event repeated: each mail sent once."""
    url, db, prefix = (
        story_settings.redis_url,
        Path(story_settings.db_path),
        story_settings.redis_prefix,
    )
    assert url is not None
    log = tmp_path / "mail.jsonl"
    env = {"ECOMMERCE_MAIL_LOG": str(log), "ECOMMERCE_MAIL_LATENCY": "0.02"}
    env["ECOMMERCE_MAIL_FAIL_EVERY"] = "0"
    stream = f"{prefix}:{{{OrderCreated.event_name}}}"
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    shop = Shop(story_settings, groups=())
    worker: Worker | None = None
    try:
        async with in_process(create_app(shop=shop)) as http:
            api = Client(shop, http)
            ada = await api.customer("Ada")
            orders = [(await api.order(ada, MUG_01=1))["order_id"] for _ in range(120)]
            expected = {f"order:{order_id}" for order_id in orders}
            held_at_kill = []
            for sent_before_kill in (30, 70):
                worker = start_worker(url, db, prefix, "mailer", ("email",), env)
                await wait_for(partial(sent_at_least, log, sent_before_kill), 30, "mails")
                worker.kill()  # SIGKILL: nothing is flushed, nothing is acked on the way out
                worker.communicate(timeout=10)
                held_at_kill.append(client.xpending(stream, "email")["pending"])
            worker = start_worker(url, db, prefix, "mailer", ("email",), env)
            await wait_for(lambda: expected <= set(mails(log)), 30, "every confirmation")
            await wait_for(lambda: settled(client, stream, "email"), 30, "the acks")

            # the relay's repeat: the same envelope (same event id) stored a second time
            _, fields = client.xrange(stream, count=1)[0]
            client.xadd(stream, fields)
            await wait_for(lambda: settled(client, stream, "email"), 30, "the repeat's ack")
            assert await api.get("/admin/dead-letters") == []
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)
        client.close()
    sent = mails(log)
    assert all(count > 0 for count in held_at_kill), held_at_kill  # each kill left work
    assert {key for key in sent if key.startswith("order:")} == expected
    assert [key for key, count in sent.items() if count > 1] == []
