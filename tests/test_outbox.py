"""The transactional outbox: an event exists if and only if the application's
transaction commits, and a relay publishes it with the id it got at write time."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import create_async_engine

from eventbus import (
    ConfigurationError,
    Envelope,
    Event,
    EventBus,
    InMemoryTransport,
    Middleware,
    Next,
    Observer,
    PublishError,
    TransportError,
)
from eventbus.outbox import Outbox
from eventbus.testing import drain
from eventbus.transports import Connection, Features, Message, Subscription, Transport
from eventbus.transports.redis import RedisTransport
from tests.databases import Database
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


async def create_orders(database: Database) -> Table:
    """Create the application's own table, written in the same transaction as the event."""
    name = f"orders_{database.outbox_table}"
    table = Table(name, MetaData(), Column("id", String(20), primary_key=True))
    async with database.engine.begin() as conn:
        await conn.run_sync(table.create, checkfirst=True)
    return table


def outbox_of(database: Database, **options: Any) -> Outbox:
    """An outbox with the test's own table."""
    return Outbox(database.engine, table=database.outbox_table, **options)


def recording_bus(transport: Transport, outbox: Outbox | None, seen: list[Envelope]) -> EventBus:
    """A bus whose ``email`` group records the envelopes it handles."""
    bus = EventBus(transport=transport, outbox=outbox)

    @bus.subscribe(group="email")
    async def send_confirmation(event: OrderCreated, context: Any) -> None:
        seen.append(context.envelope)

    return bus


async def test_an_event_published_in_a_committed_transaction_is_handled_with_its_id(
    database: Database,
) -> None:
    """The order and its event commit together; the handler sees the id publish returned."""
    orders = await create_orders(database)
    seen: list[Envelope] = []
    async with recording_bus(InMemoryTransport(), outbox_of(database), seen) as bus:
        async with database.engine.begin() as conn:
            await conn.execute(orders.insert().values(id="o-1"))
            envelope = await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
        await drain(bus)
    assert [e.id for e in seen] == [envelope.id]
    assert seen[0].correlation_id == envelope.correlation_id


async def test_a_rolled_back_transaction_publishes_nothing(database: Database) -> None:
    """An exception inside the transaction rolls back the order and its event alike."""
    orders = await create_orders(database)
    seen: list[Envelope] = []
    outbox = outbox_of(database)
    async with recording_bus(InMemoryTransport(), outbox, seen) as bus:

        async def place_order_then_fail() -> None:
            async with database.engine.begin() as conn:
                await conn.execute(orders.insert().values(id="o-1"))
                await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
                raise RuntimeError("payment declined")

        with pytest.raises(RuntimeError, match="payment declined"):
            await place_order_then_fail()
        await drain(bus)
        assert await outbox.pending() == 0
    assert seen == []
    async with database.engine.connect() as conn:
        assert (await conn.execute(select(orders))).all() == []


async def test_a_commit_wakes_the_relay_without_waiting_for_the_poll(database: Database) -> None:
    """With a poll interval of a minute, a local commit still reaches the handler at once."""
    seen: list[Envelope] = []
    outbox = outbox_of(database, poll_interval=60)
    async with recording_bus(InMemoryTransport(), outbox, seen) as bus:
        for count in (1, 2):  # the first may meet the relay's first look; the second not
            async with database.engine.begin() as conn:
                await bus.publish(OrderCreated(order_id=f"o-{count}"), transaction=conn)
            await wait_for(lambda: len(seen) == count, 10, "the event to be handled")  # noqa: B023 - read at once


