"""The one place that reaches inside simple-websocket (what flask-sock hands a WebSocket route).

simple-websocket runs a receive thread per connection and sends from whichever thread calls it. A room
member instead has no greenlet of its own: the worker's parking lot reads every member's socket and one
writer writes every frame. This module makes a connection work that way, and is the only code that knows
simple-websocket's insides (its protocol object ``ws``, ``_handle_events``, ``input_buffer``, ``event``,
``sock``, ``connected``): checked against the versions in :data:`CHECKED`, which setup.cfg pins and
``tests/test_websocket_adapter.py`` holds to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsproto.utilities import LocalProtocolError

#: The simple-websocket versions this adapter was checked against (its internals are not an API).
CHECKED = ("1.0", "1.2")  # from 1.0 up to, not including, 1.2


class InlineThread:
    """Given to simple-websocket as its thread class: no receive thread is started. The parking lot feeds
    the connection what it reads (:func:`feed`)."""

    def __init__(self, target: Any) -> None:
        self.name = "rover-stream-ws-reader"

    def start(self) -> None:
        pass


def server_options(max_message_size: int) -> dict[str, Any]:
    """flask-sock's ``SOCK_SERVER_OPTIONS`` for connections run this way (pings are the writer's, not
    simple-websocket's)."""
    return {"max_message_size": max_message_size, "thread_class": InlineThread}


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


def take_over(ws: Any, send: Callable[[bytes], None], on_input: Callable[[], None]) -> None:
    """From now on ``ws`` sends through ``send`` (the writer), calls ``on_input`` when messages arrived
    (read them with :func:`messages`), and outlives the route that accepted it."""
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
