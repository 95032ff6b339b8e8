"""WebSocket rooms: mission comms channels on the hub, served by flask-sock with plain ``def`` handlers.

``/ws/comms/<room>``: a text frame from one member reaches every member of the same room and no one else.
A room is the hub channel ``room.<room>``, so with the Redis engine members on different workers and hosts
share it, and its history replays like any channel's (SSE clients may listen on it too).

A client that asks for the ``rover.json`` subprotocol (``Sec-WebSocket-Protocol``; the JavaScript library,
the Python ``RoomClient``, the CLI) gets JSON frames; one that asks for none (``wscat``) gets each frame as a
line of plain text (:mod:`rover_stream.wire.room_text`): ``Message: hello``, ``* ada joined science``.
The JSON frames (see :data:`FRAME_TYPES`)::

    {"type": "message", "room": "science", "user": "ada", "text": "Sample 7 looks odd", "id": "...",
     "timestamp": 1795263245.1}
    {"type": "join" | "leave", "room": ..., "user": ..., "id": ..., "timestamp": ...}
    {"type": "presence", "room": ..., "members": ["ada", "grace"]}       (to a member that joins)
    {"type": "history", "room": ..., "messages": [<message frames>]}     (to a member that joins)
    {"type": "error", "error": CODE, "message": SENTENCE}                (before a close)

A client sends ``{"text": "..."}`` (or ``{"type": "message", "text": "..."}``), or just plain text, as
``wscat`` does. The user name comes from the ``user`` query parameter (or the token's subject).

**One writer per connection.** Broadcasts never touch a member's socket: they only queue the message in the
member's bounded hub queue (its subscription). The member's connection is written by one writer only --
the worker's parking-lot writer, as for parked SSE streams (see :mod:`rover_stream.transport.parked`) -- which writes
its frames, its pings, and simple-websocket's pongs and close frames (routed to it), with non-blocking
writes that keep what the socket does not take: frames are never interleaved nor truncated (two greenlets writing
one socket would interleave them; a blocking write cut by a timeout would truncate one). A member whose queue fills
up is dropped by the hub's slow-client policy and closed with 1013; the room goes on. The same lot's reader greenlet
reads every member's socket when the event loop reports input, feeds simple-websocket's protocol handling and
publishes the messages: a member in a room costs no greenlet of its own (an idle member costs its socket, its queue
and its protocol state: a few KB).

Close codes: 1000 normal, 1001 server shutting down, 1008 policy (message rate, idle timeout, bad frame),
1009 message too big, 1013 too slow (queue full) or room full, 4401 the access token that let the member in
(or named it) expired: an ``error`` frame ``token_expired`` comes first; reconnect with a new token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
from flask import Blueprint, Flask, current_app, jsonify, request
from flask_sock import Sock

from .auth import expiry_of, presented_claims, require
from .errors import ApiError
from .hub import Subscription, validate_channel
from .hub.names import guarded_names, room_channel
from .hub.presence import Presence
from .limits import TokenBucket
from .runtime import StreamRuntime, get_runtime
from .transport import websocket
from .transport.parked import parking_lot
from .transport.parked_websocket import (CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TRY_LATER,
                                         ParkedWebSocket, linger, split_frames)
from .wire.room_text import JSON_SUBPROTOCOL, plain_text
from .wire.untrusted import Rejected, parse_json
from .wire.websocket import close_frame, text_frame

log = logging.getLogger("rover_stream.rooms")

FRAME_TYPES = ("message", "join", "leave", "presence", "history", "error")
MAX_USER_LENGTH = 64
MAX_TEXT_LENGTH = 4000
#: Seconds a closing connection waits for the client's end after our close frame.
LINGER = 5.0
rooms_api = Blueprint("rooms", __name__)


class Member:
    """One WebSocket connection in one room: its subscription (the bounded outbound queue), its limits.
    Registered with the runtime like a stream (stream cap, shutdown, counters). No greenlet of its own
    while it is in the room: the worker's parking lot reads and writes its connection."""

    kind = "websocket"

    def __init__(self, runtime: StreamRuntime, ws: Any, room: str, user: str, presence: Presence,
                 plain: bool = False) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.ws = ws
        self.room = room
        self.channel = room_channel(room)
        self.user = user
        self.presence = presence
        self.bytes_sent = 0
        self.bytes_counted = 0
        self.log_context: dict[str, Any] = {}
        self.handed_over = True
        self._opened_at = time.monotonic()
        self.written = threading.Event()
        self.closing = False
        self.close_code: int | None = None
        self.final_frame: bytes | None = None  # the close frame while it waits to be written, then b""
        self.end_reason = "disconnect"
        self.ping_interval: float = settings["WS_PING_INTERVAL"]
        self.idle_timeout: float = settings["WS_IDLE_TIMEOUT"]
        self._messages = TokenBucket(settings["WS_MESSAGE_RATE"])
        self.plain = plain  # plain-text frames (a client that asked for no subprotocol), else JSON
        self.feed: Subscription = runtime.hub.subscribe(self.channel, format="ws-text" if plain else "ws")
        self.id = self.feed.id
        self.parked: ParkedWebSocket | None = None
        self.input_open = True
        try:
            runtime.admit(self)
        except BaseException:
            self.feed.close()  # refused (shutting down, at the cap): leave the hub again
            raise

    @property
    def duration(self) -> float:
        return time.monotonic() - self._opened_at

    def _queue(self, frame: bytes) -> None:
        self.feed.preamble.append(frame)
        self.feed.wake()

    def frame(self, obj: dict[str, Any]) -> bytes:
        """``obj`` as this member's kind of text frame: JSON, or a line of plain text."""
        text = plain_text(obj) if self.plain else json.dumps(obj, separators=(",", ":"))
        return text_frame(text.encode())

    def send_frame(self, obj: dict[str, Any]) -> None:
        self._queue(self.frame(obj))

    def send_raw(self, data: bytes) -> None:
        """Frames from simple-websocket (pongs, a close), several at once when the client's bytes held
        several (a ping, then a protocol error): written next, a close frame last of all."""
        for frame in split_frames(data):
            if frame[:1] == b"\x88":
                if not self.closing:
                    self._close_with(frame, int.from_bytes(frame[2:4], "big") if len(frame) >= 4 else None)
            elif not self.closing:
                self._queue(frame)

    def _close_with(self, frame: bytes, code: int | None) -> None:
        """The close frame is the last frame written: what is queued and not yet written is dropped."""
        self.closing = True
        self.close_code = code
        self.final_frame = frame
        self.feed.wake()

    def on_input(self) -> None:
        """Messages the client sent (simple-websocket's input buffer): checked, then published."""
        for raw in websocket.messages(self.ws):
            if self.closing:
                return
            if not self.allow_message():
                self.end_reason = "rate_limited"
                self.close(CLOSE_POLICY, "too many messages")
                return
            text = _incoming_text(raw)
            if text is None:
                self.send_frame({"type": "error", "error": "invalid_frame",
                                 "message": f"Send text, or JSON {{\"text\": ...}} of at most "
                                            f"{MAX_TEXT_LENGTH} characters."})
                continue
            self.runtime.hub.publish(self.channel, {"type": "message", "room": self.room, "user": self.user,
                                                    "text": text, "timestamp": time.time()}, event="message")

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (after what is queued for writing first) and stop reading."""
        if not self.closing:
            self._close_with(close_frame(code, reason), code)
        self.end_input()

    def end_input(self) -> None:
        """Stop reading; the member then leaves the room (in a greenlet of its own: it may block)."""
        if self.input_open:
            self.input_open = False
            websocket.mark_closed(self.ws)
            if self.parked is not None:
                self.parked.stop_reading()
            gevent.spawn(self._leave)

    def _leave(self) -> None:
        try:
            self.presence.remove(self.room, self.id)
            self.runtime.hub.publish(self.channel, {"type": "leave", "room": self.room, "user": self.user,
                                                    "timestamp": time.time()}, event="leave")
        except Exception as exc:  # noqa: BLE001 (the member leaves all the same)
            log.warning("could not announce that %s left %s: %s", self.user, self.room, exc)
        if not self.closing:
            self.close(CLOSE_NORMAL)
        self.written.wait(2.0)
        parked = self.parked
        # A client that answers no ping will not answer our close either: no waiting for it.
        if parked is not None and not parked.closed and self.end_reason != "no_pong":
            linger(parked.fd, 0.5 if self.runtime.shutting_down else LINGER)
        self.finish()

    def allow_message(self) -> bool:
        """WS_MESSAGE_RATE messages a second, bursts of twice that."""
        return self._messages.take() == 0

    # -- the parking lot's and the runtime's interface ----------------------------------------------------------

    def close_parked(self, reason: str) -> None:
        """The writer gave up on the connection (gone, too slow to write to)."""
        if reason != "complete":
            self.end_reason = reason
        self.end_input()

    def wake(self) -> None:
        self.end_reason = "shutdown"
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def force_close(self) -> None:
        if self.parked is not None:
            self.parked.close("shutdown")

    def finish(self) -> None:
        if self.parked is not None:
            self.parked.close(self.end_reason)
        self.feed.close()
        self.runtime.release(self, self.end_reason)


def _origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; a page of another site must not use the visitor's cookies and tokens here
    (cross-site WebSocket hijacking). Clients without an Origin (wscat, scripts) are not browsers."""
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    try:  # urlsplit raises on a port that is not a number from 0 to 65535, and on a broken [IPv6]
        parts = urlsplit(origin)
        port = parts.port
        host = urlsplit("//" + request.host)
        host_port = host.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    # Same origin: same host name, and the same port when the Host header names one (some clients leave
    # the port out of Host; browsers never do for a non-default port).
    return parts.hostname == host.hostname and (host_port is None or port == host_port)


