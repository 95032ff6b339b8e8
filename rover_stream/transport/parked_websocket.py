"""WebSocket connections in the parking lot: one writer, one reader, no greenlet per connection.

A connection's outgoing frames wait in its hub subscription's bounded queue (and its preamble, for frames
of its own: pongs, presence, errors); the worker's parking-lot writer writes them, sends pings, notices a
missing pong or an idle client, and writes the close frame last of all. The lot's reader greenlet reads
what the client sends when the event loop reports input and feeds it to simple-websocket's protocol
handling (:mod:`.websocket`), which calls back the connection's owner (a room member) with messages.
What this module needs of that owner is :class:`Connection`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Protocol

from ..wire.websocket import close_frame
from . import websocket
from .parked import ParkedStream, ParkingLot

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_LATER = 1000, 1001, 1008, 1009, 1013
#: The member's access token expired: reconnect with a new one (the 4000s are the application's own).
CLOSE_TOKEN_EXPIRED = 4401
#: Why the hub let go of a member: the code and reason of its close frame.
_HUB_ENDINGS = {"slow_client": (CLOSE_TRY_LATER, "too slow: messages were piling up"),
                "history_gap": (CLOSE_TRY_LATER, "this server fell behind the room's history: rejoin"),
                "token_expired": (CLOSE_TOKEN_EXPIRED, "token expired")}


class Connection(Protocol):
    """The owner of a parked WebSocket (a room member): its protocol state and what ends it."""

    ws: Any
    feed: Any
    bytes_sent: int
    closing: bool
    close_code: int | None
    #: The close frame while it waits to be written, then b"" once written; None while open.
    final_frame: bytes | None
    #: Set once the close frame is out (or the connection is gone).
    written: threading.Event
    end_reason: str
    ping_interval: float
    idle_timeout: float

    def close(self, code: int, reason: str = "") -> None: ...

    def end_input(self) -> None: ...

    def close_parked(self, reason: str) -> None: ...


PING_FRAME = b"\x89\x00"
#: Most bytes read from one connection in one turn of the reader before the others get theirs.
READ_TURN = 256 * 1024


class ParkedWebSocket(ParkedStream):
    """A WebSocket connection in the worker's parking lot: the shared writer writes its frames, sends its
    pings and notices a missing pong or an idle client; the shared reader reads what it sends."""

    __slots__ = ("member", "last_ping", "last_input", "read_watcher")

    def __init__(self, lot: ParkingLot, member: Connection, sock: Any) -> None:
        super().__init__(lot, member, sock, b"", watch_eof=False)
        self.member = member
        self.last_ping = self.last_input = time.monotonic()
        self.read_watcher: Any = None
        try:
            # A member whose network is gone acknowledges nothing: the kernel gives up on it after two
            # ping intervals of unacknowledged frames instead of TCP's default of about fifteen minutes.
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18),
                            int(member.ping_interval * 2000))
        except (OSError, AttributeError):
            pass

    def start_reading(self) -> None:
        self.read_watcher = self.lot.watch_reads(self)

    def stop_reading(self) -> None:
        if self.read_watcher is not None:
            self.read_watcher.stop()
            self.read_watcher.close()
            self.read_watcher = None

    def read_ready(self) -> None:
        """In the lot's reader greenlet: read what the client sent, let the protocol handle it (pongs,
        close), and publish its messages (:meth:`Member.on_input`)."""
        member = self.member
        ws = member.ws
        received = 0
        while self.read_watcher is not None:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                self.lot.rearm(self)
                return
            except OSError:
                data = b""
            if not data:  # the client closed, or the connection broke
                member.end_input()
                return
            self.last_input = time.monotonic()
            connected = websocket.feed(ws, data)  # may call member.on_input, member.send_raw
            if not connected or member.closing:
                member.end_input()
                return
            received += len(data)
            if received >= READ_TURN:
                self.lot.read_again(self)
                return

    def flush(self, now: float) -> None:
        member = self.member
        if member.final_frame is None:
            super().flush(now)
            return
        # Closing: what was being written, then the close frame, and nothing after it (RFC 6455 5.5.1:
        # no data frame may follow a close frame; Chrome fails such a connection with 1006).
        if self.closed or (self.unsent and not self._write(self.unsent, now)):
            return
        if member.final_frame:
            frame, member.final_frame = member.final_frame, b""
            if not self._write(frame, now):
                return
        member.written.set()  # the close frame is out

    def heartbeat(self, now: float, interval: float, send_timeout: float) -> None:
        member = self.member
        if self.unsent:
            super().heartbeat(now, interval, send_timeout)
        elif member.closing:
            pass
        elif now - self.last_input >= member.idle_timeout:
            member.end_reason = "idle"
            member.close(CLOSE_POLICY, "idle timeout")
        elif now - self.last_ping >= member.ping_interval:
            if not member.ws.pong_received:
                member.end_reason = "no_pong"
                member.close(CLOSE_POLICY, "no pong to the last ping")
                return
            member.ws.pong_received = False
            self.last_ping = now
            self._write(PING_FRAME, now)

    def close(self, reason: str) -> None:
        member = self.member
        if reason in _HUB_ENDINGS and not member.closing and not self.closed and not self.unsent:
            code, text = _HUB_ENDINGS[reason]
            member.closing = True
            member.close_code = code
            try:  # best effort: a socket that takes nothing more cannot carry it either
                os.write(self.fd, close_frame(code, text))
            except OSError:
                pass
        self.stop_reading()
        super().close(reason)
        member.written.set()


def split_frames(data: bytes) -> list[bytes]:
    """Server frames (unmasked) laid end to end, one by one."""
    frames = []
    at = 0
    while at + 2 <= len(data):
        length, header = data[at + 1] & 0x7F, 2
        if length == 126:
            length, header = int.from_bytes(data[at + 2:at + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[at + 2:at + 10], "big"), 10
        frames.append(data[at:at + header + length])
        at += header + length
    return frames


def linger(fd: int, seconds: float) -> None:
    """After our close frame: end our side, and read what the client still sends until it closes.
    Closing a socket with unread input makes the kernel send a reset, which can destroy the close frame
    before the client reads it (a client flooding us would see 1006 instead of 1009)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()
