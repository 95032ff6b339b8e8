"""A real Redis Cluster on loopback ports for the tests: 3 primaries and 3 replicas, made of Debian's
``redis-server`` processes and ``redis-cli --cluster create``, without persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

#: A node is failed after this many ms without answering; its replica is then promoted.
NODE_TIMEOUT_MS = 1000
START_TIMEOUT = 30.0


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        sockets.append(probe)
        ports.append(probe.getsockname()[1])
    for probe in sockets:
        probe.close()
    return ports


class RedisCluster:
    def __init__(self, directory: Path, primaries: int = 3, replicas_each: int = 1) -> None:
        self.server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if not Path(self.server).exists() or not Path(self.cli).exists():
            pytest.fail("redis-server and redis-cli are needed (Debian: apt-get install -y redis-server)")
        self.directory = directory
        nodes = primaries * (1 + replicas_each)
        ports = _free_ports(2 * nodes)
        self.ports, bus_ports = ports[:nodes], ports[nodes:]  # the bus port is not port + 10000: it may not exist
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for port, bus_port in zip(self.ports, bus_ports, strict=True):
                self._start(port, bus_port)
            for port in self.ports:
                self._wait_listening(port)
            created = subprocess.run(
                [self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                 "--cluster-replicas", str(replicas_each), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            assert created.returncode == 0, created.stdout + created.stderr
            self.wait_healthy()
            self.wait_replicas_synced()
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def _start(self, port: int, bus_port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(node_dir),
             # A replica must have synced before it can take over: no waiting for more replicas to sync with.
             "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.05)

    def cli_on(self, port: int, *args: str) -> str:
        return subprocess.run([self.cli, "-p", str(port), *args], capture_output=True, text=True,
                              timeout=10).stdout

    def alive(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Until every live node says the cluster is ok and every slot has a primary that is alive."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli_on(p, "CLUSTER", "INFO") for p in self.alive()]
            if states and all("cluster_state:ok" in s for s in states) and self._primaries_alive():
                return
            assert time.monotonic() < deadline, f"the cluster did not become healthy: {states[:1]}"
            time.sleep(0.1)

    def wait_replicas_synced(self, timeout: float = START_TIMEOUT) -> None:
        """Until every replica has its primary's data (a replica that never synced cannot take over)."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.cli_on(p, "INFO", "replication") for p in self.alive()]
            replicas = [i for i in infos if "role:slave" in i]
            if replicas and all("master_link_status:up" in i for i in replicas):
                return
            assert time.monotonic() < deadline, "the replicas did not sync with their primaries"
            time.sleep(0.1)

    def _primaries_alive(self) -> bool:
        """Every slot is served by a primary that is alive (not merely by one the others still believe in)."""
        alive = set(self.alive())
        covered = 0
        for line in self.cli_on(next(iter(alive)), "CLUSTER", "NODES").splitlines():
            fields = line.split()
            port = int(fields[1].split(":")[1].split("@")[0])
            if "master" in fields[2] and "fail" not in fields[2] and port in alive:
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit():
                        covered += int(high or low) - int(low) + 1
        return covered == 16384

    def primary_ports(self) -> list[int]:
        for port in self.alive():
            nodes = self.cli_on(port, "CLUSTER", "NODES")
            if nodes:
                return sorted({int(line.split()[1].split(":")[1].split("@")[0]) for line in nodes.splitlines()
                               if " master" in line and "fail" not in line.split()[2] and line.split()[8:]})
        return []

    def primary_for(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot."""
        for port in self.alive():
            slot = self.cli_on(port, "CLUSTER", "KEYSLOT", key).strip()
            if not slot.isdigit():
                continue
            nodes = self.cli_on(port, "CLUSTER", "NODES")
            for line in nodes.splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= int(slot) <= int(high or low):
                        return int(fields[1].split(":")[1].split("@")[0])
        raise AssertionError(f"no primary serves {key}")

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
