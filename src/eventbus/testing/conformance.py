"""The transport conformance suite: one set of scenarios every transport must pass.

Subclass ``TransportConformance`` in a test module (the class name must start with
``Test`` for pytest to collect it) and provide a ``transport`` fixture that returns a
fresh, empty transport for each test::

    import pytest
    from eventbus.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport(self) -> MyTransport:
            return MyTransport(...)

The scenarios run with the anyio pytest plugin (an ``anyio_backend`` fixture chooses the
event loop). Scenarios that need a feature the transport does not declare in its
``Features`` skip themselves and say why. Override ``bounded_transport`` to return a
transport whose queue holds at most ``BOUNDED_CAPACITY`` messages, to run the
backpressure scenario. Requires pytest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

from eventbus._errors import PublishTimeoutError, TransportClosedError
from eventbus.transports._protocol import (
    Connection,
    Delivery,
    Message,
    StoredDeadLetter,
    Subscription,
    Transport,
)

__all__ = ["BOUNDED_CAPACITY", "TransportConformance"]

BOUNDED_CAPACITY = 5
_WAIT = 10.0


def message(index: int, **headers: str) -> Message:
    """A small test message whose body and headers carry ``index``."""
    return Message(b'{"i":%d}' % index, {"i": str(index), **headers})


def index_of_dead(dead: StoredDeadLetter) -> int:
    """The index of a dead letter's ``message(...)``."""
    return int(dead.message.headers["i"])


def index_of(delivery: Delivery) -> int:
    """The index a ``message(...)`` was made with."""
    return int(delivery.message.headers["i"])