async def test_a_session_is_a_transaction_too(database: Database) -> None:
    """An AsyncSession's transaction carries the event like a connection's."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    seen: list[Envelope] = []
    sessions = async_sessionmaker(database.engine)
    async with recording_bus(InMemoryTransport(), outbox_of(database), seen) as bus:
        async with sessions() as session, session.begin():
            await bus.publish(OrderCreated(order_id="o-1"), transaction=session)
        await drain(bus)
    assert len(seen) == 1


async def test_rows_committed_elsewhere_are_found_by_polling(database: Database) -> None:
    """A bus that only writes (relay=False) leaves its rows to another process's relay."""
    seen: list[Envelope] = []
    transport = InMemoryTransport()
    writer = EventBus(transport=transport, outbox=outbox_of(database, relay=False))
    relaying = recording_bus(transport, outbox_of(database, poll_interval=0.05), seen)
    async with relaying, writer:
        async with database.engine.begin() as conn:
            await writer.publish(OrderCreated(order_id="o-1"), transaction=conn)
        await wait_for(lambda: len(seen) == 1, 10, "the relay to poll the row")


async def test_events_are_published_in_the_order_they_were_written(database: Database) -> None:
    """A batch of one transaction and the transactions after it keep their order."""
    seen: list[Envelope] = []
    async with recording_bus(InMemoryTransport(), outbox_of(database, batch_size=7), seen) as bus:
        async with database.engine.begin() as conn:
            first = await bus.publish_many(
                [OrderCreated(order_id=f"o-{i}") for i in range(20)], transaction=conn
            )
        async with database.engine.begin() as conn:
            second = await bus.publish(OrderCreated(order_id="o-20"), transaction=conn)
        await drain(bus)
    assert [e.id for e in seen] == [e.id for e in first] + [second.id]


async def test_two_relays_never_publish_a_row_twice(database: Database) -> None:
    """Two relays with small batches share 600 committed rows: each is published once."""
    transport = InMemoryTransport()
    writer = EventBus(transport=transport, outbox=outbox_of(database, relay=False))
    published: Counter[str] = Counter()

    class Counting(Observer):
        def on_outcome(self, outcome: Any) -> None:
            published[outcome.envelope.id] += 1

    consumer = EventBus(transport=transport, observers=[Counting()])

    @consumer.subscribe(group="count")
    async def count(event: OrderCreated) -> None:
        pass

    async with consumer, writer:
        ids: list[str] = []
        for chunk in range(6):
            async with database.engine.begin() as conn:
                envelopes = await writer.publish_many(
                    [OrderCreated(order_id=f"o-{chunk}-{i}") for i in range(100)],
                    transaction=conn,
                )
            ids += [e.id for e in envelopes]
        relays = [
            EventBus(transport=transport, outbox=outbox_of(database, batch_size=25))
            for _ in range(2)
        ]
        async with relays[0], relays[1]:
            await wait_for(lambda: len(published) == len(ids), 30, "every row to be handled")
            await drain(consumer)
    assert sorted(published) == sorted(ids)
    assert set(published.values()) == {1}


class Flaky:
    """A transport whose publishes fail while ``down`` is set."""

    def __init__(self) -> None:
        self.inner = InMemoryTransport(serialize=True)
        self.down = True
        self.refused = 0

    @property
    def features(self) -> Features:
        return self.inner.features

    async def connect(self) -> Connection:
        return FlakyConnection(self, await self.inner.connect())


class FlakyConnection:
    """Delegates to the in-memory connection, failing publishes while the transport is down."""

    def __init__(self, transport: Flaky, inner: Connection) -> None:
        self._transport = transport
        self._inner = inner

    async def publish(self, topic: str, message: Message, *, timeout: float | None = None) -> str:
        if self._transport.down:
            self._transport.refused += 1
            raise TransportError("the broker is down")
        return await self._inner.publish(topic, message, timeout=timeout)

    async def subscribe(self, topic: str, group: str) -> Subscription:
        return await self._inner.subscribe(topic, group)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_rows_stay_while_the_transport_fails_and_go_once_it_is_back(
    database: Database,
) -> None:
    """A failing transport leaves the rows in the table; the relay publishes them later."""
    transport = Flaky()
    outbox = outbox_of(database, poll_interval=0.05)
    seen: list[Envelope] = []
    async with recording_bus(transport, outbox, seen) as bus:
        async with database.engine.begin() as conn:
            await bus.publish_many(
                [OrderCreated(order_id=f"o-{i}") for i in range(3)], transaction=conn
            )
        await wait_for(lambda: transport.refused >= 2, 10, "the relay to try twice")
        assert await outbox.pending() == 3
        transport.down = False
        await wait_for(lambda: len(seen) == 3, 10, "the rows to be published and handled")

        async def emptied() -> bool:  # the relay deletes the rows after publishing them
            return await outbox.pending() == 0

        await wait_for(emptied, 10, "the relay to delete the published rows")


