"""A Socket.IO room on Flask-SocketIO (async_mode="gevent"), a peer for ``bench/rooms.py``.

Clients emit ``join`` ``{"room", "user"}`` (answered with ``joined`` and a ``join`` event to the room) and
``send`` ``{"text"}``; the server emits ``message`` ``{"type": "message", "user", "text"}`` to the room
(``emit(to=room)``). Run it under gunicorn, one gevent worker (WebSocket through simple-websocket)::

    gunicorn -c bench/peers/gunicorn_peers.conf.py --chdir bench/peers -b 127.0.0.1:0 ws_socketio:app
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*")
members: dict[str, tuple[str, str]] = {}


@socketio.on("join")
def on_join(data: dict[str, Any]) -> None:
    room, user = str(data.get("room", "lobby")), str(data.get("user", "anonymous"))
    members[request.sid] = (room, user)  # type: ignore[attr-defined]
    join_room(room)
    emit("joined", {"type": "join", "room": room, "user": user})


@socketio.on("send")
def on_send(data: Any) -> None:
    room, user = members.get(request.sid, ("lobby", "anonymous"))  # type: ignore[attr-defined]
    text = data.get("text", "") if isinstance(data, dict) else str(data)
    emit("message", {"type": "message", "room": room, "user": user, "text": text}, to=room)


@socketio.on("disconnect")
def on_disconnect(*_args: Any) -> None:
    members.pop(request.sid, None)  # type: ignore[attr-defined]