async def receive(sub: Subscription, timeout: float = _WAIT) -> Delivery:
    """Receive one delivery, failing the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        delivery = await sub.receive()
    assert delivery is not None, "receive() returned None on an open subscription"
    return delivery


async def receive_and_ack(sub: Subscription, count: int) -> list[int]:
    """Receive and ack ``count`` deliveries; return their indexes in arrival order."""
    seen = []
    for _ in range(count):
        delivery = await receive(sub)
        seen.append(index_of(delivery))
        await sub.ack(delivery)
    return seen


async def nothing_within(sub: Subscription, seconds: float) -> bool:
    """True when ``sub`` delivers nothing for ``seconds`` (a bounded negative check)."""
    with anyio.move_on_after(seconds):
        await sub.receive()
        return False
    return True


async def publish_range(conn: Connection, topic: str, indexes: Sequence[int]) -> None:
    """Publish ``message(i)`` for each index, in order."""
    for i in indexes:
        await conn.publish(topic, message(i))


@asynccontextmanager
async def connected(transport: Transport) -> AsyncIterator[Connection]:
    """A connection with its background work running, as a bus would hold it."""
    conn = await transport.connect()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.serve)
            try:
                yield conn
            finally:
                tg.cancel_scope.cancel()
    finally:
        await conn.aclose()


class TransportConformance:
    """The scenarios. Subclasses provide the ``transport`` fixture."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def transport(self) -> Transport:
        """A fresh, empty transport. Subclasses must override this fixture."""
        raise NotImplementedError("provide a `transport` fixture")

    @pytest.fixture
    def bounded_transport(self) -> Transport:
        """A transport whose queue holds ``BOUNDED_CAPACITY`` messages (optional)."""
        pytest.skip("the test class provides no bounded_transport fixture")

    @pytest.fixture
    async def conn(self, transport: Transport) -> AsyncIterator[Connection]:
        """A connection to the transport, closed after the test."""
        async with connected(transport) as connection:
            yield connection

    async def test_round_trip_keeps_body_and_headers(self, conn: Connection) -> None:
        """A message arrives with its bytes, headers, topic and id intact, as attempt 1."""
        sub = await conn.subscribe("orders", "g")
        body = '{"name":"Zoë ✓","n":1}'.encode()
        headers = {"id": "0192-x", "name": "OrderCreated", "uni": "héllo wörld ✓", "empty": ""}
        message_id = await conn.publish("orders", Message(body, headers))
        delivery = await receive(sub)
        assert (delivery.message.body, dict(delivery.message.headers)) == (body, headers)
        assert (delivery.id, delivery.topic, delivery.attempt) == (message_id, "orders", 1)
        await sub.ack(delivery)

    async def test_publish_many_keeps_order_and_returns_ids(self, conn: Connection) -> None:
        """publish_many stores a batch in order and returns one id per message."""
        sub = await conn.subscribe("orders", "g")
        ids = await conn.publish_many([("orders", message(i)) for i in range(50)])
        assert len(set(ids)) == 50
        deliveries = [await receive(sub) for _ in range(50)]
        assert [index_of(d) for d in deliveries] == list(range(50))
        assert [d.id for d in deliveries] == ids
        for delivery in deliveries:
            await sub.ack(delivery)
        assert await conn.publish_many([]) == []

    async def test_no_loss_over_1000_events(self, conn: Connection) -> None:
        """1,000 published messages all reach the group, each once."""
        sub = await conn.subscribe("orders", "g")
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_range, conn, "orders", range(1000))
            seen = await receive_and_ack(sub, 1000)
        assert sorted(seen) == list(range(1000))
        with anyio.fail_after(_WAIT):
            await conn.wait_idle()

    async def test_concurrent_publishers_and_workers(self, transport: Transport) -> None:
        """Four publishers and three workers of one group: every message handled once."""
        seen: list[int] = []

        async def work(sub: Subscription) -> None:
            while (delivery := await sub.receive()) is not None:
                seen.append(index_of(delivery))
                await sub.ack(delivery)

        async with (
            connected(transport) as c0,
            connected(transport) as c1,
            connected(transport) as c2,
        ):
            conns = [c0, c1, c2]
            subs = [await c.subscribe("orders", "g") for c in conns]
            async with anyio.create_task_group() as workers:
                for sub in subs:
                    workers.start_soon(work, sub)
                async with anyio.create_task_group() as publishers:
                    for p in range(4):
                        conn = conns[p % 3]
                        publishers.start_soon(publish_range, conn, "orders", range(p, 400, 4))
                with anyio.fail_after(_WAIT):
                    await c0.wait_idle()
                for sub in subs:
                    await sub.aclose()
        assert sorted(seen) == list(range(400))

    async def test_topic_isolation(self, conn: Connection) -> None:
        """A group subscribed to one topic never receives another topic's messages."""
        orders = await conn.subscribe("orders", "g")
        await conn.publish("payments", message(1))
        await conn.publish("orders", message(2))
        delivery = await receive(orders)
        assert (index_of(delivery), delivery.topic) == (2, "orders")
        await orders.ack(delivery)
        assert await nothing_within(orders, 0.2)

    async def test_nack_redelivers_with_attempt_incremented(self, conn: Connection) -> None:
        """A nacked message comes back with the same id and body, attempt + 1, its notes."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(7))
        first = await receive(sub)
        await sub.nack(first, 0.0, {"first_failed_at": "t0"})
        second = await receive(sub)
        assert (second.id, index_of(second), second.attempt) == (first.id, 7, 2)
        assert dict(second.notes) == {"first_failed_at": "t0"}
        await sub.nack(second, 0.0, {"first_failed_at": "t0"})
        third = await receive(sub)
        assert third.attempt == 3
        await sub.ack(third)

    async def test_delayed_retry_does_not_block_the_group(self, conn: Connection) -> None:
        """While a retry waits for its delay, the next messages are delivered."""
        sub = await conn.subscribe("orders", "g")
        await publish_range(conn, "orders", [1, 2])
        first = await receive(sub)
        await sub.nack(first, 0.5, {})
        assert await receive_and_ack(sub, 1) == [2]
        retried = await receive(sub)
        assert (index_of(retried), retried.attempt) == (1, 2)
        await sub.ack(retried)

    async def test_due_retry_comes_before_new_messages(self, conn: Connection) -> None:
        """A retry that is due is delivered before messages published after it."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(0))
        await sub.nack(await receive(sub), 0.0, {})
        await publish_range(conn, "orders", [1, 2, 3])
        first = await receive(sub)
        assert (index_of(first), first.attempt) == (0, 2)
        await sub.ack(first)
        assert await receive_and_ack(sub, 3) == [1, 2, 3]

    async def test_retry_waits_for_its_delay(self, conn: Connection) -> None:
        """A message nacked with a delay is not redelivered before the delay."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(1))
        await sub.nack(await receive(sub), 0.6, {})
        assert await nothing_within(sub, 0.2)
        retried = await receive(sub)
        assert retried.attempt == 2
        await sub.ack(retried)

    async def test_groups_each_get_everything(self, conn: Connection) -> None:
        """Every group subscribed to a topic receives every message (pub/sub)."""
        email = await conn.subscribe("orders", "email")
        stock = await conn.subscribe("orders", "stock")
        await publish_range(conn, "orders", range(50))
        assert await receive_and_ack(email, 50) == list(range(50))
        assert await receive_and_ack(stock, 50) == list(range(50))

    async def test_members_of_a_group_share(self, transport: Transport) -> None:
        """Two consumers of one group share its messages, none given to both."""
        async with connected(transport) as a_conn, connected(transport) as b_conn:
            a = await a_conn.subscribe("orders", "g")
            b = await b_conn.subscribe("orders", "g")
            await publish_range(a_conn, "orders", range(100))
            first_a, first_b = await receive(a), await receive(b)
            assert first_a.id != first_b.id
            seen = {"a": [index_of(first_a)], "b": [index_of(first_b)]}
            await a.ack(first_a)
            await b.ack(first_b)

            async def work(name: str, sub: Subscription) -> None:
                while len(seen["a"]) + len(seen["b"]) < 100:
                    with anyio.move_on_after(0.5):
                        delivery = await sub.receive()
                        assert delivery is not None
                        seen[name].append(index_of(delivery))
                        await sub.ack(delivery)

            with anyio.fail_after(_WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(work, "a", a)
                    tg.start_soon(work, "b", b)
        assert sorted(seen["a"] + seen["b"]) == list(range(100))
        assert seen["a"]
        assert seen["b"]

    async def test_order_with_one_worker(self, conn: Connection) -> None:
        """One consumer receives a topic's messages in publish order."""
        sub = await conn.subscribe("orders", "g")
        await publish_range(conn, "orders", range(200))
        assert await receive_and_ack(sub, 200) == list(range(200))

    async def test_unacked_delivery_is_redelivered_after_close(self, transport: Transport) -> None:
        """A delivery that a closed consumer never acked goes to another consumer."""
        async with connected(transport) as b_conn:
            async with connected(transport) as a_conn:
                a = await a_conn.subscribe("orders", "g")
                await a_conn.publish("orders", message(1))
                held = await receive(a)
            b = await b_conn.subscribe("orders", "g")
            again = await receive(b)
            assert (again.id, index_of(again)) == (held.id, 1)
            await b.ack(again)

    async def test_close_is_idempotent(self, transport: Transport) -> None:
        """Closing a subscription or a connection twice is harmless."""
        conn = await transport.connect()
        sub = await conn.subscribe("orders", "g")
        await sub.aclose()
        await sub.aclose()
        await conn.aclose()
        await conn.aclose()

    async def test_close_while_a_worker_waits(self, conn: Connection) -> None:
        """A consumer blocked in receive() gets None promptly when the connection closes."""
        sub = await conn.subscribe("orders", "g")
        results: list[Delivery | None] = []

        async def wait_for_one() -> None:
            results.append(await sub.receive())

        with anyio.fail_after(_WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_one)
                await anyio.wait_all_tasks_blocked()
                await conn.aclose()
        assert results == [None]

    async def test_publish_after_close_raises(self, transport: Transport) -> None:
        """publish() and subscribe() on a closed connection raise TransportClosedError."""
        conn = await transport.connect()
        await conn.aclose()
        with pytest.raises(TransportClosedError):
            await conn.publish("orders", message(1))
        with pytest.raises(TransportClosedError):
            await conn.subscribe("orders", "g")

    async def test_dead_letters_list_replay_and_purge(self, conn: Connection) -> None:
        """Dead letters keep message and notes; replay goes to their group only; purge."""
        email = await conn.subscribe("orders", "email")
        stock = await conn.subscribe("orders", "stock")
        await publish_range(conn, "orders", [1, 2])
        assert await receive_and_ack(stock, 2) == [1, 2]
        first = await receive(email)
        await email.nack(first, 0.0, {})
        for _ in range(2):
            delivery = await receive(email)
            await email.dead_letter(delivery, {"reason": f"gave up on {index_of(delivery)}"})
        dead = sorted(await conn.dead_letters("email"), key=index_of_dead)
        assert [(index_of_dead(d), d.attempt, d.notes["reason"]) for d in dead] == [
            (1, 2, "gave up on 1"),
            (2, 1, "gave up on 2"),
        ]
        assert all(d.group == "email" and d.topic == "orders" for d in dead)
        assert await conn.dead_letters("stock") == []
        assert await conn.replay_dead_letters("email", [dead[0].id]) == 1
        replayed = await receive(email)
        assert (index_of(replayed), replayed.attempt, replayed.id) == (1, 1, first.id)
        await email.ack(replayed)
        assert await nothing_within(stock, 0.2)
        assert [d.id for d in await conn.dead_letters(None)] == [dead[1].id]
        assert dead[0].message_id == first.id
        assert await conn.purge_dead_letters("email", None) == 1
        assert await conn.dead_letters(None) == []

    async def test_wait_idle_waits_for_unfinished_messages(self, conn: Connection) -> None:
        """wait_idle() waits while a message is in flight and returns once it is acked."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(1))
        delivery = await receive(sub)
        with anyio.move_on_after(0.2) as still_waiting:
            await conn.wait_idle()
        assert still_waiting.cancelled_caught
        await sub.ack(delivery)
        with anyio.fail_after(_WAIT):
            await conn.wait_idle()

    async def test_new_group_receives_earlier_messages(
        self, transport: Transport, conn: Connection
    ) -> None:
        """A group created after some publishes still receives them."""
        if not transport.features.history_for_new_groups:
            pytest.skip("the transport declares no history for new groups")
        await publish_range(conn, "orders", [1, 2, 3])
        late = await conn.subscribe("orders", "late")
        assert await receive_and_ack(late, 3) == [1, 2, 3]

    async def test_full_transport_makes_publish_wait_then_time_out(
        self, bounded_transport: Transport
    ) -> None:
        """A full queue makes publish() wait; with a timeout it raises, dropping nothing."""
        if not bounded_transport.features.bounded:
            pytest.skip("the transport declares no bounded queues")
        conn = await bounded_transport.connect()
        try:
            sub = await conn.subscribe("orders", "g")
            await publish_range(conn, "orders", range(BOUNDED_CAPACITY))
            with pytest.raises(PublishTimeoutError):
                await conn.publish("orders", message(99), timeout=0.1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_range, conn, "orders", [BOUNDED_CAPACITY])
                seen = await receive_and_ack(sub, BOUNDED_CAPACITY + 1)
            assert seen == list(range(BOUNDED_CAPACITY + 1))
        finally:
            await conn.aclose()
