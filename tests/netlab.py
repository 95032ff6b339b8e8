"""A private network for fault tests: two network namespaces of the test's own, one for the server and one
for its clients, joined by a point-to-point link made of two TUN devices and a relay thread in the test
process. The relay can drop every packet of chosen TCP connections, in both directions, as if their
clients had vanished (cable pulled, laptop lid closed, a NAT entry gone): nothing is closed, nothing is
answered, not even a reset. The machine's own network is not touched.

Needs root, ``unshare``, ``nsenter``, ``ip`` and ``/dev/net/tun``; a missing one fails the test in CI.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import queue
import select
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
SERVER_ADDRESS, CLIENT_ADDRESS = "10.87.0.1", "10.87.0.2"

_libc = ctypes.CDLL(None, use_errno=True)


class Namespace:
    """A network namespace held open by a sleeping ``unshare -n`` process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        self.path = f"/proc/{self.holder.pid}/ns/net"
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while True:  # until unshare has switched namespaces and exec'd sleep
            try:
                if os.readlink(self.path) != ours:
                    break
            except FileNotFoundError:
                pass
            assert self.holder.poll() is None and time.monotonic() < deadline, "unshare --net failed"
            time.sleep(0.01)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["nsenter", f"--net={self.path}", "ip", *args], check=True, capture_output=True)

    def command(self, command: list[str]) -> list[str]:
        """``command`` run inside this namespace (nsenter execs it: the pid is the command's)."""
        return ["nsenter", f"--net={self.path}", *command]

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a thread that entered this namespace: sockets it creates belong here (and
        work from any thread afterwards). setns affects the calling thread only."""
        result: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                _enter(self.path)
                result.put((True, function()))
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                result.put((False, exc))

        threading.Thread(target=run, daemon=True).start()
        ok, value = result.get(timeout=60)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


class Link:
    """Server namespace <-> client namespace, through a relay that can drop chosen connections."""

    def __init__(self) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
                _missing(f"{tool} is not installed")
        if not os.path.exists("/dev/net/tun") or os.geteuid() != 0:
            _missing("network namespaces need root and /dev/net/tun")
        self.server = Namespace()
        self.client = Namespace()
        self.dropped: set[int] = set()  # client-side ports whose packets vanish
        self.dropped_packets = 0
        self._stop = False
        self._server_tun = self.server.call(lambda: _open_tun("rs0"))
        self._client_tun = self.client.call(lambda: _open_tun("rs0"))
        for namespace, here, there in ((self.server, SERVER_ADDRESS, CLIENT_ADDRESS),
                                       (self.client, CLIENT_ADDRESS, SERVER_ADDRESS)):
            namespace.ip("addr", "add", here, "peer", there, "dev", "rs0")
            namespace.ip("link", "set", "rs0", "up")
        self._relay = threading.Thread(target=self._forward, daemon=True, name="netlab-relay")
        self._relay.start()

    def vanish(self, port: int) -> None:
        """From now on, every packet of the client connection with local port ``port`` is lost."""
        self.dropped.add(port)

    def _forward(self) -> None:
        other = {self._server_tun: self._client_tun, self._client_tun: self._server_tun}
        while not self._stop:
            ready, _, _ = select.select(list(other), [], [], 0.1)
            for fd in ready:
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    return
                if self._drops(packet):
                    self.dropped_packets += 1
                    continue
                try:
                    os.write(other[fd], packet)
                except OSError:
                    pass  # the other side is not up yet: a lost packet, which TCP retransmits

    def _drops(self, packet: bytes) -> bool:
        if len(packet) < 24 or packet[0] >> 4 != 4 or packet[9] != 6:  # IPv4 TCP only
            return False
        header = (packet[0] & 0x0F) * 4
        source, destination = struct.unpack_from("!HH", packet, header)
        return source in self.dropped or destination in self.dropped

    def close(self) -> None:
        self._stop = True
        self._relay.join(2)
        for fd in (self._server_tun, self._client_tun):
            os.close(fd)
        self.server.close()
        self.client.close()


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _missing(message: str) -> None:
    if os.environ.get("ROVER_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (ROVER_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(message)
