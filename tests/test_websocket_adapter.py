"""The adapter that reaches inside simple-websocket (rover_stream.transport.websocket) against the
installed simple-websocket: its version is one the adapter was checked against, and a connection run
the adapter's way answers pings through the writer, hands over messages, and ends on a close."""

from __future__ import annotations

import importlib.metadata
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import simple_websocket
from packaging.version import Version
from wsproto.frame_protocol import CloseReason, FrameProtocol

from rover_stream.transport import websocket as adapter


def test_the_installed_simple_websocket_is_a_checked_version() -> None:
    """Its internals are not an API: a version outside the checked range must be checked (and the range
    widened here and in setup.cfg) before it is used."""
    low, high = (Version(v) for v in adapter.CHECKED)
    assert low <= Version(importlib.metadata.version("simple-websocket")) < high


@pytest.fixture
def connection() -> Iterator[tuple[Any, socket.socket]]:
    server_end, client_end = socket.socketpair()
    environ = {"gunicorn.socket": server_end, "REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "QUERY_STRING": "",
               "HTTP_HOST": "x", "HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "websocket",
               "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    ws = simple_websocket.Server(environ, **adapter.server_options(1024))
    assert client_end.recv(65536).startswith(b"HTTP/1.1 101")
    yield ws, client_end
    server_end.close()
    client_end.close()


def test_a_connection_run_by_the_lot(connection: tuple[Any, socket.socket]) -> None:
    ws, _ = connection
    written: list[bytes] = []
    received: list[Any] = []
    adapter.take_over(ws, written.append, lambda: received.extend(adapter.messages(ws)), 1024)
    client = FrameProtocol(client=True, extensions=[])
    assert adapter.feed(ws, client.send_data("hello", fin=True) + client.send_data("again", fin=True))
    assert received == ["hello", "again"]
    assert adapter.feed(ws, client.ping(b"are you there"))
    assert written and written[-1][0] == 0x8A  # the pong, through the writer, not the socket
    assert not adapter.feed(ws, client.close(CloseReason.NORMAL_CLOSURE))
    assert written[-1][0] == 0x88  # the close frame answered, through the writer


def test_a_message_over_the_limit_ends_the_connection(connection: tuple[Any, socket.socket]) -> None:
    ws, _ = connection
    written: list[bytes] = []
    adapter.take_over(ws, written.append, lambda: None, 1024)
    client = FrameProtocol(client=True, extensions=[])
    assert not adapter.feed(ws, client.send_data("x" * 2048, fin=True))
    assert written and written[-1][0] == 0x88 and int.from_bytes(written[-1][2:4], "big") == 1009
