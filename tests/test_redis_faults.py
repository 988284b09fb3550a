"""Faults around the Redis transport: killed workers, poison, Redis restarts, cut
connections, pauses, malformed entries, hung handlers and shutdowns.

Workers are real ``python -m eventbus worker tests.worker_app:make_bus`` processes that
write a ledger (``start ORDER PID`` / ``done ORDER PID``) which survives ``kill -9``.
Every test checks, at the end, that nothing was lost (each order has a ``done`` line, or
is in the dead letters where expected), that duplicates stay within the stated bound, and
that the group ``ledger`` has nothing pending on the stream or its redeliver stream.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
import redis.asyncio as aioredis

from eventbus import (
    DeadLetter,
    EventBus,
    PublishOutcomeUnknownError,
    PublishTimeoutError,
    TransportError,
)
from eventbus.transports.redis import RedisTransport
from tests.events import OrderCreated
from tests.redis_server import RedisServer
from tests.subprocess_workers import Ledger, Worker
from tests.waiting import Condition, wait_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
GROUP = "ledger"
PRODUCER = "producer"  # the client name of the test's own bus


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (some tests kill or pause it)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Scenario:
    """Workers, a producer bus and an admin client around one key prefix."""

    def __init__(
        self, server: RedisServer, directory: Path, bus: EventBus, prefix: str, **env: str
    ) -> None:
        self.server = server
        self.directory = directory
        self.bus = bus
        self.prefix = prefix
        self.stream = f"{self.prefix}:{{OrderCreated}}"
        self.redeliver = f"{self.stream}:redeliver:{GROUP}"
        self.ledger = Ledger(directory / "ledger")
        self.admin: Any = aioredis.Redis.from_url(server.url)
        self.env = {
            "EVENTBUS_TEST_REDIS_URL": server.url,
            "EVENTBUS_TEST_PREFIX": self.prefix,
            "EVENTBUS_TEST_LEDGER": str(self.ledger.path),
            "EVENTBUS_TEST_CLAIM_TIMEOUT": "2",
            "EVENTBUS_TEST_PREFETCH": "8",
            **env,
        }
        self.workers: list[Worker] = []

    async def start_worker(self, name: str, **env: str) -> Worker:
        """Start a worker (consumer name ``name``) and wait for its ready line."""
        label = f"{name}-{len(self.workers)}"
        worker = Worker(label, name, {**self.env, **env}, self.directory)
        self.workers.append(worker)
        await self.wait(lambda: worker.ready() or worker.exited(), 20, f"{label} to start")
        assert worker.ready(), worker.log()
        return worker

    def stop_workers(self) -> None:
        """SIGKILL every worker still running."""
        for worker in self.workers:
            worker.kill()

    async def publish(self, *orders: str) -> None:
        """Publish one OrderCreated per order id."""
        for order in orders:
            await self.bus.publish(OrderCreated(order_id=order))

    async def pending(self) -> int:
        """Entries the group holds without an ack, on the stream and the redeliver stream."""
        total = 0
        for key in (self.stream, self.redeliver):
            if await self.admin.exists(key):
                total += int((await self.admin.xpending(key, GROUP))["pending"])
        return total

    async def scheduled(self) -> int:
        """Retries waiting in the group's retry schedule."""
        return int(await self.admin.zcard(f"{self.stream}:retry:{GROUP}"))

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters of the group, oldest first."""
        return await self.bus.dead_letters(GROUP)

    async def wait(self, condition: Condition, timeout: float, what: str) -> None:
        """``wait_for``, with the ledger, Redis and worker logs in the failure message."""
        try:
            await wait_for(condition, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.report()}") from None

    async def report(self) -> str:
        """What the ledger and Redis hold, and the workers' logs, for a failure message."""
        details = [f"done lines: {sum(self.ledger.done().values())}"]
        try:
            details.append(f"pending: {await self.pending()}, scheduled: {await self.scheduled()}")
            for key in (self.stream, self.redeliver):
                if await self.admin.exists(key):
                    rows = await self.admin.xpending_range(key, GROUP, "-", "+", 20)
                    details.append(f"XPENDING {key}: {rows}")
        except Exception as exc:  # the report must not hide the failure it describes
            details.append(f"(Redis not readable: {exc!r})")
        details += [worker.log() for worker in self.workers]
        return "\n".join(details)

    async def settle(self, orders: Iterable[str], timeout: float = 15) -> None:
        """Wait until every order is done and the group has nothing pending or scheduled."""
        wanted = set(orders)
        await self.wait(
            lambda: wanted <= set(self.ledger.done()), timeout, "every order to be done"
        )

        async def quiet() -> bool:
            return await self.pending() == 0 and await self.scheduled() == 0

        await self.wait(quiet, timeout, "no pending entry in the group")

    def assert_duplicates_within(self, bound: int) -> None:
        """At most ``bound`` orders were handled more than once."""
        repeated = {order: n for order, n in self.ledger.done().items() if n > 1}
        assert len(repeated) <= bound, f"{len(repeated)} orders handled twice: {repeated}"


