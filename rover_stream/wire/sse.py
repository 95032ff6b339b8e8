"""The Server-Sent Events encoder.

Follows the WHATWG "event stream interpretation" rules so that a browser parses exactly what the route
author meant:

- ``data`` is split on CR, LF and CRLF only -- never ``str.splitlines()``, which also splits on U+2028,
  U+0085, U+001C... -- and each piece gets its own ``data:`` line; an empty string is one ``data:`` line.
- ``id`` and ``event`` may not contain CR, LF or NUL: such a value would inject fields (or, for ``id`` with
  NUL, be silently ignored by browsers). They are refused with :class:`~rover_stream.errors.EncodeError`.
- ``id`` 0 is a valid id; ``retry`` is a non-negative integer of milliseconds.
- Comments are ``:`` lines (a multi-line comment becomes several comment lines), used for heartbeats.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import EncodeError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")

HEARTBEAT = b": ping\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event. ``data`` that is not a ``str`` is sent as compact JSON; ``None`` sends no data
    line (a block with only ``id`` or ``retry`` updates the client without dispatching an event)."""

    data: Any = None
    event: str | None = None
    id: str | int | None = None
    retry: int | None = None
    comment: str | None = None

    def encode(self) -> bytes:
        return encode(self.data, event=self.event, id=self.id, retry=self.retry, comment=self.comment)


def _field_value(name: str, value: str | int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EncodeError(f"SSE {name!r} must be a str or int, not {type(value).__name__}: {value!r}.")
    text = str(value)
    if _FORBIDDEN_IN_FIELD.search(text):
        raise EncodeError(
            f"SSE {name!r} may not contain CR, LF or NUL (it would inject fields into the stream): {text!r}."
        )
    return text


def _data_text(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncodeError(f"SSE data given as bytes must be UTF-8: {exc}.") from None
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"SSE data must be a str or JSON-serialisable: {exc}.") from None


def encode_comment(text: str) -> bytes:
    """A comment block (ignored by clients; used for heartbeats). Newlines start new comment lines."""
    return "".join(f":{' ' if line else ''}{line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def encode(
    data: Any = None,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event block, ending with the blank line that makes the client dispatch it."""
    parts: list[str] = []
    if comment is not None:
        parts.extend(f":{' ' if line else ''}{line}\n" for line in _LINE_BREAK.split(comment))
    if event is not None:
        parts.append(f"event: {_field_value('event', event)}\n")
    if id is not None:
        parts.append(f"id: {_field_value('id', id)}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise EncodeError(f"SSE 'retry' must be a non-negative int of milliseconds, not {retry!r}.")
        parts.append(f"retry: {retry}\n")
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(_data_text(data)))
    if not parts:
        raise EncodeError("An SSE event needs at least one of data, event, id, retry or comment.")
    parts.append("\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"SSE event text is not encodable as UTF-8 (lone surrogate?): {exc}.") from None


_EVENT_FIELDS = frozenset(("data", "event", "id", "retry", "comment"))


def to_bytes(item: Any) -> bytes:
    """What a route author's generator may yield, encoded: an :class:`Event`; ``bytes`` already in SSE
    format (passed through untouched); a ``dict`` with a ``data`` key and only Event fields (sse-starlette
    style, ``{"event": "tick", "id": 3, "data": {...}}``); anything else is the data of a plain message
    (``str`` as is, other values -- other dicts too, even ``{"id": 7}`` -- as JSON)."""
    if isinstance(item, Event):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, dict) and "data" in item and _EVENT_FIELDS.issuperset(item):
        return encode(**item)
    return encode(item)
