"""The subscriber side of ``bench/fanout.py``: many SSE connections in one process, one epoll loop.

One process holds every subscriber connection (non-blocking sockets, one ``select.epoll``) and parses
as little as it can: the HTTP status line and headers once, the chunked transfer coding when the server uses
it, and then only where the last blank line (``\\n\\n``, or ``\\n\\r\\n`` for CRLF servers) of the data so far is.
Every complete part before it is searched for the benchmark's marker ``@t<seconds>@``, which the publisher
puts in each event's data: one marker is one event, so comments, heartbeats and ``retry:`` lines count for
nothing. With ``--latency`` the marker's number, the event's scheduled send time on ``time.monotonic()``'s
clock (CLOCK_MONOTONIC, shared by every process of the machine), is subtracted from the time of the ``recv``
that completed the event.

Connections are opened gradually: at most ``--connect-rate`` per second and at most ``--max-pending`` opened
but not yet ready, so listen backlogs do not overflow. A subscriber is ready (``--ready``) when the first
complete block arrived (``block``: ``retry: 3000`` and the like), when the response headers arrived
(``headers``), or as soon as its request was sent (``sent``, for servers that send nothing before the first
event). A refused or reset connection, or an answer other than 200, is tried again up to ``--attempts`` times.

Control: JSON lines. Out (stdout): ``{"event": "progress", ...}`` twice a second while connecting, then one
``{"event": "ready", ...}``. In (stdin), each answered by one line:

* ``{"cmd": "reset"}`` -- zero the counts and latencies and start the CPU clock.
* ``{"cmd": "wait", "expected": M, "timeout": T}`` -- answer the stats once every open subscriber has
  received M events since the reset (or T seconds have passed).
* ``{"cmd": "stats"}`` -- the stats now.
* ``{"cmd": "quit"}`` -- close every connection and exit.

The stats hold the counts (total, least and most per subscriber, subscribers short of M), the connections
lost, latency percentiles in ms, the monotonic times of the first and last event, and this process's own CPU
time since the reset (``time.process_time()``), so the caller can show that the load generator was not the
bottleneck.
"""

from __future__ import annotations

import argparse
import array
import errno
import json
import os
import re
import resource
import select
import socket
import sys
import time
from collections import deque
from time import monotonic
from typing import Any

MARK = re.compile(rb"@t(\d+\.\d+)@")
MARKER = b"@t"
TERMINATORS = (b"\n\n", b"\n\r\n")  # the blank line ending an event: LF, or CRLF servers (sse-starlette)
# 64 KiB: a larger recv() buffer is above malloc's mmap threshold, and every call then pays an mmap and
# an munmap (about 15 us more per recv on this machine)
RECV_SIZE = 64 * 1024
MAX_TAIL = 1 << 20  # an unterminated event this long means the stream is not SSE: give up on it

# Subscriber states
CONNECTING, HEADERS, BODY, CLOSED = range(4)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