async def test_publish_with_a_transaction_needs_an_outbox() -> None:
    """A bus without an outbox refuses transaction= and says how to add one."""
    async with EventBus() as bus:
        with pytest.raises(ConfigurationError, match=r"outbox=Outbox\(engine\)"):
            await bus.publish(OrderCreated(order_id="o-1"), transaction=object())


async def test_a_transaction_must_be_a_connection_or_session_of_the_outbox_engine(
    database: Database, tmp_path: Any
) -> None:
    """Something that is not a transaction, or one of another engine, is a PublishError."""
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        async with EventBus(outbox=outbox_of(database)) as bus:
            with pytest.raises(PublishError, match="AsyncConnection or AsyncSession"):
                await bus.publish(OrderCreated(order_id="o-1"), transaction="conn")
            async with other.begin() as conn:
                with pytest.raises(PublishError, match="engine given to the outbox"):
                    await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
    finally:
        await other.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
    ],
)
async def test_bad_outbox_options_are_refused(
    database: Database, options: dict[str, Any], message: str
) -> None:
    """Each bad option raises a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=message):
        outbox_of(database, **options)


def test_an_outbox_needs_an_async_engine() -> None:
    """A URL or a sync engine is refused with the way to make an async one."""
    with pytest.raises(ConfigurationError, match="create_async_engine"):
        Outbox("postgresql://localhost/app")


async def test_middleware_and_observers_see_an_event_written_to_the_outbox(
    database: Database,
) -> None:
    """on_publish wraps the outbox write; observers hear of it once it is written."""
    calls: list[str] = []

    class Tracing(Middleware):
        async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
            calls.append("before")
            await call_next()
            calls.append("after")

    class Told(Observer):
        def on_published(self, event: Event, envelope: Envelope) -> None:
            calls.append("published")

    bus = EventBus(outbox=outbox_of(database), middleware=[Tracing()], observers=[Told()])
    async with bus, database.engine.begin() as conn:
        await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
    assert calls == ["before", "after", "published"]


async def test_immediate_subscribers_run_inside_the_open_transaction(database: Database) -> None:
    """An immediate subscriber runs within publish(), before the transaction commits."""
    orders = await create_orders(database)
    counted: list[int] = []
    bus = EventBus(outbox=outbox_of(database))
    transaction: list[Any] = []

    @bus.subscribe(group="audit", mode="immediate")
    async def audit(event: OrderCreated) -> None:
        rows = (await transaction[0].execute(select(orders))).all()
        counted.append(len(rows))

    async with bus, database.engine.begin() as conn:
        transaction.append(conn)
        await conn.execute(orders.insert().values(id="o-1"))
        await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
    assert counted == [1]


async def test_drain_publishes_what_was_committed_before_waiting(database: Database) -> None:
    """drain() right after a commit hands the row over and waits for its handling."""
    seen: list[Envelope] = []
    outbox = outbox_of(database, poll_interval=60)
    async with recording_bus(InMemoryTransport(), outbox, seen) as bus:
        async with database.engine.begin() as conn:
            await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
        await bus.drain(timeout=10)
        assert len(seen) == 1


async def test_leaving_the_bus_publishes_what_was_committed(database: Database) -> None:
    """Closing a publish-only bus hands its committed rows to the transport first."""
    transport = InMemoryTransport()
    seen: list[Envelope] = []
    consumer = recording_bus(transport, None, seen)
    async with consumer:
        async with (
            EventBus(transport=transport, outbox=outbox_of(database, poll_interval=60)) as api,
            database.engine.begin() as conn,
        ):
            await api.publish(OrderCreated(order_id="o-1"), transaction=conn)
        await drain(consumer)
    assert len(seen) == 1


async def test_a_writer_killed_right_after_commit_loses_no_event(
    database: Database, redis_server: RedisServer
) -> None:
    """kill -9 right after commit: a later relay publishes every committed id."""
    prefix = f"outbox-kill-{database.outbox_table}"
    args = [database.url, database.outbox_table, redis_server.url, prefix, "200"]
    writer = await anyio.run_process(
        [sys.executable, "-m", "tests.outbox_writer", *args], check=False
    )
    assert writer.returncode == -signal.SIGKILL, writer.stderr.decode()
    committed = writer.stdout.decode().split()
    assert len(committed) == 200
    seen: list[Envelope] = []
    transport = RedisTransport(redis_server.url, prefix=prefix)
    outbox = outbox_of(database)
    async with recording_bus(transport, outbox, seen) as bus:
        await bus.drain(timeout=30)
        assert await outbox.pending() == 0
    assert sorted({e.id for e in seen}) == sorted(committed)


def test_a_bus_with_an_outbox_refuses_to_start_on_trio(tmp_path: Any) -> None:
    """SQLAlchemy's asyncio extension needs asyncio: starting on trio says so."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")

    async def start() -> None:
        async with EventBus(outbox=Outbox(engine)):
            raise AssertionError("started")

    with pytest.raises(ConfigurationError, match="asyncio only"):
        anyio.run(start, backend="trio")


