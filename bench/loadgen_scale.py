"""The subscriber side of ``bench/scale.py``: up to ~19,000 SSE connections in one process, one epoll loop.

``scale.py`` starts several of these, each with its own share of the subscribers and its own loopback source
addresses (``--sources 127.0.0.2,...``): every client socket is bound to one of them before ``connect``
(with ``IP_BIND_ADDRESS_NO_PORT``, so the kernel picks the port at connect time from the whole 4-tuple),
which keeps each source address well inside the ephemeral port range (about 28,000 ports). The process
stays under its open-file limit (raised to the hard maximum; it refuses a ``--count`` above it).

Connections open gradually: at most ``--connect-rate`` per second and at most ``--max-pending`` opened but
not yet ready (so the server's accept queue, bounded by its listen backlog and ``net.core.somaxconn``,
never overflows). A subscriber is *ready* once the first complete SSE block arrived (rover_stream sends
``retry: 3000`` first). A refused or reset connection, or an answer other than 200 (e.g. 503 from a worker
at its stream cap), is tried again up to ``--attempts`` times with a growing pause; once ready, a stream
that ends is *lost* (not reconnected: the benchmark wants to see it).

What is counted, in complete SSE blocks only (after the last blank line received): heartbeats (comment
lines ``: ping``), per subscriber, in total and since the last ``hold`` command; and broadcasts, whose data
carries ``@b<k>@t<monotonic publish time>@``: for each broadcast k and each subscriber, the latency
(receive time of the ``recv`` that completed it minus the publish time; CLOCK_MONOTONIC is shared by every
process of the machine). A second copy of a broadcast counts as ``excess``.

Control: JSON lines. Out (stdout): ``{"event": "progress", ...}`` every second while connecting, then one
``{"event": "ready", ...}``. In (stdin), each answered by one line:

* ``{"cmd": "hold"}`` -- zero the per-subscriber heartbeat counts of the hold (answer ``{"event": "hold"}``).
* ``{"cmd": "stats"}`` -- counts now (``{"event": "stats", ...}``), without latencies.
* ``{"cmd": "report"}`` -- the stats and, per broadcast, every latency in microseconds (``-1``: not received).
* ``{"cmd": "quit"}`` -- close every connection with a reset (no TIME_WAIT left behind) and exit.
"""

from __future__ import annotations

import argparse
import array
import errno
import json
import os
import re
import select
import socket
import struct
import sys
import time
from collections import deque
from time import monotonic
from typing import Any

import loadgen_subscribers  # beside this script: run as bench/loadgen_scale.py
from loadgen_subscribers import BODY, CLOSED, CONNECTING, HEADERS, raise_nofile

BROADCAST = re.compile(rb"@b(\d+)@t(\d+\.\d+)@")
HEARTBEAT = b": ping"
RECV_SIZE = 32 * 1024  # well below malloc's mmap threshold (see bench/README.md)
MAX_TAIL = 1 << 20
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT


