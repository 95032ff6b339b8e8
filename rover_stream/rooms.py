"""WebSocket rooms: mission comms channels on the hub, served by flask-sock with plain ``def`` handlers.

``/ws/comms/<room>``: a text frame from one member reaches every member of the same room and no one else.
A room is the hub channel ``room.<room>``, so with the Redis engine members on different workers and hosts
share it, and its history replays like any channel's (SSE clients may listen on it too).

Frames are JSON objects (see :data:`FRAME_TYPES`)::

    {"type": "message", "room": "science", "user": "ada", "text": "Sample 7 looks odd", "id": "...",
     "timestamp": 1795263245.1}
    {"type": "join" | "leave", "room": ..., "user": ..., "id": ..., "timestamp": ...}
    {"type": "presence", "room": ..., "members": ["ada", "grace"]}       (to a member that joins)
    {"type": "history", "room": ..., "messages": [<message frames>]}     (to a member that joins)
    {"type": "error", "error": CODE, "message": SENTENCE}                (before a close)

A client sends ``{"text": "..."}`` (or ``{"type": "message", "text": "..."}``), or just plain text, as
``wscat`` does. The user name comes from the ``user`` query parameter (or the token's subject).

**One writer per connection.** Broadcasts never touch a member's socket: they only queue the message in the
member's bounded hub queue (its subscription). One writer greenlet per connection writes everything --
its frames, and simple-websocket's pongs and close frames, which are routed to it -- with ``sendall``, so
frames are never interleaved nor truncated (pitfalls 7 and 8). A member whose queue fills up is dropped by
the hub's slow-client policy and closed with 1013; the room goes on.

Close codes: 1000 normal, 1001 server shutting down, 1008 policy (message rate, idle timeout, bad frame),
1009 message too big, 1013 too slow (queue full) or room full.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, jsonify, request
from flask_sock import Sock

from .auth import require
from .concurrency import spawn
from .errors import ApiError
from .hub import Subscription, validate_channel
from .hub.names import is_private
from .pipe import FeedEnded
from .runtime import StreamRuntime, get_runtime
from .wire.websocket import close_frame, text_frame

log = logging.getLogger("rover_stream.rooms")

ROOM_PREFIX = "room."
FRAME_TYPES = ("message", "join", "leave", "presence", "history", "error")
MAX_USER_LENGTH = 64
MAX_TEXT_LENGTH = 4000
#: Seconds a closing connection waits for the client's end after our close frame.
LINGER = 1.0
#: Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_LATER = 1000, 1001, 1008, 1009, 1013

rooms_api = Blueprint("rover_stream_rooms", __name__)


def room_channel(room: str) -> str:
    return ROOM_PREFIX + room


class Presence:
    """Who is in which room, in this process. (With Redis, rooms span workers; the member list of
    ``GET /api/rooms/<room>`` is then this worker's view.)"""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[int, str]] = {}

    def add(self, room: str, member_id: int, user: str) -> None:
        self.rooms.setdefault(room, {})[member_id] = user

    def remove(self, room: str, member_id: int) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.pop(member_id, None)
            if not members:
                del self.rooms[room]

    def members(self, room: str) -> list[str]:
        return sorted(self.rooms.get(room, {}).values())


class OutboundSocket:
    """Stands in for the connection's socket inside simple-websocket: receiving reads the real socket;
    sending (pongs, close frames) is handed to the member's writer, the only one that writes."""

    def __init__(self, sock: Any, member: Member) -> None:
        self._sock = sock
        self._member = member

    def send(self, data: bytes) -> int:
        self._member.send_raw(bytes(data))
        return len(data)

    sendall = send

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)  # type: ignore[no-any-return]

    def fileno(self) -> int:
        return self._sock.fileno()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._member.reader_closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Member:
    """One WebSocket connection in one room: its subscription (the bounded outbound queue), its writer,
    its limits. Registered with the runtime like a stream (stream cap, shutdown, counters)."""

    kind = "websocket"

    def __init__(self, runtime: StreamRuntime, ws: Any, room: str, user: str, sock: Any) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.ws = ws
        self.room = room
        self.user = user
        self.sock = sock
        self.bytes_sent = 0
        self.handed_over = True
        self._opened_at = time.monotonic()
        self._done = threading.Event()
        self._closing: bytes | None = None
        self.close_code: int | None = None
        self._rate = settings["WS_MESSAGE_RATE"]
        self._allowance = float(self._rate * 2)  # a burst of twice the rate is fine
        self._last_message = time.monotonic()
        hub = runtime.hub
        self.subscription: Subscription = hub.subscribe(room_channel(room), format="ws")
        self.id = self.subscription.id
        runtime.admit(self)  # type: ignore[arg-type]

    @property
    def duration(self) -> float:
        return time.monotonic() - self._opened_at

    # -- writing: one writer greenlet per connection ----------------------------------------------------------

    def run_writer(self) -> None:
        take = self.subscription.take
        sock = self.sock
        try:
            while self._closing is None:
                try:
                    parts = take(1.0)
                except FeedEnded:
                    if self.subscription.dropped is not None:
                        self.close(CLOSE_TRY_LATER, "too slow: messages were piling up")
                        continue
                    break
                if parts:
                    data = parts[0] if len(parts) == 1 else b"".join(parts)
                    sock.sendall(data)
                    self.bytes_sent += len(data)
                if self.runtime.shutting_down and self._closing is None:
                    self.close(CLOSE_GOING_AWAY, "server shutting down")
            if self._closing:
                sock.sendall(self._closing)
                self._linger(sock)
        except OSError:
            pass  # the client went away, or SEND_TIMEOUT passed without progress
        finally:
            self._done.set()

    @staticmethod
    def _linger(sock: Any) -> None:
        """After our close frame: end our side, and read what the client still sends until it closes.
        Closing a socket with unread input makes the kernel send a reset, which can destroy the close
        frame before the client reads it (a client flooding us would see 1006 instead of 1009)."""
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER
        sock.settimeout(LINGER)
        try:
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except Exception:  # noqa: BLE001  -- gone, timed out, or simple-websocket's reader still reading
            pass

    def send_raw(self, frame: bytes) -> None:
        """A frame from simple-websocket (pong, close): written next by the writer."""
        if frame[:1] == b"\x88":  # a close frame: the last one
            if self._closing is None:
                self._closing = frame
        else:
            self.subscription.preamble.append(frame)
        self.subscription.wake()

    def send_frame(self, obj: dict[str, Any]) -> None:
        self.subscription.preamble.append(text_frame(json.dumps(obj, separators=(",", ":")).encode()))
        self.subscription.wake()

    def close(self, code: int, reason: str = "") -> None:
        if self._closing is None:
            self.close_code = code
            self._closing = close_frame(code, reason)
            self.subscription.wake()
        self.ws.connected = False  # the handler stops reading
        self.ws.event.set()

    def reader_closed(self) -> None:
        if self._closing is None:
            self._closing = b""
        self.subscription.wake()

    # -- reading ----------------------------------------------------------------------------------------------

    def allow_message(self) -> bool:
        """Token bucket: WS_MESSAGE_RATE messages a second, bursts of twice that."""
        now = time.monotonic()
        self._allowance = min(self._rate * 2.0, self._allowance + (now - self._last_message) * self._rate)
        self._last_message = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    # -- the runtime's interface --------------------------------------------------------------------------------

    def wake(self) -> None:
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def force_close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self, reason: str) -> None:
        self.subscription.close()
        self.runtime.release(self, reason)  # type: ignore[arg-type]

    def wait_written(self, timeout: float) -> None:
        self._done.wait(timeout)


