"""A WebSocket room on FastAPI/Starlette, a peer for ``bench/rooms.py``.

A dict room -> set of ``WebSocket``; the sender's handler awaits ``send_text()`` for every member in turn.
Run it under uvicorn, one process::

    uvicorn ws_fastapi:app --app-dir bench/peers --host 127.0.0.1 --port 0
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
rooms: dict[str, set[WebSocket]] = {}


@app.websocket("/ws/comms/{room}")
async def comms(ws: WebSocket, room: str, user: str = "anonymous") -> None:
    await ws.accept()
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        await ws.send_text(json.dumps({"type": "join", "room": room, "user": user}))
        while True:
            text = await ws.receive_text()
            if text.startswith("{"):
                text = json.loads(text).get("text", "")
            frame = json.dumps({"type": "message", "room": room, "user": user, "text": text})
            for member in list(members):
                try:
                    await member.send_text(frame)
                except Exception:  # noqa: BLE001 - a gone member leaves the room
                    members.discard(member)
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(ws)
