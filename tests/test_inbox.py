"""The inbox: a handler's effect and the record of the event commit together, so a
redelivered event has no second effect."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from eventbus import (
    ConfigurationError,
    Context,
    Envelope,
    EventBus,
    RetryPolicy,
)
from eventbus.outbox import Inbox
from eventbus.testing import drain
from tests.databases import Database
from tests.events import OrderCreated

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


async def make_inbox(database: Database) -> Inbox:
    """An inbox with the test's own table, created."""
    inbox = Inbox(database.engine, table=database.inbox_table)
    await inbox.create_table()
    return inbox


def context_for(group: str, event_id: str | None = None) -> Context:
    """The context a handler of ``group`` gets for one event."""
    event_id = event_id or str(uuid.uuid4())
    envelope = Envelope(event_id, "OrderCreated", 1, datetime.now(UTC), event_id)

    async def publish(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not used")

    return Context(envelope, group, publish)


async def test_the_first_claim_of_an_event_wins_and_a_repeat_is_refused(
    database: Database,
) -> None:
    """A second claim of the same group and event id, after the first committed, is False."""
    inbox = await make_inbox(database)
    context = context_for("billing")
    answers = []
    for _ in range(2):
        async with database.engine.begin() as conn:
            answers.append(await inbox.claim(conn, context))
    assert answers == [True, False]


async def test_groups_claim_the_same_event_apart(database: Database) -> None:
    """Each group records its own handling of one event."""
    inbox = await make_inbox(database)
    async with database.engine.begin() as conn:
        billing = await inbox.claim(conn, context_for("billing", "e-1"))
        email = await inbox.claim(conn, context_for("email", "e-1"))
    assert (billing, email) == (True, True)


async def test_a_rolled_back_claim_leaves_the_event_to_claim_again(database: Database) -> None:
    """When the effect's transaction rolls back, so does the record: the retry claims it."""
    inbox = await make_inbox(database)
    context = context_for("billing")

    async def claim_then_fail() -> None:
        async with database.engine.begin() as conn:
            assert await inbox.claim(conn, context)
            raise RuntimeError("the effect failed")

    with pytest.raises(RuntimeError, match="the effect failed"):
        await claim_then_fail()
    async with database.engine.begin() as conn:
        assert await inbox.claim(conn, context)


async def test_a_redelivered_event_has_its_effect_once(database: Database) -> None:
    """A retry after a committed effect finds the inbox record and writes nothing."""
    inbox = await make_inbox(database)
    invoices = Table(
        f"invoices_{database.inbox_table}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("order_id", String(20)),
    )
    async with database.engine.begin() as conn:
        await conn.run_sync(invoices.create)
    bus = EventBus()
    attempts: list[int] = []

    @bus.subscribe(group="billing", retry=RetryPolicy(max_attempts=3, initial_delay=0))
    async def charge(event: OrderCreated, context: Context) -> None:
        attempts.append(context.attempt)
        async with database.engine.begin() as conn:
            if await inbox.claim(conn, context):
                await conn.execute(invoices.insert().values(order_id=event.order_id))
        if context.attempt == 1:
            raise ConnectionError("the worker lost its broker before the ack")

    async with bus:
        await bus.publish(OrderCreated(order_id="o-1"))
        await drain(bus)
    async with database.engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(invoices))
    assert (attempts, count) == ([1, 2], 1)


async def test_a_claim_in_flight_makes_the_second_claimant_wait_then_lose(
    database: Database,
) -> None:
    """A second claim of one event waits for the first's commit, then gets False."""
    inbox = await make_inbox(database)
    context = context_for("billing")
    second: list[bool] = []
    async with database.engine.begin() as first:
        assert await inbox.claim(first, context)
        async with anyio.create_task_group() as tasks:

            async def claim_again() -> None:
                async with database.engine.begin() as conn:
                    second.append(await inbox.claim(conn, context))

            tasks.start_soon(claim_again)
            await first.commit()
    assert second == [False]


async def test_claim_refuses_what_is_not_a_context_or_a_transaction(database: Database) -> None:
    """A bad argument gets a clear error, before anything is written."""
    inbox = await make_inbox(database)
    async with database.engine.begin() as conn:
        with pytest.raises(ConfigurationError, match="Context"):
            await inbox.claim(conn, "e-1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="AsyncConnection or AsyncSession"):
        await inbox.claim(None, context_for("billing"))


async def test_prune_deletes_records_older_than_asked(database: Database) -> None:
    """Old records go; a window longer than their age keeps them."""
    inbox = await make_inbox(database)
    async with database.engine.begin() as conn:
        await inbox.claim(conn, context_for("billing", "e-1"))
    assert await inbox.prune(older_than=3600) == 0
    assert await inbox.prune(older_than=0) == 1
    with pytest.raises(ConfigurationError, match="older_than"):
        await inbox.prune(older_than=-1)


async def test_creating_the_table_twice_is_harmless(database: Database) -> None:
    """create_table() checks first."""
    inbox = await make_inbox(database)
    await inbox.create_table()
    async with database.engine.begin() as conn:
        assert await inbox.claim(conn, context_for("billing"))


def test_an_inbox_needs_an_async_engine() -> None:
    """Anything but an AsyncEngine is refused."""
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        Inbox(object())