class Sub:
    __slots__ = ("index", "sock", "fd", "state", "head", "chunked", "remaining", "cbuf", "tail", "ready",
                 "attempts", "heartbeats", "hold_heartbeats", "source")

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CONNECTING
        self.head = b""
        self.chunked = False
        self.remaining = 0
        self.cbuf = b""
        self.tail = b""
        self.ready = False
        self.attempts = 0
        self.heartbeats = 0
        self.hold_heartbeats = 0

    # Read only if the server did not park the stream: the same decoding as the fan-out load generator's.
    dechunk: Any = loadgen_subscribers.Sub.dechunk


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.address = (args.host, args.port)
        self.request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()
        sources = [s for s in args.sources.split(",") if s]
        self.subs = [Sub(i, sources[i % len(sources)]) for i in range(args.count)]
        self.epoll = select.epoll()
        self.by_fd: dict[int, Sub] = {}
        self.to_start: deque[tuple[float, Sub]] = deque((0.0, s) for s in self.subs)
        self.pending = 0
        self.ready_count = 0
        self.failed = 0
        self.retried = 0
        self.lost = 0
        self.ended_after_ready: dict[str, int] = {}
        self.http_errors: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.excess = 0
        self.latency: dict[int, array.array[float]] = {}
        self.reached: dict[int, int] = {}
        self.first_rx: dict[int, float] = {}
        self.last_rx: dict[int, float] = {}
        self.heartbeats = 0
        self.started = monotonic()
        self.ready_at = 0.0
        self.announced = False
        self.running = True
        self.stdin_buf = b""

    # -- output --------------------------------------------------------------------------------------------

    def emit(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def counts(self, event: str) -> dict[str, Any]:
        return {"event": event, "id": self.args.id, "subscribers": len(self.subs), "ready": self.ready_count,
                "pending": self.pending, "failed": self.failed, "retried": self.retried, "lost": self.lost,
                "http_errors": self.http_errors, "errors": self.errors, "ended": self.ended_after_ready,
                "seconds": round(monotonic() - self.started, 3),
                "ready_seconds": round(self.ready_at - self.started, 3) if self.ready_at else None,
                "cpu_seconds": time.process_time()}

    def stats(self, event: str = "stats") -> dict[str, Any]:
        result = self.counts(event)
        hold = [s.hold_heartbeats for s in self.subs if s.ready]
        result.update({
            "open": sum(1 for s in self.subs if s.state != CLOSED),
            "heartbeats": self.heartbeats,
            "hold_heartbeats": sum(hold), "hold_heartbeats_min": min(hold, default=0),
            "hold_heartbeats_max": max(hold, default=0),
            "no_hold_heartbeat": sum(1 for h in hold if h == 0),
            "reached": {str(k): v for k, v in self.reached.items()},
            "first_rx": {str(k): v for k, v in self.first_rx.items()},
            "last_rx": {str(k): v for k, v in self.last_rx.items()},
            "excess": self.excess,
            "rss_bytes": rss_self(),
        })
        return result

    # -- connections ---------------------------------------------------------------------------------------

    def count_error(self, reason: str) -> None:
        key = reason.split(":")[0] + (":" + reason.split(":", 1)[1].strip() if ":" in reason else "")
        self.errors[key] = self.errors.get(key, 0) + 1

    def start(self, sub: Sub) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sub.attempts += 1
        self.pending += 1
        sub.sock, sub.fd, sub.state = sock, sock.fileno(), CONNECTING
        sub.head, sub.chunked, sub.remaining, sub.cbuf, sub.tail = b"", False, 0, b"", b""
        try:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sub.source, 0))
        except OSError as exc:
            self.fail(sub, f"bind: {exc.strerror}")
            return
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.fail(sub, f"connect: {os.strerror(code)}")
            return
        self.by_fd[sub.fd] = sub
        self.epoll.register(sub.fd, select.EPOLLOUT)

    def close(self, sub: Sub, reset: bool = False) -> None:
        sock = sub.sock
        if sock is not None:
            if self.by_fd.pop(sub.fd, None) is not None:
                try:
                    self.epoll.unregister(sub.fd)
                except OSError:
                    pass
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
            sock.close()
            sub.sock = None
            sub.fd = -1
        sub.state = CLOSED

    def fail(self, sub: Sub, reason: str, status: int = 0) -> None:
        """A connection that never became ready: try again after a pause, or give up."""
        self.close(sub, reset=True)
        self.pending -= 1
        self.count_error(reason)
        if status:
            self.http_errors[str(status)] = self.http_errors.get(str(status), 0) + 1
        if sub.attempts < self.args.attempts:
            self.retried += 1
            self.to_start.append((monotonic() + min(5.0, 0.25 * sub.attempts), sub))
        else:
            self.failed += 1
            print(f"subscriber {sub.index}: giving up after {sub.attempts} attempts: {reason}", file=sys.stderr,
                  flush=True)

    def ended(self, sub: Sub, reason: str) -> None:
        if sub.ready:
            self.lost += 1
            self.ended_after_ready[reason] = self.ended_after_ready.get(reason, 0) + 1
            self.close(sub, reset=True)
            if self.lost <= 20:
                print(f"subscriber {sub.index}: stream ended: {reason}", file=sys.stderr, flush=True)
        else:
            self.fail(sub, reason)

    def on_writable(self, sub: Sub) -> None:
        sock = sub.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(sub, f"connect: {os.strerror(code)}")
            return
        try:
            sent = sock.send(self.request)
        except OSError as exc:
            self.fail(sub, f"send: {exc.strerror}")
            return
        if sent != len(self.request):
            self.fail(sub, "short send")
            return
        sub.state = HEADERS
        self.epoll.modify(sub.fd, select.EPOLLIN)

    def on_readable(self, sub: Sub) -> None:
        sock = sub.sock
        assert sock is not None
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.ended(sub, f"recv: {exc.strerror}")
            return
        now = monotonic()
        if not data:
            self.ended(sub, "closed by the server")
            return
        if sub.state == HEADERS:
            head = sub.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > 65536:
                    self.fail(sub, "headers too long")
                else:
                    sub.head = head
                return
            sub.head = b""
            status_line, _, fields = head[:end].partition(b"\r\n")
            parts = status_line.split(b" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 200:
                self.fail(sub, f"HTTP {status}", status or -1)
                return
            sub.chunked = b"transfer-encoding: chunked" in fields.lower()
            sub.state = BODY
            data = head[end + 4:]
            if not data:
                return
        finished = False
        if sub.chunked:
            data, finished = sub.dechunk(data)
        if data:
            tail = sub.tail + data if sub.tail else data
            if tail.endswith(b"\n\n"):
                complete, sub.tail = tail, b""
            else:
                cut = tail.rfind(b"\n\n")
                if cut < 0:
                    if len(tail) > MAX_TAIL:
                        self.ended(sub, "no event boundary in 1 MiB")
                        return
                    sub.tail = tail
                    complete = b""
                else:
                    complete, sub.tail = tail[:cut + 2], tail[cut + 2:]
            if complete:
                if not sub.ready:
                    sub.ready = True
                    self.ready_count += 1
                    self.pending -= 1
                if HEARTBEAT in complete:
                    beats = complete.count(HEARTBEAT)
                    sub.heartbeats += beats
                    sub.hold_heartbeats += beats
                    self.heartbeats += beats
                if b"@b" in complete:
                    for match in BROADCAST.finditer(complete):
                        self.record(sub, int(match.group(1)), now - float(match.group(2)), now)
        if finished:
            self.ended(sub, "the response ended")

    def record(self, sub: Sub, k: int, latency: float, now: float) -> None:
        lat = self.latency.get(k)
        if lat is None:
            lat = self.latency[k] = array.array("d", bytes(8 * len(self.subs)))
            self.reached[k] = 0
            self.first_rx[k] = now
        if lat[sub.index] != 0.0:
            self.excess += 1
            return
        lat[sub.index] = latency if latency != 0.0 else 1e-9
        self.reached[k] += 1
        self.last_rx[k] = now

    # -- control -------------------------------------------------------------------------------------------

    def on_stdin(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self.running = False
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, _, self.stdin_buf = self.stdin_buf.partition(b"\n")
            if line.strip():
                self.command(json.loads(line))

    def command(self, message: dict[str, Any]) -> None:
        cmd = message.get("cmd")
        if cmd == "hold":
            for sub in self.subs:
                sub.hold_heartbeats = 0
            self.emit({"event": "hold", "id": self.args.id})
        elif cmd == "stats":
            self.emit(self.stats())
        elif cmd == "report":
            result = self.stats("report")
            result["latency_us"] = {
                str(k): [int(v * 1e6) if v != 0.0 else -1 for v in lat] for k, lat in sorted(self.latency.items())}
            self.emit(result)
        elif cmd == "quit":
            self.running = False
        else:
            self.emit({"event": "error", "message": f"unknown command {cmd!r}"})

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        stdin_fd = sys.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        self.epoll.register(stdin_fd, select.EPOLLIN)
        rate = self.args.connect_rate
        tokens, last_refill = 0.0, monotonic()
        next_progress = last_refill
        poll, by_fd, on_readable = self.epoll.poll, self.by_fd, self.on_readable
        while self.running:
            now = monotonic()
            if self.to_start:
                tokens = min(tokens + (now - last_refill) * rate, max(1.0, rate / 20))
                last_refill = now
                while self.to_start and self.pending < self.args.max_pending and tokens >= 1:
                    not_before, sub = self.to_start[0]
                    if not_before > now:
                        if len(self.to_start) > 1:  # a retry waiting: let the others go first
                            self.to_start.rotate(-1)
                            if self.to_start[0][0] > now:
                                break
                            continue
                        break
                    self.to_start.popleft()
                    tokens -= 1
                    self.start(sub)
            if not self.announced:
                if now >= next_progress:
                    self.emit(self.counts("progress"))
                    next_progress = now + 1.0
                if self.ready_count + self.failed >= len(self.subs):
                    self.announced = True
                    self.ready_at = now
                    self.emit(self.counts("ready"))
            events = poll(0.005 if self.to_start else 0.2)
            for fd, _mask in events:
                found = by_fd.get(fd)
                if found is None:
                    if fd == stdin_fd:
                        self.on_stdin()
                elif found.state == CONNECTING:
                    self.on_writable(found)
                else:
                    on_readable(found)
        for sub in self.subs:
            self.close(sub, reset=True)
        self.emit({"event": "bye", "id": self.args.id})


def rss_self() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", type=int, default=0, help="this load generator's number (in its messages)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/realtime/bench")
    parser.add_argument("--count", type=int, default=100, help="subscriber connections")
    parser.add_argument("--sources", default="127.0.0.1", help="comma-separated loopback source addresses")
    parser.add_argument("--connect-rate", type=float, default=500.0, help="new connections per second at most")
    parser.add_argument("--max-pending", type=int, default=100, help="connections opened but not yet ready")
    parser.add_argument("--attempts", type=int, default=10, help="tries per subscriber before giving up")
    args = parser.parse_args(argv)
    for address in [args.host, *args.sources.split(",")]:
        if address and not address.startswith("127."):
            parser.error(f"loopback addresses only, not {address}")
    limit = raise_nofile()
    if limit < args.count + 64:
        parser.error(f"the open-file limit ({limit}) is too low for {args.count} subscribers: use more "
                     "load generators")
    LoadGen(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
