"""The scenarios of the optional abilities; each skips when the connection lacks it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from eventbus.transports import (
    BatchPublishing,
    Connection,
    DeadLetterStore,
    FailureNotes,
    GroupListing,
    GroupManagement,
    HandledRecord,
    IdleWaiting,
    Inspection,
    ReferencePublishing,
    Serving,
    Subscription,
    Transport,
)

from ._helpers import (
    WAIT,
    index_of,
    index_of_dead,
    message,
    nothing_within,
    publish_range,
    receive,
    receive_and_ack,
)

__all__ = ["AbilityScenarios"]


def skip_without(conn: object, kind: Any) -> None:
    """Skip the scenario, saying why, when ``conn`` (a connection or a subscription) does
    not offer the ability ``kind``."""
    if not isinstance(conn, kind):
        what = "subscription" if isinstance(conn, Subscription) else "connection"
        pytest.skip(f"the {what} does not offer {kind.__name__}")


class AbilityScenarios:
    """Batch publishing, the dead-letter store, idle waiting, inspection, serving and
    references."""

    pytestmark = pytest.mark.anyio

    # -- BatchPublishing ---------------------------------------------------------------

    async def test_publish_many_keeps_order_and_returns_ids(self, conn: Connection) -> None:
        """publish_many stores a batch in order and returns one id per message."""
        skip_without(conn, BatchPublishing)
        assert isinstance(conn, BatchPublishing)
        batch = conn
        sub = await conn.subscribe("orders", "g")
        ids = await batch.publish_many([("orders", message(i)) for i in range(50)])
        assert len(set(ids)) == 50
        deliveries = [await receive(sub) for _ in range(50)]
        assert [index_of(d) for d in deliveries] == list(range(50))
        assert [d.id for d in deliveries] == ids
        for delivery in deliveries:
            await sub.ack(delivery)
        assert await batch.publish_many([]) == []

    # -- DeadLetterStore -----------------------------------------------------------------

    async def test_dead_letters_list_replay_and_purge(self, conn: Connection) -> None:
        """Dead letters keep message and notes; replay goes to their group only; purge."""
        skip_without(conn, DeadLetterStore)
        assert isinstance(conn, DeadLetterStore)
        store = conn
        email = await conn.subscribe("orders", "email")
        stock = await conn.subscribe("orders", "stock")
        await publish_range(conn, "orders", [1, 2])
        assert await receive_and_ack(stock, 2) == [1, 2]
        first = await receive(email)
        await email.nack(first, 0.0, FailureNotes("retrying"))
        for _ in range(2):
            delivery = await receive(email)
            notes = FailureNotes(f"gave up on {index_of(delivery)}", handler="h")
            await email.dead_letter(delivery, notes)
        dead = sorted(await store.dead_letters("email"), key=index_of_dead)
        assert [(index_of_dead(d), d.attempt, d.notes.reason) for d in dead] == [
            (1, 2, "gave up on 1"),
            (2, 1, "gave up on 2"),
        ]
        assert all(d.group == "email" and d.topic == "orders" for d in dead)
        assert dead[0].notes == FailureNotes("gave up on 1", handler="h")
        assert await store.dead_letters("stock") == []
        assert await store.replay_dead_letters("email", [dead[0].id]) == 1
        replayed = await receive(email)
        assert (index_of(replayed), replayed.attempt, replayed.id) == (1, 1, first.id)
        await email.ack(replayed)
        assert await nothing_within(stock, 0.2)
        assert [d.id for d in await store.dead_letters(None)] == [dead[1].id]
        assert dead[0].message_id == first.id
        assert await store.purge_dead_letters("email", None) == 1
        assert await store.dead_letters(None) == []

    # -- IdleWaiting ---------------------------------------------------------------------

    async def test_wait_idle_waits_for_unfinished_messages(self, conn: Connection) -> None:
        """wait_idle() waits while a message is in flight and returns once it is acked."""
        skip_without(conn, IdleWaiting)
        assert isinstance(conn, IdleWaiting)
        idle = conn
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(1))
        delivery = await receive(sub)
        with anyio.move_on_after(0.2) as still_waiting:
            await idle.wait_idle()
        assert still_waiting.cancelled_caught
        await sub.ack(delivery)
        with anyio.fail_after(WAIT):
            await idle.wait_idle()

    async def test_wait_idle_waits_for_a_scheduled_retry(self, conn: Connection) -> None:
        """A message waiting for its retry is unfinished; a dead letter is finished."""
        skip_without(conn, IdleWaiting)
        assert isinstance(conn, IdleWaiting)
        idle = conn
        sub = await conn.subscribe("orders", "g")
        await conn.publish("orders", message(1))
        await sub.nack(await receive(sub), 0.3, FailureNotes("retrying"))
        with anyio.move_on_after(0.1) as still_waiting:
            await idle.wait_idle()
        assert still_waiting.cancelled_caught
        await sub.dead_letter(await receive(sub), FailureNotes("retries-exhausted"))
        with anyio.fail_after(WAIT):
            await idle.wait_idle()

    # -- HandledRecord (of a subscription) --------------------------------------------

    async def test_handled_record_remembers_keys_per_group(self, conn: Connection) -> None:
        """ack_handled() acks and records a key for the group; other groups do not see it."""
        email = await conn.subscribe("orders", "email")
        stock = await conn.subscribe("orders", "stock")
        skip_without(email, HandledRecord)
        assert isinstance(email, HandledRecord)
        assert isinstance(stock, HandledRecord)
        await publish_range(conn, "orders", [1])
        delivery = await receive(email)
        assert not await email.handled("event-1")
        await email.ack_handled(delivery, "event-1")
        assert await email.handled("event-1")
        assert not await stock.handled("event-1")
        assert await nothing_within(email, 0.2)
        assert await receive_and_ack(stock, 1) == [1]

    # -- Inspection ----------------------------------------------------------------------

    async def test_inspect_counts_each_groups_messages(self, conn: Connection) -> None:
        """inspect() counts per group what waits or is in flight, what is scheduled for a
        retry and what was dead-lettered, sorted by topic then group."""
        skip_without(conn, Inspection)
        assert isinstance(conn, Inspection)
        email = await conn.subscribe("orders", "email")
        await conn.subscribe("orders", "audit")
        await conn.subscribe("payments", "audit")
        await publish_range(conn, "orders", range(4))
        first, second, third = [await receive(email) for _ in range(3)]
        await email.ack(first)
        await email.nack(second, 60.0, FailureNotes("retrying"))
        await email.dead_letter(third, FailureNotes("retries-exhausted"))
        stats = await conn.inspect()
        assert [(s.topic, s.group) for s in stats] == [
            ("orders", "audit"),
            ("orders", "email"),
            ("payments", "audit"),
        ]
        counts = [(s.waiting + s.in_flight, s.scheduled, s.dead_letters) for s in stats]
        assert counts == [(4, 0, 0), (1, 1, 1), (0, 0, 0)]

    # -- GroupListing --------------------------------------------------------------------

    async def test_groups_lists_every_group_sorted(self, conn: Connection) -> None:
        """groups() lists (topic, group) of every group subscribing created, sorted."""
        skip_without(conn, GroupListing)
        assert isinstance(conn, GroupListing)
        await conn.subscribe("payments", "audit")
        await conn.subscribe("orders", "email")
        await conn.subscribe("orders", "audit")
        assert list(await conn.groups()) == [
            ("orders", "audit"),
            ("orders", "email"),
            ("payments", "audit"),
        ]

    # -- GroupManagement -----------------------------------------------------------------

    async def test_a_declared_group_keeps_what_comes_before_its_first_consumer(
        self, conn: Connection
    ) -> None:
        """declare_group (at latest) then publish: the first consumer gets it all; a
        second declaration changes nothing."""
        skip_without(conn, GroupManagement)
        assert isinstance(conn, GroupManagement)
        await conn.declare_group("orders", "late", "latest")
        await publish_range(conn, "orders", [1, 2])
        await conn.declare_group("orders", "late", "latest")
        sub = await conn.subscribe("orders", "late")
        assert await receive_and_ack(sub, 2) == [1, 2]
        assert await nothing_within(sub, 0.2)

    async def test_a_group_declared_at_latest_skips_what_came_before(
        self, conn: Connection
    ) -> None:
        """A group new at "latest" gets only what is published after its creation."""
        skip_without(conn, GroupManagement)
        assert isinstance(conn, GroupManagement)
        await conn.subscribe("orders", "first")
        await publish_range(conn, "orders", [1, 2])
        await conn.declare_group("orders", "new", "latest")
        await publish_range(conn, "orders", [3])
        sub = await conn.subscribe("orders", "new")
        assert await receive_and_ack(sub, 1) == [3]
        assert await nothing_within(sub, 0.2)

    async def test_reset_and_delete_a_group(self, conn: Connection) -> None:
        """reset to latest drops what is left, to earliest hands everything kept again;
        delete forgets the group."""
        skip_without(conn, GroupManagement)
        assert isinstance(conn, GroupManagement)
        sub = await conn.subscribe("orders", "g")
        await publish_range(conn, "orders", [1, 2, 3])
        assert await receive_and_ack(sub, 1) == [1]
        await sub.aclose()
        assert await conn.reset_group("g", "latest") == 1
        sub = await conn.subscribe("orders", "g")
        assert await nothing_within(sub, 0.2)
        await publish_range(conn, "orders", [4])
        assert await receive_and_ack(sub, 1) == [4]
        await sub.aclose()
        assert await conn.reset_group("g", "earliest", topic="orders") == 1
        sub = await conn.subscribe("orders", "g")
        assert await receive_and_ack(sub, 4) == [1, 2, 3, 4]
        await sub.aclose()
        assert await conn.delete_group("g") == 1
        assert await conn.delete_group("g") == 0
        assert await conn.reset_group("nobody", "latest") == 0

    # -- Serving -------------------------------------------------------------------------

    async def test_serve_stops_when_cancelled(self, transport: Transport) -> None:
        """serve() runs until cancelled (or returns); the connection then closes cleanly."""
        conn = await transport.connect()
        skip_without(conn, Serving)
        assert isinstance(conn, Serving)
        serving = conn
        sub = await conn.subscribe("orders", "g")
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serving.serve)
                await conn.publish("orders", message(1))
                await sub.ack(await receive(sub))
                tg.cancel_scope.cancel()
            await conn.aclose()
        assert await sub.receive() is None

    # -- ReferencePublishing -------------------------------------------------------------

    async def test_reference_arrives_as_the_same_object(self, conn: Connection) -> None:
        """A published reference reaches every group as the very object, with no bytes."""
        skip_without(conn, ReferencePublishing)
        assert isinstance(conn, ReferencePublishing)
        refs = conn
        email = await conn.subscribe("orders", "email")
        stock = await conn.subscribe("orders", "stock")
        item: Any = ("an", "object")
        message_id = await refs.publish_reference("orders", item)
        for sub in (email, stock):
            delivery = await receive(sub)
            assert delivery.reference is item
            assert (delivery.id, delivery.attempt, delivery.message.body) == (message_id, 1, b"")
            await sub.ack(delivery)

    async def test_reference_survives_retry_and_dead_letter(self, conn: Connection) -> None:
        """A nacked reference comes back as the object; a dead letter keeps it too."""
        skip_without(conn, ReferencePublishing)
        assert isinstance(conn, ReferencePublishing)
        refs = conn
        sub = await conn.subscribe("orders", "g")
        item = object()
        await refs.publish_reference("orders", item)
        await sub.nack(await receive(sub), 0.0, FailureNotes("retrying"))
        again = await receive(sub)
        assert (again.reference, again.attempt) == (item, 2)
        await sub.dead_letter(again, FailureNotes("retries-exhausted"))
        if isinstance(conn, DeadLetterStore):
            (dead,) = await conn.dead_letters("g")
            assert (dead.reference, dead.attempt) == (item, 2)
            assert await conn.replay_dead_letters("g", None) == 1
            replayed = await receive(sub)
            assert (replayed.reference, replayed.attempt) == (item, 1)
            await sub.ack(replayed)
