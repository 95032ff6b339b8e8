"""The publisher side of ``bench/fanout.py``: ``POST /api/broadcast`` over keep-alive connections.

A process of its own, so that its CPU time is measured apart from the subscribers' load generator and from the
server. ``--connections`` non-blocking HTTP/1.1 keep-alive connections in one epoll loop, each with at most one
request in flight (no pipelining). Event ``k`` has the body
``{"channel": CHANNEL, "data": "@k<k>@t<scheduled>@xxx..."}`` -- a string of ``--payload`` bytes whose markers
the subscribers' load generator looks for; ``<scheduled>`` is a ``time.monotonic()`` reading.

* ``--mode burst``: every connection sends its next event as soon as the answer to its previous one is in,
  for ``--duration`` seconds; the scheduled time is the send time.
* ``--mode rate``: event ``k`` is scheduled at ``t0 + k / --rate`` (``t0`` is ``--start-at``, or now) and sent
  then, on whichever connection is free; when none is, it waits, and since its data carries the *scheduled*
  time a publisher held back by a slow server counts against that server. The publisher's own lag (send time
  minus scheduled time) is reported too. Once an event is more than ``--max-lag`` seconds late the server cannot
  keep up: the publisher stops there (``gave_up``), so that the run stays bounded.
* ``--batch N`` (N > 1): each request body is a JSON array of N such event objects with consecutive ``k``, each
  with its own markers (the subscribers' load generator counts them one by one, as single publishes); a 2xx
  answer counts N events published. In burst mode every event of a batch carries the send time; in rate mode
  a batch is sent once its last event is due (each event still carries its own scheduled time, so the wait
  for the batch to fill counts as latency), and the last batch may be shorter.

Every answer must be a 2xx; the ``"subscribers"`` number in its JSON is collected (least and most; for a batch,
the first event's). At the end one JSON line goes to stdout: events published, requests sent, errors (requests
that failed: none of their events counts as published), the monotonic times of the first send and the last
answer, the publish rate (events/s), the lag, and this process's CPU time. Bounded: ``--timeout`` seconds after the
publishing window, whatever is still in flight counts as an error and the process exits.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

SUBSCRIBERS = re.compile(rb'"subscribers"\s*:\s*(\d+)')
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


class Conn:
    __slots__ = ("sock", "busy", "buf", "out", "sent_at", "connected", "events")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.busy = False
        self.buf = b""
        self.out = b""
        self.sent_at = 0.0
        self.connected = False
        self.events = 0  # events in the request in flight


class Publisher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.address = (args.host, args.port)
        self.selector = selectors.EpollSelector()
        self.conns = [Conn() for _ in range(args.connections)]
        self.head = (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.pad = "x" * args.payload
        self.k = 0
        self.batch = max(1, args.batch)
        self.requests = 0
        self.last_batch = 1  # events in the last request sent
        self.published = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.subscribers_min: int | None = None
        self.subscribers_max: int | None = None
        self.first_send = 0.0
        self.last_send = 0.0
        self.last_answer = 0.0
        self.lags: list[float] = []
        self.reconnects = 0
        self.rr = 0
        self.gave_up = False

    def connect(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, f"connect to {self.address}")
        conn.sock = sock
        conn.buf = b""
        conn.connected = False
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def reconnect(self, conn: Conn) -> None:
        if conn.sock is not None:
            self.selector.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        self.reconnects += 1
        self.connect(conn)

    def free_conn(self) -> Conn | None:
        """The next idle connection, round-robin, so that none sits idle past the server's keep-alive timeout."""
        count = len(self.conns)
        for step in range(count):
            conn = self.conns[(self.rr + step) % count]
            if not conn.busy and conn.sock is not None:
                self.rr = (self.rr + step + 1) % count
                return conn
        return None

    def event(self, k: int, scheduled: float) -> str:
        data = f"@k{k}@t{scheduled:.6f}@"
        pad = self.pad[: max(0, self.args.payload - len(data))]
        return f'{{"channel":"{self.args.channel}","data":"{data}{pad}"}}'

    def body(self, k: int, scheduled: float) -> bytes:
        return self.event(k, scheduled).encode()

    def batch_body(self, k: int, count: int, scheduled: Callable[[int], float]) -> bytes:
        """A JSON array of ``count`` events from ``k`` on; ``scheduled(i)`` is the i-th one's scheduled time."""
        return ("[" + ",".join(self.event(k + i, scheduled(i)) for i in range(count)) + "]").encode()

    def send(self, conn: Conn, scheduled: float, now: float, count: int = 1, step: float = 0.0) -> None:
        """Send events k .. k+count-1 in one request; event k+i is scheduled at ``scheduled + i * step``.
        ``count`` 1 without ``--batch`` is the single-object body; with ``--batch`` N > 1 the body is always an
        array."""
        if self.batch == 1:
            body = self.body(self.k, scheduled)
        else:
            body = self.batch_body(self.k, count, lambda i: scheduled + i * step)
        self.k += count
        self.requests += 1
        self.last_batch = count
        conn.events = count
        conn.out = self.head + str(len(body)).encode() + b"\r\n\r\n" + body
        conn.busy = True
        conn.sent_at = now
        if not self.first_send:
            self.first_send = now
        self.last_send = now
        if self.args.mode == "rate":
            self.lags.append(now - (scheduled + (count - 1) * step))  # the last event's: the batch waited for it
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        if not conn.connected:
            return  # sent once the connection is up
        try:
            sent = sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        conn.out = conn.out[sent:]
        self.selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0), conn)

    def on_event(self, conn: Conn, mask: int, now: float) -> None:
        sock = conn.sock
        assert sock is not None
        if mask & selectors.EVENT_WRITE:
            if not conn.connected:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {self.address}")
                conn.connected = True
                if conn.out:
                    self.flush(conn)
                else:
                    self.selector.modify(sock, selectors.EVENT_READ, conn)
            elif conn.out:
                self.flush(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if conn.busy:  # the answer never came: an error, and the event is not counted
                self.errors += 1
                conn.busy = False
            self.reconnect(conn)
            return
        buf = conn.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            conn.buf = buf
            return
        head = buf[: end + 2]
        body_start = end + 4
        length = CONTENT_LENGTH.search(head)
        if length:
            body_end = body_start + int(length.group(1))
            if len(buf) < body_end:
                conn.buf = buf
                return
        elif CHUNKED.search(head):
            last = buf.find(b"\r\n0\r\n\r\n", body_start - 2)
            if last < 0:
                conn.buf = buf
                return
            body_end = last + 7
        else:
            body_end = len(buf)
        body = buf[body_start:body_end]
        conn.buf = buf[body_end:]
        parts = head.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.published += conn.events
            found = SUBSCRIBERS.search(body)
            if found:
                count = int(found.group(1))
                if self.subscribers_min is None or count < self.subscribers_min:
                    self.subscribers_min = count
                if self.subscribers_max is None or count > self.subscribers_max:
                    self.subscribers_max = count
        else:
            self.errors += 1
            if self.errors <= 3:
                print(f"publisher: HTTP {status}: {body[:200]!r}", file=sys.stderr, flush=True)
        conn.busy = False
        conn.events = 0
        self.last_answer = now
        if CONNECTION_CLOSE.search(head):
            self.reconnect(conn)

    def run(self) -> dict[str, Any]:
        args = self.args
        for conn in self.conns:
            self.connect(conn)
        start = args.start_at if args.start_at else time.monotonic()
        stop = start + args.duration
        total = int(round(args.rate * args.duration)) if args.mode == "rate" else None
        hard_stop = stop + args.timeout
        cpu0 = time.process_time()
        select = self.selector.select
        while True:
            now = time.monotonic()
            if now >= hard_stop:
                stuck = sum(c.busy for c in self.conns)
                self.errors += stuck
                print(f"publisher: {stuck} answers still missing after --timeout", file=sys.stderr, flush=True)
                break
            if args.mode == "burst":
                sending = start <= now < stop
                if sending:
                    for conn in self.conns:
                        if not conn.busy and conn.sock is not None:
                            self.send(conn, now, now, self.batch)
                elif now >= stop and not any(c.busy for c in self.conns):
                    break
                timeout = max(0.0, start - now) if now < start else 0.05
            else:
                assert total is not None
                blocked = False
                while self.k < total:
                    count = min(self.batch, total - self.k)
                    first_due = start + self.k / args.rate
                    due = start + (self.k + count - 1) / args.rate  # a batch goes once its last event is due
                    if due > now:
                        break
                    if now - due > args.max_lag:  # the server cannot keep up: stop here, the run stays bounded
                        self.gave_up = True
                        print(f"publisher: event {self.k} is {now - due:.1f} s late; giving up on the remaining "
                              f"{total - self.k} events", file=sys.stderr, flush=True)
                        total = self.k
                        break
                    free = self.free_conn()
                    if free is None:
                        blocked = True
                        break
                    self.send(free, first_due, now, count, 1.0 / args.rate)
                if self.k >= total and not any(c.busy for c in self.conns):
                    break
                if blocked or self.k >= total:
                    # due and no free connection: wait for an answer (spinning would take CPU from the server
                    # on a 2-core machine)
                    timeout = 0.05
                else:
                    count = min(self.batch, total - self.k)
                    timeout = max(0.0, start + (self.k + count - 1) / args.rate - time.monotonic())
            for key, mask in select(timeout):
                self.on_event(key.data, mask, time.monotonic())
        cpu = time.process_time() - cpu0
        for conn in self.conns:
            if conn.sock is not None:
                conn.sock.close()
        lags = sorted(self.lags)

        def pct(fraction: float) -> float:
            return lags[min(len(lags) - 1, int(fraction * len(lags)))] * 1e3 if lags else 0.0

        window = (self.last_send - self.first_send) if self.published > 1 and self.requests > 1 else 0.0
        return {
            "event": "published", "mode": args.mode, "connections": args.connections, "batch": self.batch,
            "requests": self.requests, "sent": self.k,
            "scheduled": int(round(args.rate * args.duration)) if args.mode == "rate" else self.k,
            "gave_up": self.gave_up,
            "published": self.published, "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()}, "reconnects": self.reconnects,
            "subscribers_min": self.subscribers_min, "subscribers_max": self.subscribers_max,
            "first_send": self.first_send, "last_send": self.last_send, "last_answer": self.last_answer,
            # events/s: the events sent before the last request, over the time from the first send to the last
            # (with single publishes, (sent - 1) / window)
            "publish_rate": (self.k - self.last_batch) / window if window > 0 else 0.0,
            "lag_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lags[-1] * 1e3 if lags else 0.0},
            "cpu_seconds": cpu,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/broadcast")
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--mode", choices=("burst", "rate"), default="burst")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (--mode rate)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    parser.add_argument("--payload", type=int, default=100, help="bytes of event data")
    parser.add_argument("--start-at", type=float, default=0.0, help="time.monotonic() of the first event")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds after the window before giving up")
    parser.add_argument("--max-lag", type=float, default=5.0,
                        help="--mode rate: stop publishing once an event is this many seconds late")
    parser.add_argument("--batch", type=int, default=1,
                        help="events per request: above 1, the body is a JSON array of that many events")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch is at least 1")
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("loopback addresses only")
    result = Publisher(args).run()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
