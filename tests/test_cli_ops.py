"""The operator's commands against a private Redis with a real worker process:
``eventbus dead-letters list|show|replay|purge`` and ``eventbus graph``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from eventbus import EventBus
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.test_worker_cli import Process
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.worker_app:make_bus"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``eventbus ARGS`` with the worker app's environment."""
    return subprocess.run(
        [sys.executable, "-m", "eventbus", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dead_letters_are_listed_shown_replayed_once_fixed_and_purged(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two events fail into the dead letters; the CLI lists and shows them, a dry run
    changes nothing, a replay after the fix gets them handled, purge asks for --yes."""
    broken = tmp_path / "mail-server-down"
    broken.touch()
    env = {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": f"ops{secrets.token_hex(3)}",
        "EVENTBUS_TEST_LEDGER": str(tmp_path / "ledger"),
        "EVENTBUS_TEST_FAIL": str(broken),
    }
    worker = Process(tmp_path, env, APP)
    transport = RedisTransport(redis_server.url, prefix=env["EVENTBUS_TEST_PREFIX"])
    ledger = tmp_path / "ledger"

    def done(order: str) -> bool:
        return ledger.exists() and f"done {order} " in ledger.read_text()

    async def fail_two() -> None:
        await wait_for(lambda: worker.ready(), 20, "the worker")
        async with EventBus(transport=transport) as bus:
            await bus.publish_many([OrderCreated(order_id=o) for o in ("fail-1", "fail-2", "ok")])

            async def two_dead() -> bool:
                return len(await bus.dead_letters("ledger")) == 2

            await wait_for(two_dead, 20, "two dead letters")

    try:
        anyio.run(fail_two)
        listed = cli(env, "dead-letters", "list", APP, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert sorted(r["reason"] for r in rows) == ["retries-exhausted"] * 2
        assert "fail-1" not in listed.stdout  # no payload in a list
        shown = cli(env, "dead-letters", "show", APP, rows[0]["id"])
        assert "the mail server is down" in shown.stdout
        assert '"order_id":"fail-' in shown.stdout.replace(" ", "")
        dry = cli(env, "dead-letters", "replay", APP, "--dry-run")
        assert dry.stdout.startswith("would replay 2 dead letter(s)")
        refused = cli(env, "dead-letters", "purge", APP)
        assert refused.returncode == 2
        assert "add --yes" in refused.stdout
        broken.unlink()
        replayed = cli(env, "dead-letters", "replay", APP, "--group", "ledger")
        assert replayed.stdout.startswith("replayed 2 dead letter(s)"), replayed.stderr
        anyio.run(wait_for, lambda: done("fail-1") and done("fail-2"), 20, "the replays")
        empty = cli(env, "dead-letters", "list", APP)
        assert empty.stdout.strip().endswith("0 dead letter(s)")
        missing = cli(env, "dead-letters", "show", APP, "no-such-id")
        assert missing.returncode == 3
        purged = cli(env, "dead-letters", "purge", APP, "--yes")
        assert purged.returncode == 0
    finally:
        worker.stop()


def test_graph_draws_the_events_and_groups_of_a_bus(redis_server: RedisServer) -> None:
    """A Mermaid flowchart: one node per event and group, one arrow per subscription."""
    env = {"EVENTBUS_TEST_REDIS_URL": redis_server.url}
    result = cli(env, "graph", "tests.worker_app:two_groups")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    e_OrderCreated["OrderCreated"]' in lines
    assert "    e_OrderCreated --> g_email" in lines
    assert "    e_OrderCreated --> g_stock" in lines


@pytest.mark.parametrize("args", [("dead-letters", "list"), ("graph",)])
def test_an_operator_command_on_a_missing_target_fails_clearly(args: tuple[str, ...]) -> None:
    """A target that cannot be imported: exit code 1 with one line."""
    result = cli({}, *args, "tests.no_such_module:bus")
    assert result.returncode == 1
    assert "cannot import tests.no_such_module" in result.stderr


def fresh_env(redis_server: RedisServer) -> dict[str, str]:
    """The two-group app's environment on a fresh prefix."""
    return {
        "EVENTBUS_TEST_REDIS_URL": redis_server.url,
        "EVENTBUS_TEST_PREFIX": f"ops{secrets.token_hex(3)}",
    }


def publish(env: dict[str, str], count: int) -> None:
    """Publish ``count`` orders from the app's API bus (consume=False: it declares the
    groups ``email`` and ``stock``), with no worker running."""
    transport = RedisTransport(env["EVENTBUS_TEST_REDIS_URL"], prefix=env["EVENTBUS_TEST_PREFIX"])
    api = EventBus(transport=transport, consume=False)
    for group in ("email", "stock"):

        @api.subscribe(group=group)
        async def handle(event: OrderCreated) -> None:
            raise AssertionError("an API bus consumes nothing")

    async def go() -> None:
        async with api:
            await api.publish_many([OrderCreated(order_id=f"o-{i}") for i in range(count)])

    anyio.run(go)


def test_inspect_shows_the_lag_of_groups_nobody_serves(redis_server: RedisServer) -> None:
    """Three events, no worker: each group of the app shows 3 waiting."""
    env = fresh_env(redis_server)
    publish(env, 3)
    result = cli(env, "inspect", "tests.worker_app:two_groups", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["group"]: row for row in json.loads(result.stdout)}
    assert {g: r["waiting"] for g, r in rows.items()} == {"email": 3, "stock": 3}
    table = cli(env, "inspect", "tests.worker_app:two_groups").stdout.splitlines()
    assert table[0].split() == [
        "event", "group", "waiting", "in_flight", "oldest_pending_s", "scheduled", "dead",
        "length", "consumers",
    ]  # fmt: skip


def test_groups_are_listed_reset_and_deleted_with_a_confirmation(
    redis_server: RedisServer,
) -> None:
    """reset and delete ask for --yes; a group that does not exist is exit code 3."""
    env = fresh_env(redis_server)
    publish(env, 2)
    app = "tests.worker_app:two_groups"
    listed = cli(env, "groups", app)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["group", "email", "stock"]
    unconfirmed = cli(env, "groups", app, "reset", "email")
    assert (unconfirmed.returncode, "add --yes" in unconfirmed.stdout) == (2, True)
    assert cli(env, "groups", app, "reset", "email", "--yes").returncode == 0
    assert cli(env, "groups", app, "delete", "stock", "--yes").returncode == 0
    assert cli(env, "groups", app, "delete", "nobody", "--yes").returncode == 3
    rows = json.loads(cli(env, "groups", app, "--json").stdout)
    waiting = {row["group"]: row["waiting"] for row in rows}
    assert waiting == {"email": 0}


def test_schema_gives_json_schemas_and_an_asyncapi_document(redis_server: RedisServer) -> None:
    """Every event's JSON Schema; AsyncAPI 3.0 names every event and group."""
    env = fresh_env(redis_server)
    app = "tests.worker_app:two_groups"
    schemas = json.loads(cli(env, "schema", app).stdout)
    assert schemas["OrderCreated"]["title"] == "OrderCreated"
    document = json.loads(cli(env, "schema", app, "--format", "asyncapi").stdout)
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == {"OrderCreated"}
    assert {"email-OrderCreated", "stock-OrderCreated"} <= set(document["operations"])
    assert "order_id" in document["components"]["messages"]["OrderCreated"]["payload"]["properties"]


def test_inspect_watch_prints_again_until_interrupted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """--watch 0.1 prints the table again and again; Ctrl-C ends it with exit code 0."""
    env = fresh_env(redis_server)
    publish(env, 1)
    output = tmp_path / "inspect.out"
    argv = ["inspect", "tests.worker_app:two_groups", "--watch", "0.1"]
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventbus", *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        anyio.run(wait_for, lambda: output.read_text().count("waiting") >= 2, 20, "two tables")
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=20)
    assert process.returncode == 0, errors
