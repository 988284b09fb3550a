"""The scenarios of the required contract: every transport must pass them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from eventbus import PublishTimeoutError, TransportClosedError
from eventbus.transports import (
    Connection,
    Delivery,
    FailureNotes,
    Message,
    Subscription,
    Transport,
)

from ._helpers import (
    WAIT,
    connected,
    index_of,
    message,
    nothing_within,
    publish_range,
    receive,
    receive_and_ack,
)

__all__ = ["BOUNDED_CAPACITY", "CoreScenarios"]

BOUNDED_CAPACITY = 5


class CoreScenarios:
    """Publish, subscribe, receive, ack, nack, dead-letter and close."""

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

    async def test_objects_meet_the_protocols(self, transport: Transport) -> None:
        """The transport, its connection and a subscription meet the required protocols."""
        assert isinstance(transport, Transport)
        async with connected(transport) as conn:
            assert isinstance(conn, Connection)
            assert isinstance(await conn.subscribe("orders", "g"), Subscription)

    async def test_round_trip_keeps_body_and_headers(self, conn: Connection) -> None:
        """A message arrives with its bytes, headers, topic and id intact, as attempt 1."""
        sub = await conn.subscribe("orders", "g")
        body = '{"name":"Zoë ✓","n":1}'.encode()
        headers = {"id": "0192-x", "name": "OrderCreated", "uni": "héllo wörld ✓", "empty": ""}
        message_id = await conn.publish("orders", Message(body, headers))
        delivery = await receive(sub)
        assert (delivery.message.body, dict(delivery.message.headers)) == (body, headers)
        assert (delivery.id, delivery.topic, delivery.attempt) == (message_id, "orders", 1)
        assert delivery.notes is None
        await sub.ack(delivery)

    async def test_no_loss_over_1000_events(self, conn: Connection) -> None:
        """1,000 published messages all reach the group, each once."""
        sub = await conn.subscribe("orders", "g")
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_range, conn, "orders", range(1000))
            seen = await receive_and_ack(sub, 1000)
        assert sorted(seen) == list(range(1000))
        assert await nothing_within(sub, 0.2)

    async def test_concurrent_publishers_and_workers(self, transport: Transport) -> None:
        """Four publishers and three workers of one group: every message handled once."""
        seen: list[int] = []
        all_seen = anyio.Event()

        async def work(sub: Subscription) -> None:
            while (delivery := await sub.receive()) is not None:
                seen.append(index_of(delivery))
                await sub.ack(delivery)
                if len(seen) >= 400:
                    all_seen.set()

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
                with anyio.fail_after(WAIT):
                    await all_seen.wait()
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
        notes = FailureNotes("retrying", error_type="x.Boom", first_failed_at="t0")
        await sub.nack(first, 0.0, notes)
        second = await receive(sub)
        assert (second.id, index_of(second), second.attempt) == (first.id, 7, 2)
        assert second.notes == notes
        await sub.nack(second, 0.0, notes)
        third = await receive(sub)
        assert third.attempt == 3
        await sub.ack(third)

    async def test_delayed_retry_does_not_block_the_group(self, conn: Connection) -> None:
        """While a retry waits for its delay, the next messages are delivered."""
        sub = await conn.subscribe("orders", "g")
        await publish_range(conn, "orders", [1, 2])
        first = await receive(sub)
        await sub.nack(first, 0.5, FailureNotes("retrying"))
        assert await receive_and_ack(sub, 1) == [2]
        retried = await receive(sub)
        assert (index_of(retried), retried.attempt) == (1, 2)
        await sub.ack(retried)

    async def test_due_retry_comes_before_new_messages(self, conn: Connection) -> None:
        """A retry that is due is delivered before messages published after it."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(0))
        await sub.nack(await receive(sub), 0.0, FailureNotes("retrying"))
        await publish_range(conn, "orders", [1, 2, 3])
        first = await receive(sub)
        assert (index_of(first), first.attempt) == (0, 2)
        await sub.ack(first)
        assert await receive_and_ack(sub, 3) == [1, 2, 3]

    async def test_retry_waits_for_its_delay(self, conn: Connection) -> None:
        """A message nacked with a delay is not redelivered before the delay."""
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(1))
        await sub.nack(await receive(sub), 0.6, FailureNotes("retrying"))
        assert await nothing_within(sub, 0.2)
        retried = await receive(sub)
        assert retried.attempt == 2
        await sub.ack(retried)

    async def test_dead_lettered_message_is_not_delivered_again(self, conn: Connection) -> None:
        """dead_letter() finishes the message for the group, as ack() does."""
        sub = await conn.subscribe("orders", "g")
        await publish_range(conn, "orders", [1, 2])
        await sub.dead_letter(await receive(sub), FailureNotes("retries-exhausted"))
        assert await receive_and_ack(sub, 1) == [2]
        assert await nothing_within(sub, 0.2)

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

            with anyio.fail_after(WAIT):
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

        with anyio.fail_after(WAIT):
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
