"""The hand-written WebSocket room on flask-sock, a peer for ``bench/rooms.py``.

A global dict room -> set of ``ws``; the handler of the member that sends calls ``ws.send()`` for every
member of the room, one after the other. Run it under the peers' gunicorn config (one gevent worker)::

    gunicorn -c bench/peers/gunicorn_peers.conf.py --chdir bench/peers -b 127.0.0.1:0 ws_handwritten:app
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)
rooms: dict[str, set[Any]] = {}


@sock.route("/ws/comms/<room>")
def comms(ws: Any, room: str) -> None:
    user = request.args.get("user", "anonymous")
    members = rooms.setdefault(room, set())
    members.add(ws)
    ws.send(json.dumps({"type": "join", "room": room, "user": user}))
    try:
        while True:
            raw = ws.receive()
            if raw is None:
                break
            text = raw if isinstance(raw, str) else raw.decode()
            if text.startswith("{"):
                text = json.loads(text).get("text", "")
            frame = json.dumps({"type": "message", "room": room, "user": user, "text": text})
            for member in list(members):
                try:
                    member.send(frame)
                except Exception:  # noqa: BLE001 - a gone member leaves the room
                    members.discard(member)
    finally:
        members.discard(ws)
