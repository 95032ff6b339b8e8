"""Connection churn for ``bench/churn.py``: ``--concurrency`` clients, each in a loop of connect, ``GET`` an
event stream, wait for its first complete event with data, close -- for ``--duration`` seconds, in one
process (non-blocking sockets, one epoll loop). Prints one JSON line: cycles, cycles/s, failures, the
p50/p99 of a cycle's time, and this process's CPU time."""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import time


class Slot:
    __slots__ = ("sock", "buffer", "started", "sent")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.started = 0.0
        self.sent = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one cycle may take")
    args = parser.parse_args()
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nAccept: text/event-stream\r\n"
               "Connection: close\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    slots = [Slot() for _ in range(args.concurrency)]
    cycles = failures = 0
    durations: list[float] = []
    cpu0, start = os.times(), time.monotonic()
    end = start + args.duration

    def begin(slot: Slot) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        try:
            sock.connect((args.host, args.port))
        except BlockingIOError:
            pass
        slot.sock, slot.buffer, slot.started, slot.sent = sock, b"", time.monotonic(), False
        sel.register(sock, selectors.EVENT_WRITE, slot)

    def finish(slot: Slot, ok: bool) -> None:
        nonlocal cycles, failures
        assert slot.sock is not None
        sel.unregister(slot.sock)
        slot.sock.close()
        slot.sock = None
        if ok:
            cycles += 1
            durations.append(time.monotonic() - slot.started)
        else:
            failures += 1
        if time.monotonic() < end:
            begin(slot)

    for slot in slots:
        begin(slot)
    while any(slot.sock is not None for slot in slots):
        now = time.monotonic()
        if now > end + args.timeout:
            break
        for key, events in sel.select(0.05):
            slot = key.data
            sock = slot.sock
            if sock is None:
                continue
            if events & selectors.EVENT_WRITE and not slot.sent:
                try:
                    sock.send(request)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EINPROGRESS):
                        finish(slot, False)
                    continue
                slot.sent = True
                sel.modify(sock, selectors.EVENT_READ, slot)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                finish(slot, False)
                continue
            if not data:
                finish(slot, False)
                continue
            slot.buffer += data
            body = slot.buffer.split(b"\r\n\r\n", 1)
            if len(body) == 2 and b"\ndata:" in b"\n" + body[1].replace(b"\r\n", b"\n") and (
                    b"\n\n" in body[1].split(b"data:", 1)[-1] or b"\r\n\r\n" in body[1].split(b"data:", 1)[-1]):
                finish(slot, True)
        for slot in slots:
            if slot.sock is not None and time.monotonic() - slot.started > args.timeout:
                finish(slot, False)
    wall = time.monotonic() - start
    cpu1 = os.times()
    durations.sort()

    def pct(p: float) -> float | None:
        return durations[min(len(durations) - 1, int(p * len(durations)))] * 1000 if durations else None

    print(json.dumps({"cycles": cycles, "failures": failures, "seconds": wall,
                      "cycles_per_second": cycles / args.duration if args.duration else 0.0,
                      "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                      "loadgen_cpu_seconds": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}))


if __name__ == "__main__":
    main()
