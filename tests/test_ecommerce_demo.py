"""``python -m examples.ecommerce``: the demo's story and the command line's refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^ *\d+\.\d  ([A-Z]\w+) +([a-z]+-[0-9a-f]+) +([a-z]+) +(\d|-)  (\S.*)$")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m examples.ecommerce ARGS`` (without a terminal: no colour)."""
    return subprocess.run(
        [sys.executable, "-m", "examples.ecommerce", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def demo() -> str:
    """The demo's output (``run`` fails it after 60 s: a guard against a hang)."""
    result = run("demo")
    assert result.returncode == 0, result.stderr
    return result.stdout


def timeline(out: str) -> list[tuple[str, str, str, str, str]]:
    """The event rows of the timeline: event, correlation, group, try, outcome."""
    rows = []
    for line in out.splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match[1], match[2], match[3], match[4], match[5]))
    return rows


def test_the_demo_shows_every_event_with_its_group_retries_and_dead_letter(
    demo: str,
) -> None:
    """Each of the seven events is published and handled; one mail is dead-lettered."""
    rows = timeline(demo)
    published = {event for event, _, _, _, outcome in rows if outcome.startswith("published")}
    assert published == {
        "UserRegistered",
        "OrderCreated",
        "OrderPaid",
        "PaymentFailed",
        "ProductReviewed",
        "StockLow",
        "UserBanned",
    }
    handled = {(event, group) for event, _, group, _, outcome in rows if "handled" in outcome}
    assert ("StockLow", "admin") in handled
    assert ("OrderPaid", "shipping") in handled
    assert ("PaymentFailed", "products") in handled
    outcomes = [(event, group, outcome) for event, _, group, _, outcome in rows]
    assert ("UserBanned", "auth", "handled inside publish()") in outcomes
    assert ("PaymentFailed", "orders", "handled inside publish()") in outcomes
    assert any("will retry" in outcome for *_, outcome in outcomes)
    dead = [row for row in rows if row[4].startswith("dead letter")]
    assert [(event, group, attempt) for event, _, group, attempt, _ in dead] == [
        ("UserRegistered", "email", "4")
    ]


def test_the_demo_follows_one_order_by_its_correlation_id(demo: str) -> None:
    """Ben's order, its stock alert and its failed payment share one correlation id."""
    rows = timeline(demo)
    low = next(row for row in rows if row[0] == "StockLow")
    flow = {event for event, correlation, *_ in rows if correlation == low[1]}
    assert flow == {"OrderCreated", "StockLow", "PaymentFailed"}


def test_the_demo_prints_aligned_columns_without_colour(demo: str) -> None:
    """Every timeline row starts its columns at the header's offsets; no escape codes."""
    out = demo
    assert "\033[" not in out
    header = next(line for line in out.splitlines() if line.strip().startswith("ms  event"))
    starts = [header.index(title) for title in ("event", "correlation", "group")]
    lines = [line for line in out.splitlines() if ROW.match(line) and "published" in line]
    assert lines
    for line in lines:
        assert all(line[start - 2 : start] == "  " and line[start] != " " for start in starts)


def test_the_demo_ends_with_the_final_state(demo: str) -> None:
    """The summary shows each module's outcome."""
    out = demo
    summary = out.split("Final state", 1)[1]
    assert re.search(r"Ada +o-\w+ +40\.00 EUR +paid +shipment sh-\w+ ready to pick", summary)
    assert re.search(r"Ben +o-\w+ +49\.90 EUR +cancelled +insufficient funds", summary)
    assert "stock      BAG-01 29   CAP-01 5   MUG-01 38   TEE-01 25" in summary
    assert "ratings    MUG-01 4.50 from 2 review(s)" in summary
    assert "alerts     CAP-01 (Canvas cap) fell to 3, below 5" in summary
    assert "queued: cleo@mailhost.invalid, 4 attempts" in summary
    assert "4 users, 3 orders, 1 paid (40.00), 1 payment failed, 2 reviews, 1 ban" in summary
    assert "Mallory: POST /orders/" in out
    assert "-> 403 Forbidden" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("worker", "--group", "email"), "a worker needs Redis"),
        (("worker", "--redis-url", "redis://localhost:1/0"), "give --db PATH"),
        (("worker", "--redis-url", "redis://h:1/0", "--db", "x.db", "--group", "mail"), "mail"),
    ],
)
def test_the_command_line_refuses_what_cannot_work(args: tuple[str, ...], message: str) -> None:
    """A worker without Redis, without a shared database, or for an unknown group: exit 2."""
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_demo_prints_the_first_orders_trace() -> None:
    """demo --trace ends with Ada's order's trace: send, then a process span per group."""
    result = run("demo", "--trace")
    assert result.returncode == 0, result.stderr
    trace = result.stdout.split("The trace of the first OrderCreated")[1].splitlines()
    assert trace[1].strip().startswith("send OrderCreated")
    groups = {line.split("group ")[1].split(",")[0] for line in trace if "group " in line}
    assert groups == {"products", "email", "analytics"}