def _origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; a page of another site must not use the visitor's cookies and tokens here
    (cross-site WebSocket hijacking). Clients without an Origin (wscat, scripts) are not browsers."""
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = urlsplit("//" + request.host)
    # Same origin: same host name, and the same port when the Host header names one (some clients leave
    # the port out of Host; browsers never do for a non-default port).
    return parts.hostname == host.hostname and (host.port is None or parts.port == host.port)


def _user_name() -> str:
    user = (request.args.get("user") or "").strip()
    if not user:
        return "anonymous"
    if len(user) > MAX_USER_LENGTH or any(ord(c) < 32 or c == "\x7f" for c in user):
        raise ApiError(f"A user name is 1 to {MAX_USER_LENGTH} printable characters.", code="invalid_user")
    return user


def _incoming_text(raw: Any) -> str | None:
    """The text of a client frame: JSON {"text": ...} or plain text. None for what cannot be a message."""
    if isinstance(raw, bytes):
        return None
    text = raw
    if raw[:1] == "{":
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = None
        if isinstance(frame, dict):
            if frame.get("type", "message") != "message" or not isinstance(frame.get("text"), str):
                return None
            text = frame["text"]
    text = text.strip()
    if not text or len(text) > MAX_TEXT_LENGTH:
        return None
    return text


def comms(ws: Any, team_channel: str) -> None:
    """The room handler: join, then read this member's frames and publish them to the room."""
    runtime = get_runtime()
    hub = runtime.hub
    room = team_channel
    user = request.environ["rover_stream.room_user"]
    member = Member(runtime, ws, room, user, request.environ["gunicorn.socket"])
    ws.sock = OutboundSocket(member.sock, member)
    presence: Presence = current_app.extensions["rover_stream_presence"]
    channel = room_channel(room)
    history = [m.data for m in hub.history(channel)[-runtime.settings["ROOM_HISTORY"]:]
               if isinstance(m.data, dict) and m.data.get("type") == "message"]
    member.send_frame({"type": "history", "room": room, "messages": history})
    presence.add(room, member.id, user)
    member.send_frame({"type": "presence", "room": room, "members": presence.members(room)})
    writer = spawn(member.run_writer, name="rover-stream-ws-writer")
    hub.publish(channel, {"type": "join", "room": room, "user": user, "timestamp": time.time()}, event="join")
    reason = "disconnect"
    idle_timeout = runtime.settings["WS_IDLE_TIMEOUT"]
    try:
        while True:
            raw = ws.receive(timeout=idle_timeout)
            if raw is None:
                if not ws.connected:
                    break
                member.close(CLOSE_POLICY, "idle timeout")
                reason = "idle"
                break
            if not member.allow_message():
                member.close(CLOSE_POLICY, "too many messages")
                reason = "rate_limited"
                break
            text = _incoming_text(raw)
            if text is None:
                member.send_frame({"type": "error", "error": "invalid_frame",
                                   "message": f"Send text, or JSON {{\"text\": ...}} of at most {MAX_TEXT_LENGTH} "
                                              "characters."})
                continue
            hub.publish(channel, {"type": "message", "room": room, "user": user, "text": text,
                                  "timestamp": time.time()}, event="message")
    except Exception as exc:  # ConnectionClosed and its kin
        log.debug("websocket ended: %s", exc)
    finally:
        presence.remove(room, member.id)
        try:
            hub.publish(channel, {"type": "leave", "room": room, "user": user, "timestamp": time.time()},
                        event="leave")
        except ApiError:
            pass
        if member.close_code is None and ws.connected:
            member.close(CLOSE_NORMAL)
        member.reader_closed()
        member.wait_written(2.0)
        writer.cancel()
        member.finish("shutdown" if runtime.shutting_down else reason)
        ws.connected = False