async def test_a_row_that_is_not_a_message_is_set_aside_and_the_relay_goes_on(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A row that is not a message is logged once and left; the others are published."""
    seen: list[Envelope] = []
    outbox = outbox_of(database, poll_interval=0.05)
    async with recording_bus(InMemoryTransport(), outbox, seen) as bus:
        async with database.engine.begin() as conn:
            await conn.execute(
                outbox.table.insert().values(
                    event_id="x", topic="OrderCreated", headers="{not json", body=b"{}",
                    created_at=datetime.now(UTC),
                )
            )  # fmt: skip
            await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
        await bus.drain(timeout=10)
        await bus.drain(timeout=10)
        assert await outbox.pending() == 1
    assert [e.name for e in seen] == ["OrderCreated"]
    errors = [r for r in caplog.records if "is not a message" in r.getMessage()]
    assert len(errors) == 1


async def test_publish_many_of_nothing_in_a_transaction_writes_nothing(database: Database) -> None:
    """An empty batch is no error and leaves the transaction usable."""
    orders = await create_orders(database)
    async with EventBus(outbox=outbox_of(database)) as bus, database.engine.begin() as conn:
        assert await bus.publish_many([], transaction=conn) == []
        await conn.execute(orders.insert().values(id="o-1"))


async def test_an_event_a_middleware_keeps_back_is_not_reported_or_run(
    database: Database,
) -> None:
    """A middleware that does not call next: no row, no observer, no immediate subscriber."""
    calls: list[str] = []

    class Drop(Middleware):
        async def on_publish(self, event: Event, envelope: Envelope, call_next: Next) -> None:
            calls.append("dropped")

    class Told(Observer):
        def on_published(self, event: Event, envelope: Envelope) -> None:
            calls.append("published")

    outbox = outbox_of(database)
    bus = EventBus(outbox=outbox, middleware=[Drop()], observers=[Told()])

    @bus.subscribe(group="audit", mode="immediate")
    async def audit(event: OrderCreated) -> None:
        calls.append("immediate")

    async with bus, database.engine.begin() as conn:
        await bus.publish(OrderCreated(order_id="o-1"), transaction=conn)
    assert calls == ["dropped"]
    assert await outbox.pending() == 0


def test_importing_the_outbox_without_sqlalchemy_names_the_extra() -> None:
    """Without SQLAlchemy, `import eventbus.outbox` says which extra to install."""
    code = "import sys; sys.modules['sqlalchemy'] = None; import eventbus.outbox"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert 'pip install "eventbus[outbox]"' in result.stderr