class Sub:
    """One subscriber connection."""

    __slots__ = ("index", "sock", "state", "head", "chunked", "remaining", "cbuf", "tail", "count", "ready",
                 "attempts", "status", "crlf_seen")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.head = b""
        self.chunked = False
        self.remaining = 0  # chunked: >0 data bytes left in this chunk, 0 size line expected, -2 CRLF expected
        self.cbuf = b""
        self.tail = b""
        self.count = 0
        self.ready = False
        self.attempts = 0
        self.status = 0
        self.crlf_seen = False

    def dechunk(self, data: bytes) -> tuple[bytes, bool]:
        """The payload in ``data`` (chunked transfer coding), and whether the last chunk was seen."""
        if not self.cbuf and self.remaining == 0:  # the usual case: exactly one whole chunk per recv
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0 and b";" not in data[:eol]:
                start = eol + 2
                stop = start + int(data[:eol], 16)
                if stop > start and len(data) == stop + 2 and data.endswith(b"\r\n"):
                    return data[start:stop], False
        buf = self.cbuf + data if self.cbuf else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        remaining = self.remaining
        finished = False
        while pos < end:
            if remaining > 0:
                take = min(remaining, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                remaining -= take
                if remaining == 0:
                    remaining = -2
            elif remaining == -2:
                if end - pos < 2:
                    break
                pos += 2
                remaining = 0
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    finished = True
                    break
                remaining = size
        self.remaining = remaining
        self.cbuf = buf[pos:] if pos < end else b""
        return (out[0] if len(out) == 1 else b"".join(out)), finished


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.address = (args.host, args.port)
        self.request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()
        self.epoll = select.epoll()
        self.by_fd: dict[int, Sub] = {}  # registered sockets
        self.subs = [Sub(i) for i in range(args.count)]
        self.to_start: deque[tuple[float, Sub]] = deque((0.0, sub) for sub in self.subs)
        self.pending = 0
        self.ready_count = 0
        self.failed = 0  # gave up after --attempts
        self.retried = 0
        self.lost = 0  # ready subscribers whose connection ended
        self.http_errors: dict[int, int] = {}
        self.latency = array.array("d")
        self.first_event = 0.0
        self.last_event = 0.0
        self.reset_cpu = time.process_time()
        self.reset_wall = time.monotonic()
        self.wait_expected: int | None = None
        self.wait_deadline = 0.0
        self.announced_ready = False
        self.connect_started = time.monotonic()
        self.running = True
        self.stdin_buf = b""

    # -- output --------------------------------------------------------------------------------------------

    def emit(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def progress(self, event: str) -> None:
        self.emit({"event": event, "subscribers": len(self.subs), "ready": self.ready_count,
                   "pending": self.pending, "failed": self.failed, "retried": self.retried, "lost": self.lost,
                   "http_errors": {str(k): v for k, v in self.http_errors.items()},
                   "seconds": round(time.monotonic() - self.connect_started, 3)})

    def stats(self, expected: int | None) -> dict[str, Any]:
        cpu = time.process_time() - self.reset_cpu
        wall = time.monotonic() - self.reset_wall
        counts = [sub.count for sub in self.subs]
        lat = sorted(self.latency)
        result: dict[str, Any] = {
            "event": "stats", "subscribers": len(self.subs), "open": sum(s.state != CLOSED for s in self.subs),
            "ready": self.ready_count, "failed": self.failed, "lost": self.lost,
            "http_errors": {str(k): v for k, v in self.http_errors.items()},
            "received": sum(counts), "min_per_subscriber": min(counts, default=0),
            "max_per_subscriber": max(counts, default=0), "first_event": self.first_event,
            "last_event": self.last_event, "cpu_seconds": cpu, "wall_seconds": wall,
            "latency_samples": len(lat),
        }
        if expected is not None:
            result["expected_per_subscriber"] = expected
            result["short_subscribers"] = sum(c < expected for c in counts)
            result["missing"] = sum(max(0, expected - c) for c in counts)
            result["excess"] = sum(max(0, c - expected) for c in counts)
        if lat:
            result["latency_ms"] = {
                "p50": percentile(lat, 0.50) * 1e3, "p90": percentile(lat, 0.90) * 1e3,
                "p99": percentile(lat, 0.99) * 1e3, "p999": percentile(lat, 0.999) * 1e3,
                "max": lat[-1] * 1e3, "min": lat[0] * 1e3, "mean": sum(lat) / len(lat) * 1e3,
            }
        return result

    # -- connections ---------------------------------------------------------------------------------------

    def start(self, sub: Sub) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sub.sock = sock
        sub.state = CONNECTING
        sub.head = b""
        sub.chunked = False
        sub.remaining = 0
        sub.cbuf = b""
        sub.tail = b""
        sub.attempts += 1
        self.pending += 1
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.fail(sub, f"connect: {os.strerror(code)}")
            return
        self.epoll.register(sock.fileno(), select.EPOLLOUT)
        self.by_fd[sock.fileno()] = sub

    def mark_ready(self, sub: Sub) -> None:
        if not sub.ready:
            sub.ready = True
            self.ready_count += 1
            self.pending -= 1

    def fail(self, sub: Sub, reason: str, status: int = 0) -> None:
        """A connection that never became ready: try again later, or give up."""
        self.close(sub)
        if sub.ready:  # --ready sent: counted as ready when its request went out
            sub.ready = False
            self.ready_count -= 1
        else:
            self.pending -= 1
        if status:
            self.http_errors[status] = self.http_errors.get(status, 0) + 1
        if sub.attempts < self.args.attempts:
            self.retried += 1
            self.to_start.append((time.monotonic() + 0.2 * sub.attempts, sub))
        else:
            self.failed += 1
            print(f"subscriber {sub.index}: giving up: {reason}", file=sys.stderr, flush=True)

    def close(self, sub: Sub) -> None:
        if sub.sock is not None:
            fd = sub.sock.fileno()
            if self.by_fd.pop(fd, None) is not None:
                self.epoll.unregister(fd)
            sub.sock.close()
            sub.sock = None
        sub.state = CLOSED

    def ended(self, sub: Sub, reason: str) -> None:
        if sub.ready:
            self.lost += 1
            self.close(sub)
            print(f"subscriber {sub.index}: connection ended: {reason}", file=sys.stderr, flush=True)
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
            self.fail(sub, f"send: {exc}")
            return
        if sent != len(self.request):  # a ~100-byte request into an empty socket buffer: never happens
            self.fail(sub, "short send")
            return
        sub.state = HEADERS
        self.epoll.modify(sock.fileno(), select.EPOLLIN)
        if self.args.ready == "sent":
            self.mark_ready(sub)

    def on_readable(self, sub: Sub) -> None:
        sock = sub.sock
        assert sock is not None
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.ended(sub, f"recv: {exc}")
            return
        now = monotonic()  # per recv: a batch of ready sockets can take milliseconds to go through
        if not data:
            self.ended(sub, "closed by the server")
            return
        if sub.state == HEADERS:
            head = sub.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                sub.head = head
                return
            sub.head = b""
            status_line, _, fields = head[:end].partition(b"\r\n")
            parts = status_line.split(b" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 200:
                self.fail(sub, f"HTTP {status}", status or -1)
                return
            sub.status = status
            sub.chunked = b"transfer-encoding: chunked" in fields.lower()
            sub.state = BODY
            if self.args.ready == "headers":
                self.mark_ready(sub)
            data = head[end + 4 :]
            if not data:
                return
        finished = False
        if sub.chunked:
            data, finished = sub.dechunk(data)
        if data:
            tail = sub.tail + data if sub.tail else data
            if tail.endswith(TERMINATORS):  # the usual case: whole events
                cut = len(tail)
            else:
                lf = tail.rfind(b"\n\n")
                crlf = tail.rfind(b"\n\r\n")
                cut = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
            if cut:
                if cut == len(tail):
                    complete = tail
                    sub.tail = b""
                else:
                    complete = tail[:cut]
                    sub.tail = tail[cut:]
                if not sub.ready:
                    self.mark_ready(sub)
                if self.args.latency:
                    stamps = MARK.findall(complete)
                    if stamps:
                        sub.count += len(stamps)
                        self.latency.extend([now - float(stamp) for stamp in stamps])
                        if not self.first_event:
                            self.first_event = now
                        self.last_event = now
                else:
                    found = complete.count(MARKER)
                    if found:
                        sub.count += found
                        if not self.first_event:
                            self.first_event = now
                        self.last_event = now
            else:
                sub.tail = tail
                if len(tail) > MAX_TAIL:
                    self.ended(sub, "no event terminator in 1 MiB")
                    return
        if finished:
            self.ended(sub, "the server ended the stream")

    # -- control -------------------------------------------------------------------------------------------

    def on_stdin(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:  # the controller went away
            self.running = False
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, _, self.stdin_buf = self.stdin_buf.partition(b"\n")
            if line.strip():
                self.command(json.loads(line))

    def command(self, message: dict[str, Any]) -> None:
        cmd = message.get("cmd")
        if cmd == "reset":
            for sub in self.subs:
                sub.count = 0
            self.latency = array.array("d")
            self.first_event = self.last_event = 0.0
            self.reset_cpu = time.process_time()
            self.reset_wall = time.monotonic()
            self.emit({"event": "reset"})
        elif cmd == "wait":
            self.wait_expected = int(message["expected"])
            self.wait_deadline = time.monotonic() + float(message.get("timeout", 60))
            self.check_wait()
        elif cmd == "stats":
            self.emit(self.stats(message.get("expected")))
        elif cmd == "quit":
            self.running = False
        else:
            self.emit({"event": "error", "message": f"unknown command {cmd!r}"})

    def check_wait(self) -> None:
        expected = self.wait_expected
        if expected is None:
            return
        done = all(sub.count >= expected or sub.state == CLOSED for sub in self.subs)
        timed_out = time.monotonic() >= self.wait_deadline
        if done or timed_out:
            self.wait_expected = None
            result = self.stats(expected)
            result["timed_out"] = not done
            self.emit(result)

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        os.set_blocking(sys.stdin.fileno(), False)
        stdin_fd = sys.stdin.fileno()
        self.epoll.register(stdin_fd, select.EPOLLIN)
        rate = self.args.connect_rate
        tokens = 0.0
        last_refill = time.monotonic()
        next_progress = last_refill
        next_wait_check = last_refill
        poll = self.epoll.poll
        by_fd = self.by_fd
        on_readable = self.on_readable
        while self.running:
            now = time.monotonic()
            if self.to_start:
                tokens = min(tokens + (now - last_refill) * rate, max(1.0, rate / 20))
                last_refill = now
                while self.to_start and self.pending < self.args.max_pending and tokens >= 1:
                    not_before, sub = self.to_start[0]
                    if not_before > now:
                        break
                    self.to_start.popleft()
                    tokens -= 1
                    self.start(sub)
            if not self.announced_ready:
                if now >= next_progress:
                    self.progress("progress")
                    next_progress = now + 0.5
                if self.ready_count + self.failed >= len(self.subs):
                    self.announced_ready = True
                    self.progress("ready")
                timeout = 0.005 if self.to_start else 0.1
            else:
                timeout = 0.1 if self.wait_expected is None else 0.02
            events = poll(timeout)
            now = time.monotonic()
            for fd, _mask in events:
                ready = by_fd.get(fd)
                if ready is None:
                    if fd == stdin_fd:
                        self.on_stdin()
                elif ready.state == CONNECTING:
                    self.on_writable(ready)
                else:
                    on_readable(ready)
            if self.wait_expected is not None and now >= next_wait_check:
                next_wait_check = now + 0.02
                self.check_wait()
        for sub in self.subs:
            self.close(sub)
        self.emit({"event": "bye"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/realtime/bench")
    parser.add_argument("--count", type=int, default=100, help="subscriber connections")
    parser.add_argument("--ready", choices=("block", "headers", "sent"), default="block")
    parser.add_argument("--latency", action="store_true", help="keep every event's latency (else only count)")
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="new connections per second at most")
    parser.add_argument("--max-pending", type=int, default=200, help="connections opened but not yet ready")
    parser.add_argument("--attempts", type=int, default=5, help="tries per subscriber before giving up")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("loopback addresses only")
    limit = raise_nofile()
    if limit < args.count + 64:
        parser.error(f"the open-file limit ({limit}) is too low for {args.count} subscribers")
    LoadGen(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