@asynccontextmanager
async def scenario(server: RedisServer, directory: Path, **env: str) -> AsyncIterator[Scenario]:
    """A fresh key prefix with a producer bus; stops every worker on the way out."""
    prefix = f"f{secrets.token_hex(4)}"
    scene: Scenario | None = None
    url = f"{server.url}?client_name={PRODUCER}"
    try:
        async with EventBus(transport=RedisTransport(url, prefix=prefix)) as bus:
            scene = Scenario(server, directory, bus, prefix, **env)
            yield scene
    finally:
        if scene is not None:
            scene.stop_workers()
            await scene.admin.aclose()


def orders(prefix: str, count: int) -> list[str]:
    """``count`` order ids: ``prefix-0``, ``prefix-1``, ..."""
    return [f"{prefix}-{i}" for i in range(count)]


def body_order(letter: DeadLetter) -> str:
    """The order id in a dead letter's raw body."""
    return str(json.loads(letter.body)["order_id"])


# -- 1. a worker killed mid-handler ---------------------------------------------------


async def test_worker_killed_mid_handler_resumes_under_the_same_name(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGKILL mid-handler, restart under the same name: nothing lost, few duplicates."""
    async with scenario(redis_server, tmp_path, EVENTBUS_TEST_CLAIM_TIMEOUT="30") as scene:
        first = await scene.start_worker(
            "w", EVENTBUS_TEST_SLOW="30", EVENTBUS_TEST_HANDLER_TIMEOUT="60"
        )
        normal = orders("o", 400)
        await scene.publish("slow-0", *normal)
        await scene.wait(lambda: len(scene.ledger.done()) >= 100, 20, "the worker to be mid-flow")

        first.kill()
        assert "slow-0" not in scene.ledger.done()
        second = await scene.start_worker("w", EVENTBUS_TEST_SLOW="0.1")

        # the claim timeout is 30 s: only re-reading its own pending entries finishes in time
        await scene.settle(["slow-0", *normal], timeout=15)
        dead_letters = await scene.dead_letters()
    assert scene.ledger.pids("done", "slow-0") == [second.pid]
    scene.assert_duplicates_within(8)
    assert dead_letters == []


# -- 2. a worker killed for good ----------------------------------------------------


async def holders(scene: Scenario, wanted: Iterable[str]) -> dict[str, str]:
    """The consumer of the group that holds each pending entry of the ``wanted`` orders."""
    wanted = set(wanted)
    entries = await scene.admin.xrange(scene.stream)
    order_of = {i: json.loads(f[b"payload"])["order_id"] for i, f in entries}
    rows = await scene.admin.xpending_range(scene.stream, GROUP, "-", "+", 10_000)
    return {
        order_of[row["message_id"]]: row["consumer"].decode()
        for row in rows
        if order_of.get(row["message_id"]) in wanted
    }


async def test_second_worker_takes_over_the_pending_events_of_a_dead_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker killed for good: another claims its entries once idle, not while it lived."""
    async with scenario(redis_server, tmp_path, EVENTBUS_TEST_CLAIM_TIMEOUT="1.5") as scene:
        dead = await scene.start_worker(
            "a", EVENTBUS_TEST_SLOW="30", EVENTBUS_TEST_HANDLER_TIMEOUT="60"
        )
        slow, normal = orders("slow", 4), orders("o", 100)
        await scene.publish(*slow)
        await scene.wait(
            lambda: set(slow) <= set(scene.ledger.count("start")), 20, "4 slow handlers"
        )
        heir = await scene.start_worker("b", EVENTBUS_TEST_SLOW="0.1")
        await scene.publish(*normal)  # the four loops of "a" are busy: "b" reads these
        await scene.wait(
            lambda: any(pid == heir.pid for kind, _, pid in scene.ledger.lines() if kind == "done"),
            20,
            "the heir to handle events (its first read follows a pass of claims)",
        )
        held_while_alive = await holders(scene, slow)

        dead.kill()
        await scene.settle([*slow, *normal], timeout=20)
        dead_letters = await scene.dead_letters()
    assert held_while_alive == dict.fromkeys(slow, "a")  # renewed: not idle, not claimed
    assert all(scene.ledger.pids("done", order) == [heir.pid] for order in slow)
    scene.assert_duplicates_within(8)
    assert dead_letters == []


# -- 3. a poison event that kills its worker -------------------------------------------


async def restart_until_accounted_for(
    scene: Scenario, wanted: Iterable[str], **env: str
) -> tuple[Worker, int]:
    """Run a worker named ``w``, restarting it each time it crashes, until every order in
    ``wanted`` is done or dead-lettered; return the last worker and the crash count."""
    wanted = set(wanted)
    worker = await scene.start_worker("w", **env)
    crashes = 0

    async def accounted_for() -> set[str]:
        letters = {body_order(d) for d in await scene.dead_letters()}
        return set(scene.ledger.done()) | letters

    async def finished_or_crashed() -> bool:
        return worker.exited() or wanted <= await accounted_for()

    while True:
        await scene.wait(finished_or_crashed, 20, "the worker to crash or finish")
        if not worker.exited():
            return worker, crashes
        crashes += 1
        assert crashes <= 5, f"the poison keeps killing workers\n{await scene.report()}"
        worker = await scene.start_worker("w", **env)


async def test_process_crashing_event_ends_in_the_dead_letters_as_poison(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """crash-1 among 500 events: restarted workers finish the 500, crash-1 becomes poison."""
    async with scenario(redis_server, tmp_path, EVENTBUS_TEST_DELIVERY_LIMIT="3") as scene:
        normal = orders("o", 500)
        await scene.publish(*normal[:250], "crash-1", *normal[250:])
        worker, crashes = await restart_until_accounted_for(scene, [*normal, "crash-1"])

        dead = await scene.dead_letters()
        await scene.settle(set(normal) - {body_order(d) for d in dead})
        assert not worker.exited()
    assert crashes == 3
    assert scene.ledger.count("start")["crash-1"] == 3
    assert [(body_order(d), d.reason) for d in dead] == [("crash-1", "poison")]
    scene.assert_duplicates_within(3 * 8)


async def test_slow_events_in_flight_beside_a_crashing_one_are_not_dead_lettered(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Slow events in flight at a crash are redelivered one by one: only the crasher is poison."""
    async with scenario(
        redis_server,
        tmp_path,
        EVENTBUS_TEST_DELIVERY_LIMIT="3",
        EVENTBUS_TEST_CONCURRENCY="4",
        EVENTBUS_TEST_SLOW="1",
        EVENTBUS_TEST_HANDLER_TIMEOUT="10",
    ) as scene:
        slow, normal = orders("slow", 3), orders("o", 20)
        await scene.publish(*slow, "crash-1", *normal)  # one read takes all four at once
        worker, crashes = await restart_until_accounted_for(scene, [*slow, "crash-1", *normal])

        dead = await scene.dead_letters()
        await scene.settle({*slow, *normal} - {body_order(d) for d in dead})
        assert not worker.exited()
    assert crashes == 3
    assert [(body_order(d), d.reason) for d in dead] == [("crash-1", "poison")]
    starts, done = scene.ledger.count("start"), scene.ledger.done()
    assert all(starts[order] == 2 for order in slow)  # cut by the first crash, then alone
    assert all(done[order] == 1 for order in [*slow, *normal])


# -- 4. Redis killed and restarted -------------------------------------------------


async def publish_recording(scene: Scenario, order: str, outcomes: dict[str, str]) -> None:
    """Publish one order and record whether it was accepted, unknown or refused."""
    try:
        await scene.publish(order)
        outcomes[order] = "accepted"
    except PublishOutcomeUnknownError:
        outcomes[order] = "unknown"
    except TransportError:
        outcomes[order] = "failed"


def by_outcome(outcomes: dict[str, str], outcome: str) -> list[str]:
    """The orders whose publish ended with ``outcome``."""
    return [order for order, seen in outcomes.items() if seen == outcome]


@pytest.mark.timeout(90)
async def test_redis_killed_and_restarted_under_load_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis SIGKILLed mid-flow and restarted: every accepted publish is handled."""
    async with scenario(redis_server, tmp_path) as scene:
        worker = await scene.start_worker("w")
        outcomes: dict[str, str] = {}
        halfway = anyio.Event()

        async def produce() -> None:
            for i, order in enumerate(orders("o", 600)):
                await publish_recording(scene, order, outcomes)
                if i == 200:
                    halfway.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(produce)
            await halfway.wait()
            redis_server.kill()
            await anyio.to_thread.run_sync(redis_server.start)

        accepted = by_outcome(outcomes, "accepted")
        await scene.settle(accepted)
        assert not worker.exited()
        dead_letters = await scene.dead_letters()
    done = scene.ledger.done()
    assert len(outcomes) == 600
    assert len(accepted) > 202  # some were accepted after the restart...
    assert {pid for _, _, pid in scene.ledger.lines()} == {worker.pid}  # ...and handled by it
    assert not any(done[o] for o in by_outcome(outcomes, "failed"))  # never sent
    assert all(done[o] <= 2 for o in outcomes)
    scene.assert_duplicates_within(8)
    assert dead_letters == []


# -- 5. connections cut with CLIENT KILL -------------------------------------------


async def test_worker_recovers_when_its_blocked_read_is_killed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """CLIENT KILL ADDR on a worker blocked in XREADGROUP: it reconnects and goes on."""
    async with scenario(redis_server, tmp_path) as scene:
        worker = await scene.start_worker("w")
        await scene.publish(*orders("before", 10))
        await scene.settle(orders("before", 10))

        async def blocked_readers() -> list[str]:
            clients = await scene.admin.client_list()
            return [c["addr"] for c in clients if c["cmd"] == "xreadgroup" and "b" in c["flags"]]

        async def reading() -> bool:
            return bool(await blocked_readers())

        await scene.wait(reading, 10, "the worker to block in XREADGROUP")
        for addr in await blocked_readers():
            assert await scene.admin.client_kill_filter(_id=None, addr=addr) == 1

        await scene.publish(*orders("after", 20))
        await scene.settle(orders("after", 20))
        assert not worker.exited()
        dead_letters = await scene.dead_letters()
    assert set(scene.ledger.done().values()) == {1}
    assert dead_letters == []


async def test_connections_killed_while_slow_handlers_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """CLIENT KILL TYPE normal while slow handlers run: they finish, ack, nothing repeats."""
    async with scenario(
        redis_server, tmp_path, EVENTBUS_TEST_SLOW="1", EVENTBUS_TEST_HANDLER_TIMEOUT="10"
    ) as scene:
        worker = await scene.start_worker("w")
        slow, normal = orders("slow", 4), orders("o", 20)
        await scene.publish(*slow, *normal)
        await scene.wait(
            lambda: set(slow) <= set(scene.ledger.count("start")), 10, "4 slow handlers"
        )

        killed = await scene.admin.client_kill_filter(_type="normal")
        await scene.settle([*slow, *normal])
        assert not worker.exited()
        dead_letters = await scene.dead_letters()
    assert killed >= 1
    assert set(scene.ledger.done().values()) == {1}
    assert dead_letters == []


async def test_connections_killed_while_acks_are_in_flight(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Acks cut off after the handlers finished: the events are still settled, not stuck."""
    async with scenario(
        redis_server, tmp_path, EVENTBUS_TEST_SLOW="0.5", EVENTBUS_TEST_HANDLER_TIMEOUT="10"
    ) as scene:
        worker = await scene.start_worker("w")
        slow = orders("slow", 4)
        await scene.publish(*slow)
        await scene.wait(
            lambda: set(slow) <= set(scene.ledger.count("start")), 10, "4 slow handlers"
        )
        await scene.admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")

        async def acks_waiting() -> bool:
            clients = await scene.admin.client_list()
            return any(c["cmd"] in ("xack", "evalsha") and "b" in c["flags"] for c in clients)

        try:  # the 4 handlers are done; their batched acks wait for the pause to end
            await scene.wait(acks_waiting, 10, "acks held by CLIENT PAUSE")
            killed = await scene.admin.client_kill_filter(_type="normal")
        finally:
            await scene.admin.execute_command("CLIENT", "UNPAUSE")
        await scene.publish(*orders("after", 10))
        await scene.settle([*slow, *orders("after", 10)], timeout=10)
        assert not worker.exited()
        dead_letters = await scene.dead_letters()
    assert killed >= 1
    assert all(n <= 2 for n in scene.ledger.done().values())
    assert dead_letters == []


async def test_producer_connections_killed_during_publishes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The publisher's connections killed again and again: accepted events are all handled."""
    async with scenario(redis_server, tmp_path) as scene:
        worker = await scene.start_worker("w")
        outcomes: dict[str, str] = {}
        kills = 0

        async def kill_producer() -> int:
            clients = await scene.admin.client_list()
            mine = [c["addr"] for c in clients if c["name"] == PRODUCER]
            for addr in mine:
                await scene.admin.client_kill_filter(_id=None, addr=addr)
            return len(mine)

        async with anyio.create_task_group() as tasks:

            async def produce() -> None:
                for i, order in enumerate(orders("o", 3000)):
                    await publish_recording(scene, order, outcomes)
                    if i >= 300 and kills >= 10:
                        break
                tasks.cancel_scope.cancel()

            tasks.start_soon(produce)
            while True:
                await anyio.sleep(0.02)  # the pace of the chaos, not a wait for a condition
                kills += await kill_producer()

        accepted = by_outcome(outcomes, "accepted")
        await scene.settle(accepted)
        assert not worker.exited()
        done = scene.ledger.done()
        dead_letters = await scene.dead_letters()
    assert kills >= 10
    assert len(accepted) >= len(outcomes) - kills
    assert not any(done[o] for o in by_outcome(outcomes, "failed"))  # never sent
    assert set(done.values()) == {1}  # the worker was not disturbed: no duplicates
    assert dead_letters == []


# -- 6. Redis paused ---------------------------------------------------------------


def stalled(port: int) -> bool:
    """Whether the server at ``port`` takes longer than 0.1 s to answer PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.1) as sock:
            sock.sendall(b"PING\r\n")
            return not sock.recv(64)
    except TimeoutError:
        return True


async def stored_copies(scene: Scenario, order: str) -> int:
    """How many entries of the stream carry ``order``."""
    entries = await scene.admin.xrange(scene.stream)
    return sum(1 for _, fields in entries if json.loads(fields[b"payload"])["order_id"] == order)


async def publish_through_a_stall(scene: Scenario, order: str) -> BaseException:
    """Publish with a 0.5 s timeout while Redis stalls for 2 s; return the error it raised
    (a publish that waited the stall out would succeed, and fail this check)."""
    with anyio.fail_after(30):  # a guard against a hang, not a bound on speed
        with pytest.raises((PublishOutcomeUnknownError, PublishTimeoutError)) as raised:
            await scene.bus.publish(OrderCreated(order_id=order), timeout=0.5)
    return raised.value


async def test_publish_times_out_clearly_while_clients_are_paused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """CLIENT PAUSE 2000 WRITE: publish(timeout=0.5) raises that the outcome is unknown."""
    async with scenario(redis_server, tmp_path) as scene:
        await scene.start_worker("w")
        await scene.publish("warm-up")  # the publish connection is open: the XADD is sent
        await scene.admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")

        error = await publish_through_a_stall(scene, "paused")
        await scene.admin.set(f"{scene.prefix}:probe", "1")  # returns when the pause ends
        copies = await stored_copies(scene, "paused")
        if copies == 0:  # the publisher's retry, as PublishOutcomeUnknownError advises
            await scene.publish("paused")
        await scene.publish("after")
        await scene.settle(["warm-up", "paused", "after"])
        dead_letters = await scene.dead_letters()
    assert isinstance(error, PublishOutcomeUnknownError)
    assert "0.5 s" in str(error)
    assert "may or may not be stored" in str(error)
    assert copies <= 1
    assert set(scene.ledger.done().values()) == {1}
    assert dead_letters == []


async def test_publish_times_out_clearly_while_redis_sleeps(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """DEBUG SLEEP 2 from another process: publish(timeout=0.5) raises, no duplicate."""
    cli = str(Path(redis_server.binary).with_name("redis-cli"))
    async with scenario(redis_server, tmp_path) as scene:
        await scene.start_worker("w")
        await scene.publish("warm-up")
        sleep = [cli, "-p", str(redis_server.port), "DEBUG", "SLEEP", "2"]
        async with await anyio.open_process(sleep, stdout=subprocess.DEVNULL) as sleeper:
            await wait_for(
                lambda: anyio.to_thread.run_sync(stalled, redis_server.port), 5, "DEBUG SLEEP"
            )
            error = await publish_through_a_stall(scene, "slept")
            await sleeper.wait()
        copies = await stored_copies(scene, "slept")
        if copies == 0:
            await scene.publish("slept")
        await scene.publish("after")
        await scene.settle(["warm-up", "slept", "after"])
        dead_letters = await scene.dead_letters()
    assert isinstance(error, PublishOutcomeUnknownError)
    assert "0.5 s" in str(error)
    assert "may or may not be stored" in str(error)
    assert copies <= 1
    assert set(scene.ledger.done().values()) == {1}
    assert dead_letters == []


# -- 7. malformed entries ----------------------------------------------------------


class BadEntry(NamedTuple):
    """A malformed entry for redis-cli, and the dead letter reason it must get."""

    fields: dict[str, str | bytes]
    reason: str
    payload_on_stdin: bool = False  # redis-cli -x: the last argument comes from stdin

    def argv(self, cli: str, port: int, stream: str) -> tuple[list[str | bytes], bytes | None]:
        """The redis-cli command line that XADDs this entry, and its stdin."""
        parts = [part for pair in self.fields.items() for part in pair]
        head: list[str | bytes] = [cli, "-p", str(port)]
        if self.payload_on_stdin:
            return [*head, "-x", "XADD", stream, "*", *parts[:-1]], as_bytes(parts[-1])
        return [*head, "XADD", stream, "*", *parts], None


def as_bytes(value: str | bytes) -> bytes:
    """UTF-8 bytes of a field value."""
    return value.encode() if isinstance(value, str) else value


def wire(order: str, **override: str | bytes) -> dict[str, str | bytes]:
    """The wire fields of a valid OrderCreated entry (``docs/wire-format.md``)."""
    return {
        "id": f"cli-{secrets.token_hex(4)}",
        "name": "OrderCreated",
        "version": "1",
        "time": "2026-01-01T00:00:00Z",
        "payload": json.dumps({"order_id": order, "total": "9.90"}),
        **override,
    }


BAD_ENTRIES = [
    BadEntry(wire("a", payload="{not json"), "malformed"),
    BadEntry({"payload": '{"order_id": "b"}'}, "malformed"),
    BadEntry(wire("c", payload=b'\xff\xfe{"order_id": "c"}'), "malformed", True),
    BadEntry(wire("d", name=b"Order\xffCreated"), "unknown-event"),
    BadEntry(wire("e", name="OrderShipped"), "unknown-event"),
    BadEntry(wire("f", version="2"), "wrong-version"),
    BadEntry(wire("x" * 300), "malformed"),  # above the worker's max_payload_bytes of 256
]


async def test_malformed_entries_from_redis_cli_are_dead_lettered_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Bad entries written with redis-cli go to the dead letters on first delivery."""
    cli = str(Path(redis_server.binary).with_name("redis-cli"))
    async with scenario(redis_server, tmp_path, EVENTBUS_TEST_MAX_PAYLOAD="256") as scene:
        worker = await scene.start_worker("w")
        valid = []
        for i, entry in enumerate(BAD_ENTRIES):
            argv, stdin = entry.argv(cli, redis_server.port, scene.stream)
            await anyio.run_process(argv, input=stdin)
            good = BadEntry(wire(f"cli-{i}"), "")
            await anyio.run_process(good.argv(cli, redis_server.port, scene.stream)[0])
            await scene.publish(f"bus-{i}")
            valid += [f"cli-{i}", f"bus-{i}"]

        await scene.settle(valid)
        await scene.publish("last")
        await scene.settle(["last"])
        dead = await scene.dead_letters()
        raw_dead = await scene.admin.xrange(f"{scene.stream}:dead:{GROUP}")
        assert not worker.exited()
    assert [d.reason for d in dead] == [entry.reason for entry in BAD_ENTRIES]
    assert [d.body for d in dead] == [as_bytes(e.fields["payload"]) for e in BAD_ENTRIES]
    assert [d.headers.get("id") for d in dead] == [e.fields.get("id") for e in BAD_ENTRIES]
    assert all(d.attempts == 1 and d.handler is None for d in dead)
    assert dead[4].headers["name"] == "OrderShipped"
    assert dead[5].headers["version"] == "2"
    assert "256" in dead[6].error_message
    assert raw_dead[3][1][b"name"] == b"Order\xffCreated"  # the raw bytes are kept
    assert not scene.ledger.count("start").keys() - {*valid, "last"}  # no handler call
    assert set(scene.ledger.done().values()) == {1}


# -- 8. a handler that hangs -------------------------------------------------------


async def test_hanging_handler_times_out_into_the_dead_letters(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """hang-1 times out on each attempt and is dead-lettered; the others flow past it."""
    async with scenario(
        redis_server,
        tmp_path,
        EVENTBUS_TEST_HANDLER_TIMEOUT="0.3",
        EVENTBUS_TEST_MAX_ATTEMPTS="2",
    ) as scene:
        await scene.start_worker("w")
        normal = orders("o", 100)
        await scene.publish(*normal[:50], "hang-1", *normal[50:])
        await scene.settle(normal)

        async def dead_lettered() -> bool:
            return bool(await scene.dead_letters())

        await scene.wait(dead_lettered, 10, "hang-1 in the dead letters")
        await scene.settle([])
        (dead,) = await scene.dead_letters()
    assert body_order(dead) == "hang-1"
    assert (dead.reason, dead.attempts) == ("retries-exhausted", 2)
    assert dead.error_type.rsplit(".", 1)[-1] == "HandlerTimeoutError"
    assert scene.ledger.count("start")["hang-1"] == 2
    assert "hang-1" not in scene.ledger.done()
    assert set(scene.ledger.done().values()) == {1}


# -- 9. graceful shutdown ----------------------------------------------------------


async def test_sigterm_lets_in_flight_handlers_finish_and_ack(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM with slow handlers in flight: they finish within the grace and are acked."""
    async with scenario(
        redis_server,
        tmp_path,
        EVENTBUS_TEST_SLOW="1",
        EVENTBUS_TEST_GRACE="5",
        EVENTBUS_TEST_HANDLER_TIMEOUT="10",
    ) as scene:
        worker = await scene.start_worker("w")
        slow = orders("slow", 4)
        await scene.publish(*slow)
        await scene.wait(
            lambda: set(slow) <= set(scene.ledger.count("start")), 10, "4 slow handlers"
        )

        worker.process.send_signal(signal.SIGTERM)
        await scene.wait(worker.exited, 10, "the worker to exit")
        assert (await scene.pending(), await scene.scheduled()) == (0, 0)
        dead_letters = await scene.dead_letters()
    assert worker.process.returncode == 0, worker.log()
    assert all(scene.ledger.pids("done", order) == [worker.pid] for order in slow)
    assert dead_letters == []


async def test_handlers_cut_by_the_grace_period_go_to_the_next_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM with a grace shorter than the handlers: the cut ones are redelivered."""
    async with scenario(redis_server, tmp_path, EVENTBUS_TEST_CLAIM_TIMEOUT="30") as scene:
        first = await scene.start_worker(
            "a", EVENTBUS_TEST_SLOW="30", EVENTBUS_TEST_GRACE="0.3",
            EVENTBUS_TEST_HANDLER_TIMEOUT="60",
        )  # fmt: skip
        slow, normal = orders("slow", 4), orders("o", 10)
        await scene.publish(*slow, *normal)
        await scene.wait(
            lambda: set(slow) <= set(scene.ledger.count("start")), 10, "4 slow handlers"
        )

        first.process.send_signal(signal.SIGTERM)
        await scene.wait(first.exited, 5, "the worker to exit after its grace")
        assert await scene.dead_letters() == []
        assert await scene.pending() >= 4  # not acked: handed back to the group
        # the claim timeout is 30 s: only entries handed back at shutdown come this fast
        second = await scene.start_worker("b", EVENTBUS_TEST_SLOW="0.1")
        await scene.settle([*slow, *normal], timeout=15)
        dead_letters = await scene.dead_letters()
    assert first.process.returncode == 0, first.log()
    assert all(scene.ledger.pids("done", order) == [second.pid] for order in slow)
    assert set(scene.ledger.done().values()) == {1}
    assert dead_letters == []


# -- chaos: idempotent workers killed again and again -----------------------------------

CHAOS_EVENTS = 10_000
CHAOS_KILLS = 6


async def test_idempotent_workers_killed_again_and_again_lose_nothing_and_repeat_little(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """3 idempotent workers, 10,000 events, 6 kill -9: 0 lost, <= 1 repeat per kill."""
    chooser = random.Random(9)
    env = {
        "EVENTBUS_TEST_IDEMPOTENT": "1",  # without it, the kills repeat some 60 events
        "EVENTBUS_TEST_CLAIM_TIMEOUT": "1",
        "EVENTBUS_TEST_PREFETCH": "64",
    }
    async with scenario(redis_server, tmp_path, **env) as scene:
        workers = [await scene.start_worker(f"w{i}") for i in range(3)]
        wanted = orders("o", CHAOS_EVENTS)
        for start in range(0, CHAOS_EVENTS, 500):
            batch = wanted[start : start + 500]
            await scene.bus.publish_many([OrderCreated(order_id=order) for order in batch])
        for kill in range(CHAOS_KILLS):
            target = (kill + 1) * 600
            await scene.wait(
                lambda: len(scene.ledger.done()) >= target,  # noqa: B023 - read at once
                60,
                f"{target} events done",
            )
            index = chooser.randrange(len(workers))
            workers[index].kill()
            name = f"w{index}" if kill % 2 == 0 else f"w{index}-{kill}"
            workers[index] = await scene.start_worker(name)
        await scene.settle(wanted, timeout=60)
        dead_letters = await scene.dead_letters()
    assert set(scene.ledger.done()) == set(wanted)
    scene.assert_duplicates_within(CHAOS_KILLS)
    assert dead_letters == []