def _check_handshake() -> None:
    """What the WebSocket handshake needs (RFC 6455 section 4.2.1), checked while an HTTP answer is still
    possible: the WebSocket library would otherwise fail on it mid-upgrade."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError("This is a WebSocket endpoint: connect with a WebSocket client.", status=400,
                       code="websocket_required")
    if not request.headers.get("Sec-WebSocket-Key"):
        raise ApiError("The WebSocket handshake needs a Sec-WebSocket-Key header.", status=400,
                       code="bad_handshake")
    if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ApiError("Only WebSocket version 13 is spoken here.", status=426, code="unsupported_version",
                       headers={"Sec-WebSocket-Version": "13"})


def _user_name(claims: dict[str, Any] | None) -> str:
    """The member's name: the token's subject when it has one (a name in the URL cannot override it),
    else ``?user=``, else ``anonymous``."""
    subject = claims.get("sub") if claims else None
    user = subject if isinstance(subject, str) and subject.strip() else (request.args.get("user") or "")
    user = user.strip()
    if not user:
        return "anonymous"
    if len(user) > MAX_USER_LENGTH or any(ord(c) < 32 or c == "\x7f" for c in user):
        raise ApiError(f"A user name is 1 to {MAX_USER_LENGTH} printable characters.", code="invalid_user")
    return user


def _incoming_text(raw: Any) -> str | None:
    """The text of a client frame: JSON {"text": ...} or plain text. None for what cannot be a message."""
    if not isinstance(raw, str):
        return None
    text = raw
    if raw[:1] == "{":
        try:
            frame = parse_json(raw)
        except Rejected:
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
    """The room handler: join, park the connection, return. The worker's parking lot reads and writes it
    from then on, and the member leaves the room when its connection ends (:meth:`Member.end_input`)."""
    runtime = get_runtime()
    settings = runtime.settings
    hub = runtime.hub
    room = team_channel
    channel = room_channel(room)
    user = request.environ["rover_stream.room_user"]
    sock = request.environ["gunicorn.socket"]
    presence: Presence = current_app.extensions["rover_stream_presence"]
    try:
        member = Member(runtime, ws, room, user, presence, plain=ws.subprotocol != JSON_SUBPROTOCOL)
    except ApiError as exc:
        # Refused after the upgrade (the checks before it passed, then the worker began to stop, filled
        # up, or lost Redis): the 101 is out, so an HTTP answer would be garbage to the client. Close.
        code = CLOSE_GOING_AWAY if runtime.shutting_down else CLOSE_TRY_LATER
        ws.close(reason=code, message=exc.message.encode()[:120].decode(errors="ignore"))
        return
    expires = request.environ.get("rover_stream.room_token_expires")
    if expires is not None:  # the token that let the member in (or named it) ends it when it expires
        hub.end_at(member.feed, expires, "token_expired", member.frame(
            {"type": "error", "error": "token_expired",
             "message": "Your access token expired: reconnect with a new one."}))
    lot = parking_lot(runtime)
    parked = ParkedWebSocket(lot, member, sock)
    lot.add(parked)
    member.parked = parked
    websocket.take_over(ws, member.send_raw, member.on_input, settings["WS_MAX_MESSAGE_BYTES"])
    history = [{**m.data, "id": m.id} for m in hub.history(channel)[-settings["ROOM_HISTORY"]:]
               if isinstance(m.data, dict) and m.data.get("type") == "message"]  # ids as in live frames
    member.send_frame({"type": "history", "room": room, "messages": history})
    presence.add(room, member.id, user)
    member.send_frame({"type": "presence", "room": room, "members": presence.members(room)})
    hub.publish(channel, {"type": "join", "room": room, "user": user, "timestamp": time.time()}, event="join")
    if member.input_open:
        parked.start_reading()


@rooms_api.before_request
def _check_websocket_request() -> Any:
    """Origin, user name, private-room token and room size, checked before the upgrade (HTTP errors)."""
    if request.endpoint is None or not request.endpoint.endswith("." + comms.__name__):
        return None
    settings = get_runtime().settings
    room = (request.view_args or {}).get("team_channel", "")
    validate_channel(room)
    if not _origin_allowed(request.headers.get("Origin"), settings["WS_ALLOWED_ORIGINS"]):
        raise ApiError(f"Origin {request.headers.get('Origin')!r} may not open this WebSocket.", status=403,
                       code="origin_not_allowed")
    keys = get_runtime().keys
    claims = require(keys, "subscribe", guarded_names([room_channel(room)]))
    if claims is None:
        claims = presented_claims(keys)
    request.environ["rover_stream.room_user"] = _user_name(claims)
    request.environ["rover_stream.room_token_expires"] = expiry_of(claims)
    if "gunicorn.socket" not in request.environ:
        raise ApiError("WebSocket rooms need the gunicorn server (rover-stream serve).", status=501,
                       code="websocket_unsupported")
    _check_handshake()
    websocket.run_inline()
    presence: Presence = current_app.extensions["rover_stream_presence"]
    if len(presence.rooms.get(room, ())) >= settings["ROOM_MAX_MEMBERS"]:
        raise ApiError(f"Room {room!r} is full ({settings['ROOM_MAX_MEMBERS']} members).", status=503,
                       code="room_full")
    # What the runtime would refuse once the member registers, refused here while an HTTP answer is
    # still possible (after the 101 it can only be a close frame).
    refused = get_runtime().refusal()
    if refused is not None:
        raise refused
    return None


@rooms_api.get("/api/rooms/<room>")
def room_info(room: str) -> Any:
    validate_channel(room)
    # Who is in a private room is as private as what is said there.
    require(get_runtime().keys, "subscribe", guarded_names([room_channel(room)]))
    presence: Presence = current_app.extensions["rover_stream_presence"]
    members = presence.members(room)
    return jsonify(room=room, members=members, count=len(members))


# flask-sock only adds the route: the blueprint carries it wherever the extension mounts it.
Sock().route("/ws/comms/<team_channel>", bp=rooms_api)(comms)


def init_rooms(app: Flask, runtime: StreamRuntime) -> None:
    """Room presence for ``app`` (shared through Redis when the hub is), and flask-sock's options."""
    # Room connections get no receive thread (the parking lot reads them, its writer sends the pings); the
    # host's own flask-sock routes keep theirs.
    websocket.install(app.config)
    app.extensions["rover_stream_presence"] = runtime.hub.engine.presence()