@rooms_api.before_app_request
def _check_websocket_request() -> Any:
    """Origin, user name, private-room token and room size, checked before the upgrade (HTTP errors)."""
    if not request.path.startswith("/ws/comms/") or request.url_rule is None:
        return None
    settings = get_runtime().settings
    room = (request.view_args or {}).get("team_channel", "")
    validate_channel(room)
    if not _origin_allowed(request.headers.get("Origin"), settings["WS_ALLOWED_ORIGINS"]):
        raise ApiError(f"Origin {request.headers.get('Origin')!r} may not open this WebSocket.", status=403,
                       code="origin_not_allowed")
    if is_private(room):
        require(settings["SECRET_KEY"], "subscribe", [room])
    if "gunicorn.socket" not in request.environ:
        raise ApiError("WebSocket rooms need the gunicorn server (rover-stream serve).", status=501,
                       code="websocket_unsupported")
    presence: Presence = current_app.extensions["rover_stream_presence"]
    if len(presence.rooms.get(room, ())) >= settings["ROOM_MAX_MEMBERS"]:
        raise ApiError(f"Room {room!r} is full ({settings['ROOM_MAX_MEMBERS']} members).", status=503,
                       code="room_full")
    request.environ["rover_stream.room_user"] = _user_name()
    return None


@rooms_api.get("/api/rooms/<room>")
def room_info(room: str) -> Any:
    validate_channel(room)
    presence: Presence = current_app.extensions["rover_stream_presence"]
    members = presence.members(room)
    return jsonify(room=room, members=members, count=len(members))


def init_rooms(app: Flask) -> None:
    settings = get_runtime(app).settings
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "ping_interval": settings["WS_PING_INTERVAL"],
        "max_message_size": settings["WS_MAX_MESSAGE_BYTES"],
    })
    app.extensions["rover_stream_presence"] = Presence()
    sock = Sock(app)
    sock.route("/ws/comms/<team_channel>")(comms)
    app.register_blueprint(rooms_api)
