"""WebSocket room members for ``bench/rooms.py``: one process, non-blocking sockets, one epoll loop.

A minimal RFC 6455 client: the HTTP upgrade, server frames read unmasked (fragments joined, pings answered),
client frames written masked. ``--socketio`` speaks Engine.IO 4 / Socket.IO 5 over that WebSocket (``40``
connect, ``42["join", ...]``, ``42["send", ...]``, ``42["message", {...}]``, ``2``/``3`` ping/pong).

Members are spread over ``--rooms`` rooms (member i in room i % rooms); member 0 of room 0 is the sender;
``--frozen`` members of room 0 never read after their handshake (SO_RCVBUF small). A member is ready once it
got its own join (rover_stream and the peers send ``{"type": "join", "user": <its name>}``).

Talks to its parent in JSON lines: prints ``ready``, waits for ``go`` on stdin, sends (``burst``: as fast as
the slowest reading member lets it, at most ``--window`` frames ahead, for ``--duration`` seconds;
``frozen``: ``--count`` frames; ``steady``: ``--rate`` messages a second in total, round robin over the
rooms, each from its room's first member and stamped with its scheduled time), waits for the frames to
arrive (``--drain-timeout``), prints ``done`` with its figures, and exits after ``stop`` (connections stay
open until then).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import sys
import time
from typing import Any

HANDSHAKE_LIMIT = 200  # unanswered upgrades at a time


class Member:
    __slots__ = ("index", "room", "user", "sock", "state", "rbuf", "wbuf", "frozen", "ready", "received",
                 "last_seq", "corrupt", "out_of_order", "closed", "frag", "mask", "sio_open")

    def __init__(self, index: int, room: str, frozen: bool) -> None:
        self.index = index
        self.room = room
        self.user = f"u{index}"
        self.sock: socket.socket | None = None
        self.state = "new"
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.frozen = frozen
        self.ready = False
        self.received = 0
        self.last_seq = -1
        self.corrupt = 0
        self.out_of_order = 0
        self.closed = ""
        self.frag = bytearray()
        self.mask = os.urandom(4)
        self.sio_open = False


def mask_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        keys = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")
    return head + key + payload


class Loadgen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.members = [Member(i, f"{args.room_prefix}{i % args.rooms}", False) for i in range(args.members)]
        room0 = [m for m in self.members if m.index % args.rooms == 0]
        for m in room0[1:1 + args.frozen]:
            m.frozen = True
        self.sender = self.members[0]
        self.readers = [m for m in room0 if not m.frozen]
        if args.mode == "steady":  # the first member of each room sends; everyone reads
            self.senders = self.members[:args.rooms]
            self.readers = [m for m in self.members if not m.frozen]
            self.room_sent = [0] * args.rooms
        self.pending = 0
        self.next_connect = 0
        self.sent = 0
        self.first_send = 0.0
        self.last_send = 0.0
        self.last_receive = 0.0
        self.latencies: list[float] = []
        self.payload_size = args.size
        self.stdin_buf = b""
        self.commands: list[str] = []
        self.pad = b"x" * max(0, args.size)
        self.now = time.time()

    # -- output ------------------------------------------------------------------------------------------------

    @staticmethod
    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # -- connections -------------------------------------------------------------------------------------------

    def connect_more(self) -> None:
        while self.next_connect < len(self.members) and self.pending < HANDSHAKE_LIMIT:
            m = self.members[self.next_connect]
            self.next_connect += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if m.frozen:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                sock.connect((self.args.host, self.args.port))
            except BlockingIOError:
                pass
            m.sock = sock
            m.state = "connecting"
            key = base64.b64encode(os.urandom(16)).decode()
            if self.args.socketio:
                path = "/socket.io/?EIO=4&transport=websocket"
            else:
                path = self.args.path.format(room=m.room, user=m.user)
            # rover_stream's rooms speak JSON to clients that ask for it (plain text to wscat); peers ignore it
            protocol = "" if self.args.socketio else "Sec-WebSocket-Protocol: rover.json\r\n"
            m.wbuf += (f"GET {path} HTTP/1.1\r\nHost: {self.args.host}:{self.args.port}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
                       ).encode()
            self.pending += 1
            self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, m)

    def update_events(self, m: Member) -> None:
        if m.sock is None or m.closed:
            return
        events = 0
        if not (m.frozen and m.state == "open"):
            events |= selectors.EVENT_READ
        if m.wbuf:
            events |= selectors.EVENT_WRITE
        try:
            if events:
                self.sel.modify(m.sock, events, m)
            else:
                self.sel.unregister(m.sock)
        except (KeyError, ValueError):
            if events:
                self.sel.register(m.sock, events, m)

    def write(self, m: Member, data: bytes) -> None:
        if m.closed:
            return
        m.wbuf += data
        self.flush(m)

    def flush(self, m: Member) -> None:
        if m.sock is None or m.closed:
            return
        if m.wbuf:
            try:
                n = m.sock.send(m.wbuf)
                del m.wbuf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self.close(m, f"write: {exc}")
                return
        self.update_events(m)

    def close(self, m: Member, why: str) -> None:
        if m.closed:
            return
        m.closed = why or "closed"
        if m.state != "open":
            self.pending -= 1
        if m.sock is not None:
            try:
                self.sel.unregister(m.sock)
            except (KeyError, ValueError):
                pass
            m.sock.close()

    def send_text(self, m: Member, text: str) -> None:
        self.write(m, mask_frame(1, text.encode(), m.mask))

    # -- reading -----------------------------------------------------------------------------------------------

    def on_readable(self, m: Member) -> None:
        assert m.sock is not None
        try:
            data = m.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(m, f"read: {exc}")
            return
        if not data:
            self.close(m, "eof")
            return
        m.rbuf += data
        if m.state == "connecting":
            end = m.rbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(m.rbuf[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.close(m, f"upgrade refused: {status.decode(errors='replace')}")
                return
            del m.rbuf[:end + 4]
            m.state = "open"
            self.pending -= 1
            if m.frozen:
                m.ready = True  # never reads again
                self.update_events(m)
                return
        self.parse_frames(m)

    def parse_frames(self, m: Member) -> None:
        buf = m.rbuf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:
                m.corrupt += 1  # a server must not mask
                head += 4
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 0:
                m.frag += payload
                if fin:
                    payload = bytes(m.frag)
                    m.frag.clear()
                    self.on_message(m, payload)
            elif opcode in (1, 2):
                if fin:
                    self.on_message(m, payload)
                else:
                    m.frag[:] = payload
            elif opcode == 9:
                self.write(m, mask_frame(10, payload, m.mask))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                del buf[:pos]
                self.close(m, f"close {code}")
                return
            elif opcode != 10:
                m.corrupt += 1
        if pos:
            del buf[:pos]

    def on_message(self, m: Member, payload: bytes) -> None:
        if self.args.socketio:
            if payload[:2] == b"42":
                try:
                    event = json.loads(payload[2:])
                except ValueError:
                    m.corrupt += 1
                    return
                if event[0] == "message":
                    self.on_room_message(m, event[1])
                elif event[0] == "joined":
                    m.ready = True
            elif payload[:1] == b"0" and not m.sio_open:
                m.sio_open = True
                self.send_text(m, "40")
            elif payload[:2] == b"40":
                self.send_text(m, "42" + json.dumps(["join", {"room": m.room, "user": m.user}]))
            elif payload[:1] == b"2":
                self.send_text(m, "3")
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            m.corrupt += 1
            return
        kind = obj.get("type")
        if kind == "message":
            self.on_room_message(m, obj)
        elif kind == "join" and obj.get("user") == m.user:
            m.ready = True

    def on_room_message(self, m: Member, obj: dict[str, Any]) -> None:
        text = obj.get("text")
        if not isinstance(text, str) or not text.startswith("#"):
            m.corrupt += 1
            return
        try:
            seq_s, stamp, pad = text[1:].split(":", 2)
            seq = int(seq_s)
            sent_at = float(stamp)
        except ValueError:
            m.corrupt += 1
            return
        if len(text) != self.text_length(seq_s, stamp) or pad.strip("x"):
            m.corrupt += 1
            return
        if seq != m.last_seq + 1:
            m.out_of_order += 1
        m.last_seq = seq
        m.received += 1
        now = self.now
        self.last_receive = now
        if self.args.latency:
            self.latencies.append(now - sent_at)

    def text_length(self, seq_s: str, stamp: str) -> int:
        return max(self.args.size, len(seq_s) + len(stamp) + 3)

    # -- sending -----------------------------------------------------------------------------------------------

    def make_text(self, seq: int, stamp: float | None = None) -> str:
        head = f"#{seq}:{time.time() if stamp is None else stamp:.6f}:"
        return head + "x" * max(0, self.args.size - len(head))

    def send_due(self, start: float, now: float) -> None:
        """``steady``: every message whose time has come (message k at start + k / rate, sent by the sender
        of room k % rooms), stamped with that scheduled time: latency counts from when it should have left."""
        args = self.args
        due = min(int((now - start) * args.rate) + 1, int(args.duration * args.rate))
        while self.sent < due:
            k = self.sent
            room = k % args.rooms
            sender = self.senders[room]
            text = self.make_text(self.room_sent[room], start + k / args.rate)
            if args.socketio:
                text = "42" + json.dumps(["send", {"text": text}])
            self.room_sent[room] += 1
            self.sent += 1
            if not sender.closed:
                self.write(sender, mask_frame(1, text.encode(), sender.mask))
        if not self.first_send:
            self.first_send = start
        self.last_send = now

    def send_some(self, deadline_send: float) -> bool:
        """Sends what the window allows; False once sending is over."""
        args = self.args
        if self.sender.closed:
            return False
        if args.mode == "burst" and time.time() >= deadline_send:
            return False
        if args.mode == "frozen" and self.sent >= args.count:
            return False
        slowest = min(m.received for m in self.readers if not m.closed) if any(
            not m.closed for m in self.readers) else self.sent
        budget = args.window - (self.sent - slowest)
        if budget <= 0 or len(self.sender.wbuf) > 65536:
            return True
        if args.mode == "frozen":
            budget = min(budget, args.count - self.sent)
        frames = []
        for _ in range(budget):
            text = self.make_text(self.sent)
            if args.socketio:
                text = "42" + json.dumps(["send", {"text": text}])
            frames.append(mask_frame(1, text.encode(), self.sender.mask))
            self.sent += 1
        if not self.first_send:
            self.first_send = time.time()
        self.last_send = time.time()
        self.write(self.sender, b"".join(frames))
        return True

    # -- the loop ----------------------------------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        ready = self.sel.select(timeout)
        self.now = time.time()  # when these sockets were found readable: latency does not include our parsing
        for key, events in ready:
            if key.data is None:
                self.read_stdin()
                continue
            m: Member = key.data
            if m.closed:
                continue
            if events & selectors.EVENT_WRITE:
                self.flush(m)
            if events & selectors.EVENT_READ and not m.closed:
                self.on_readable(m)

    def read_stdin(self) -> None:
        try:
            chunk = os.read(0, 4096)
        except BlockingIOError:
            return
        if not chunk:
            self.commands.append("stop")
            return
        self.stdin_buf += chunk
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            self.commands.append(line.decode().strip())

    def wait_command(self, wanted: str) -> None:
        while True:
            while self.commands:
                command = self.commands.pop(0)
                if command in (wanted, "stop"):
                    if command == "stop" and wanted != "stop":
                        raise SystemExit(0)
                    return
            self.poll(0.2)

    def run(self) -> None:
        args = self.args
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, None)
        started = time.monotonic()
        while True:
            self.connect_more()
            self.poll(0.05)
            done = sum(1 for m in self.members if m.ready or m.closed)
            if done == len(self.members):
                break
            if time.monotonic() - started > args.connect_timeout:
                break
        closed = [m.closed for m in self.members if m.closed]
        self.emit({"event": "ready", "ready": sum(1 for m in self.members if m.ready and not m.closed),
                   "members": len(self.members), "closed": len(closed), "close_reasons": sorted(set(closed))[:5],
                   "seconds": time.monotonic() - started})
        self.wait_command("go")
        cpu0 = os.times()
        wall0 = time.time()
        if args.mode == "steady":
            start = time.time() + 0.05
            end = start + args.duration
            while time.time() < end:
                self.send_due(start, time.time())
                next_send = start + self.sent / args.rate  # wake up when the next message is due
                self.poll(max(0.0, min(next_send, end) - time.time()))
            drain_end = time.time() + args.drain_timeout
            while time.time() < drain_end:
                if all(m.received >= self.room_sent[m.index % args.rooms] or m.closed for m in self.readers):
                    break
                self.poll(0.05)
        elif args.mode in ("burst", "frozen"):
            deadline_send = time.time() + args.duration
            sending = True
            while sending:
                sending = self.send_some(deadline_send)
                self.poll(0.001 if sending else 0)
                if args.mode == "frozen" and time.time() - wall0 > args.duration + args.drain_timeout:
                    break
            drain_end = time.time() + args.drain_timeout
            while time.time() < drain_end:
                if all(m.received >= self.sent or m.closed for m in self.readers):
                    break
                self.poll(0.05)
        else:
            end = time.time() + args.duration
            while time.time() < end:
                self.poll(0.1)
        cpu1 = os.times()
        wall1 = time.time()
        readers = self.readers if args.mode != "idle" else [m for m in self.members if not m.frozen]
        window = max(1e-9, (max(self.last_receive, self.last_send) - self.first_send) if self.first_send else
                     wall1 - wall0)
        received = sum(m.received for m in readers)
        if args.mode == "steady":
            expected = sum(self.room_sent[m.index % args.rooms] for m in readers)
            complete = sum(1 for m in readers if m.received >= self.room_sent[m.index % args.rooms])
        elif args.mode == "idle":
            expected, complete = 0, len(readers)
        else:
            expected = self.sent * len(readers)
            complete = sum(1 for m in readers if m.received >= (args.count if args.mode == "frozen" else self.sent))
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

        frozen = [m for m in self.members if m.frozen]
        self.emit({
            "event": "done", "sent": self.sent, "readers": len(readers), "received": received,
            "expected": expected, "readers_complete": complete,
            "window_seconds": window, "wall_seconds": wall1 - wall0,
            "deliveries_per_second": received / window,
            "loadgen_cpu_seconds": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "corrupt": sum(m.corrupt for m in self.members), "out_of_order": sum(m.out_of_order for m in readers),
            "closed": sum(1 for m in readers if m.closed), "frozen_closed": [m.closed for m in frozen],
            "close_reasons": sorted({m.closed for m in readers if m.closed})[:5],
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)} if lat else None,
        })
        self.wait_command("stop")
        for m in self.members:
            if m.sock is not None and not m.closed:
                m.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ws/comms/{room}?user={user}")
    parser.add_argument("--socketio", action="store_true")
    parser.add_argument("--mode", choices=("burst", "frozen", "idle", "steady"), required=True)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--room-prefix", default="bench")
    parser.add_argument("--frozen", type=int, default=0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=32, help="characters per text")
    parser.add_argument("--window", type=int, default=128, help="frames ahead of the slowest reading member")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--rate", type=float, default=100.0, help="steady: messages a second over all rooms")
    Loadgen(parser.parse_args()).run()


if __name__ == "__main__":
    main()
