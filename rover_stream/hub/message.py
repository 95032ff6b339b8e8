"""A published message, encoded once."""

from __future__ import annotations

import json
from typing import Any

from ..wire.room_text import plain_text
from ..wire.sse import encode
from ..wire.websocket import text_frame

Key = tuple[int, int]
"""An id as a comparable pair: ``"1795263245123-17"`` is ``(1795263245123, 17)``: the channel's *epoch*
(a name for this run of its history: when it began, in ms in-process, in µs on Redis) and the event's
number in that history, from 1. Both engines give out such ids, which are also valid Redis Stream ids."""

#: The cursor of a client that has seen nothing: every message id is above it.
ORIGIN: Key = (0, 0)

#: The largest value of either part of an id: what a Redis Stream id can hold.
ID_PART_MAX = 2**64 - 1
#: The most digits either part may have (``ID_PART_MAX`` has 20).
_DIGITS = 20


def parse_id(text: str) -> Key | None:
    """The id ``text`` (``<epoch>-<number>``, both ASCII decimal, each below 2**64) as a Key, or None when it
    is anything else: the one parser of the ids clients send back (``Last-Event-ID``, cursors, ``after=``).
    An id it refuses is one the server cannot honour (the hub answers it with ``event: reset``, never an
    error); every id it accepts is a valid Redis Stream id."""
    if not isinstance(text, str) or len(text) > 2 * _DIGITS + 1:
        return None
    first, dash, second = text.partition("-")
    if (not dash or not first or not second or len(first) > _DIGITS or len(second) > _DIGITS
            or not first.isascii() or not second.isascii() or not first.isdigit() or not second.isdigit()):
        return None
    key = int(first), int(second)
    if key[0] > ID_PART_MAX or key[1] > ID_PART_MAX:
        return None
    return key


def format_id(key: Key) -> str:
    return f"{key[0]}-{key[1]}"


class Message:
    """One event of one channel. ``payload`` is its complete SSE block (``id:``, ``event:``, ``data:``
    lines), built once and written to every single-channel subscriber as is."""

    __slots__ = ("channel", "id", "key", "event", "_data", "_data_json", "time", "payload", "_wrapped",
                 "_ws_frame", "_ws_text")

    def __init__(self, channel: str, key: Key, event: str | None, data: Any, body: bytes, time: float,
                 data_json: bytes | None = None) -> None:
        self.channel = channel
        self.key = key
        self.id = format_id(key)
        self.event = event
        self._data = data
        self._data_json = data_json  # given instead of data by engines that store JSON: parsed on first use
        self.time = time
        self.payload = b"id: " + self.id.encode() + b"\n" + body
        self._wrapped: bytes | None = None
        self._ws_frame: bytes | None = None
        self._ws_text: bytes | None = None

    @property
    def data(self) -> Any:
        if self._data_json is not None:
            self._data = json.loads(self._data_json)
            self._data_json = None
        return self._data

    def wrapped(self) -> bytes:
        """The block for multi-channel connections, without its ``id:`` line (each subscriber adds its own
        cursor): the data becomes ``{"channel": ..., "data": ...}``. Built once, on first use."""
        if self._wrapped is None:
            self._wrapped = encode({"channel": self.channel, "data": self.data}, event=self.event)
        return self._wrapped

    def ws_frame(self) -> bytes:
        """The WebSocket text frame for room members: the data (a JSON object) with the message's id added.
        Built once, on first use, and written to every member as is."""
        if self._ws_frame is None:
            data = self.data
            frame = {**data, "id": self.id} if isinstance(data, dict) else {"type": "message", "data": data,
                                                                             "id": self.id}
            self._ws_frame = text_frame(json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode())
        return self._ws_frame

    def ws_text_frame(self) -> bytes:
        """The same as a plain-text frame (:mod:`rover_stream.wire.room_text`), for members that asked for no
        subprotocol. Built once, on first use."""
        if self._ws_text is None:
            data = self.data
            line = plain_text(data) if isinstance(data, dict) else f"Message: {data}"
            self._ws_text = text_frame(line.encode())
        return self._ws_text

    def __repr__(self) -> str:
        return f"<Message {self.channel}/{self.id} event={self.event!r}>"
