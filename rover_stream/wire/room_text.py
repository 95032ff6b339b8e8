"""Room frames as plain text, for WebSocket clients that ask for no subprotocol (``wscat``, a browser's bare
``new WebSocket(url)``): a message reads ``Message: <text>``, and the rest are short lines starting with
``*`` (who joined or left, who is in the room, earlier messages) or ``!`` (an error before a close).
Clients that ask for the :data:`JSON_SUBPROTOCOL` get the JSON frames themselves."""

from __future__ import annotations

from typing import Any

#: The WebSocket subprotocol (``Sec-WebSocket-Protocol``) of clients that want JSON frames.
JSON_SUBPROTOCOL = "rover.json"


def plain_text(frame: dict[str, Any]) -> str:
    """One room frame (see :mod:`rover_stream.rooms`) as the line a person reads."""
    kind = frame.get("type")
    room = frame.get("room", "")
    if kind == "message":
        return f"Message: {frame.get('text', '')}"
    if kind == "join":
        return f"* {frame.get('user')} joined {room}"
    if kind == "leave":
        return f"* {frame.get('user')} left {room}"
    if kind == "presence":
        return f"* in {room}: {', '.join(frame.get('members') or ()) or 'nobody'}"
    if kind == "history":
        messages = frame.get("messages") or []
        if not messages:
            return f"* no earlier messages in {room}"
        lines = [f"* earlier in {room}:"]
        lines += [f"Message: {m.get('text', '')}" for m in messages if isinstance(m, dict)]
        return "\n".join(lines)
    if kind == "error":
        return f"! {frame.get('message', frame.get('error', 'error'))}"
    return f"* {frame}"
