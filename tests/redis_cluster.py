"""A private Redis Cluster for tests: three masters and three replicas on loopback
ports, each node in a directory of its own, formed with ``redis-cli --cluster create``."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.redis_server import RedisServer

__all__ = ["RedisCluster"]

NODE_TIMEOUT_MS = 2000  # how long a master may be silent before its replica takes over


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too, both under 65,536."""
    while True:
        port = random.randint(20_000, 45_000)
        if _free(port) and _free(port + 10_000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisCluster:
    """Six redis-server processes in cluster mode: ``start()``, use ``url``, ``stop()``.

    ``appendonly=False`` keeps nothing on disk (the benchmark's setting)."""

    def __init__(
        self, directory: Path, *, masters: int = 3, replicas: int = 1, appendonly: bool = True
    ) -> None:
        self.directory = directory
        self.replicas = replicas
        cluster: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-config-file")
        cluster += ("nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS))
        cluster += ("--repl-diskless-sync-delay", "0")  # a rejoining replica syncs at once
        self.nodes = []
        for number in range(masters * (1 + replicas)):
            node_dir = directory / f"node-{number}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(node_dir, extra=cluster, port=cluster_port(), appendonly=appendonly)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """The URL of the first node: the cluster client finds the others from it."""
        return self.nodes[0].url

    @property
    def every_node_url(self) -> str:
        """A URL that lists every node, so that a client starts while some are down."""
        return "redis://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + "/0"

    def start(self) -> None:
        """Start every node, form the cluster, and wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = ("--cluster-replicas", str(self.replicas), "--cluster-yes")
        subprocess.run(
            [cli, "--cluster", "create", *addresses, *replicas],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_until_ok()
        self._wait(self.replicas_online, "the replicas' first sync")

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and the same slots."""
        self._wait(self.ok, "the cluster to become ok", timeout)

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)  # polling servers that have no event to wait on

    def replicas_online(self) -> bool:
        """Whether every master has its replicas online (their first sync done)."""
        for node in self.masters():
            with redis.Redis(port=node.port, socket_timeout=2) as client:
                info = client.info("replication")
            states = [info.get(f"slave{n}", {}).get("state") for n in range(self.replicas)]
            if states != ["online"] * self.replicas:
                return False
        return True

    def ok(self) -> bool:
        """Whether every running node sees the cluster as ok, with all slots assigned."""
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                with redis.Redis(port=node.port, socket_timeout=2) as client:
                    info = client.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_assigned:16384" not in text:
                return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node that the cluster says is the master of ``key``'s slot now."""
        node = next(n for n in self.nodes if n.process is not None)
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = client.execute_command("CLUSTER", "SLOTS")
        port = next(int(r[2][1]) for r in ranges if r[0] <= slot <= r[1])
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        found = []
        for node in self.nodes:
            if node.process is None:
                continue
            with redis.Redis(port=node.port, socket_timeout=2) as client:
                if client.info("replication")["role"] == "master":
                    found.append(node)
        return found

    def move_slot(self, key: str, to: RedisServer, hold: float = 0.0) -> int:
        """Move ``key``'s slot to the master ``to`` as ``redis-cli --cluster reshard``
        does (IMPORTING, MIGRATING, MIGRATE of its keys, then NODE on every master),
        holding ``hold`` seconds in each step so that clients meet ``ASK`` on the way.
        Returns how many keys moved."""
        source = self.master_of(key)
        with (
            redis.Redis(port=source.port, socket_timeout=10) as src,
            redis.Redis(port=to.port, socket_timeout=10) as dst,
        ):
            slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
            source_id = src.execute_command("CLUSTER", "MYID").decode()
            target_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            time.sleep(hold)  # pacing the fault: clients work while the slot is migrating
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            time.sleep(hold)  # the keys are on the target: clients are sent there by ASK
        for node in self.masters():
            with redis.Redis(port=node.port, socket_timeout=10) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
