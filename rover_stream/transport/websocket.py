"""The one place that reaches inside simple-websocket (what flask-sock hands a WebSocket route).

simple-websocket runs a receive thread per connection and sends from whichever thread calls it. A room
member instead has no greenlet of its own: the worker's parking lot reads every member's socket and one
writer writes every frame. This module makes a connection work that way, and is the only code that knows
simple-websocket's insides (its protocol object ``ws``, ``_handle_events``, ``input_buffer``, ``event``,
``sock``, ``connected``): checked against the versions in :data:`CHECKED`, which setup.cfg pins and
``tests/test_websocket_adapter.py`` holds to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import has_request_context, request
from wsproto.utilities import LocalProtocolError

from ..wire.room_text import JSON_SUBPROTOCOL

#: The simple-websocket versions this adapter was checked against (its internals are not an API).
CHECKED = ("1.0", "1.2")  # from 1.0 up to, not including, 1.2


#: Set in a request's environ (:func:`run_inline`) for a connection the parking lot will read.
INLINE = "rover_stream.websocket_inline"
#: Subprotocols the rooms speak besides plain text (a client that asks for none).
SUBPROTOCOLS = (JSON_SUBPROTOCOL,)


class InlineThread:
    """simple-websocket's thread class. For a connection marked with :func:`run_inline` no receive thread is
    started: the parking lot feeds it what it reads (:func:`feed`). Any other WebSocket route of the app
    (the host's own flask-sock routes) gets the thread it would have had (:attr:`fallback`)."""

    fallback: Any = threading.Thread
    #: Inline for every connection, marked or not (a connection built directly: :func:`server_options`).
    always = False

    def __init__(self, target: Any) -> None:
        inline = self.always or (has_request_context() and bool(request.environ.get(INLINE)))
        self._thread = None if inline else self.fallback(target=target)
        self.name = "rover-stream-ws-reader" if self._thread is None else self._thread.name

    def start(self) -> None:
        if self._thread is not None:
            self._thread.name = self.name
            self._thread.start()


def run_inline() -> None:
    """Mark the current request's WebSocket as one the parking lot reads (before flask-sock accepts it)."""
    request.environ[INLINE] = True


def install(config: dict[str, Any]) -> None:
    """Put :class:`InlineThread` into flask-sock's app-wide ``SOCK_SERVER_OPTIONS``, keeping the host's own
    options and thread class for its own routes."""
    options = dict(config.get("SOCK_SERVER_OPTIONS") or {})
    if isinstance(options.get("thread_class"), type) and issubclass(options["thread_class"], InlineThread):
        return
    # The rooms' JSON subprotocol is offered beside the host's own (a client must ask for it by name).
    offered = options.get("subprotocols") or []
    offered = [offered] if isinstance(offered, str) else list(offered)
    options["subprotocols"] = offered + [p for p in SUBPROTOCOLS if p not in offered]
    host_thread = options.get("thread_class") or threading.Thread
    options["thread_class"] = type("InlineThread", (InlineThread,), {"fallback": host_thread})
    config["SOCK_SERVER_OPTIONS"] = options


class _AlwaysInline(InlineThread):
    always = True


def server_options(max_message_size: int) -> dict[str, Any]:
    """simple-websocket's options for a connection run this way, built directly rather than by flask-sock."""
    return {"max_message_size": max_message_size, "thread_class": _AlwaysInline, "subprotocols": list(SUBPROTOCOLS)}


class _WriterSocket:
    """Stands in for the connection's socket inside simple-websocket, which only sends through it (pongs,
    close frames): handed to the connection's one writer."""

    __slots__ = ("_send",)

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send

    def send(self, data: bytes) -> int:
        self._send(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._send(bytes(data))

    def close(self) -> None:
        """The connection's end is the parking lot's business, not simple-websocket's."""


class _InputEvent:
    """Stands in for simple-websocket's event: a message that arrived is handled at once."""

    __slots__ = ("_on_input",)

    def __init__(self, on_input: Callable[[], None]) -> None:
        self._on_input = on_input

    def set(self) -> None:
        self._on_input()

    def clear(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


def _closed_already(*args: Any, **kwargs: Any) -> None:
    """flask-sock closes the connection when the handler returns; a parked member lives on."""


def take_over(ws: Any, send: Callable[[bytes], None], on_input: Callable[[], None],
              max_message_size: int) -> None:
    """From now on ``ws`` sends through ``send`` (the writer), calls ``on_input`` when messages arrived
    (read them with :func:`messages`), closes with 1009 past ``max_message_size``, and outlives the route
    that accepted it."""
    ws.max_message_size = max_message_size
    ws.sock = _WriterSocket(send)
    ws.event = _InputEvent(on_input)
    ws.environ = None  # the request is over: let its objects go
    ws.close = _closed_already


def feed(ws: Any, data: bytes | bytearray) -> bool:
    """Hand bytes read from the socket to the protocol (answering pings, taking messages, a close); False
    once the connection is over (closed, or a protocol error)."""
    try:
        ws.ws.receive_data(data)
        ws.connected = ws._handle_events()
    except LocalProtocolError:
        ws.connected = False
    return bool(ws.connected)


def messages(ws: Any) -> list[Any]:
    """The messages that arrived since the last call (str or bytes), taken out of the connection."""
    taken = list(ws.input_buffer)
    ws.input_buffer.clear()
    return taken


def mark_closed(ws: Any) -> None:
    ws.connected = False
