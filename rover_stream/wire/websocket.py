"""WebSocket frames a server sends (RFC 6455 section 5.2): unmasked, so the same bytes can go to every
member of a room -- a broadcast frame is built once, not once per member."""

from __future__ import annotations

TEXT, CLOSE = 0x81, 0x88  # FIN bit set: whole messages only


def text_frame(payload: bytes) -> bytes:
    """A complete text frame carrying ``payload`` (UTF-8)."""
    length = len(payload)
    if length < 126:
        header = bytes((TEXT, length))
    elif length < 65536:
        header = bytes((TEXT, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((TEXT, 127)) + length.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with a status code and a reason of at most 123 bytes (the control frame limit)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((CLOSE, len(payload))) + payload
