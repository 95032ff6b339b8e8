"""Raw HTTP/1.1 over sockets for the live tests: what exactly goes on the wire, chunk by chunk."""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from rover_stream.wire.sse_parser import EventStreamParser, ParsedEvent


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    sock: socket.socket
    buffer: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # the body as framed by Transfer-Encoding: chunked
    ended: bool = False  # the terminating zero-length chunk arrived

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buffer += data
        return True

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding") == "chunked"

    def read_chunk(self, timeout: float = 5.0) -> bytes | None:
        """The next body chunk of a chunked response; None on timeout; b"" at the terminating chunk. For a
        body delimited by the connection's end (``Connection: close``, as parked streams send), the next
        bytes received, and b"" when the server closed."""
        deadline = time.monotonic() + timeout
        if not self.chunked:
            if not self.buffer:
                try:
                    if not self._fill(deadline):
                        return None
                except ConnectionError:
                    self.ended = True
                    return b""
            data, self.buffer = self.buffer, b""
            self.chunks.append(data)
            return data
        while True:
            head, crlf, rest = self.buffer.partition(b"\r\n")
            if crlf:
                size = int(head.split(b";")[0], 16)
                if len(rest) >= size + 2:
                    chunk = rest[:size]
                    self.buffer = rest[size + 2:]
                    if size == 0:
                        self.ended = True
                    else:
                        self.chunks.append(chunk)
                    return chunk
            if not self._fill(deadline):
                return None

    def body(self, timeout: float = 5.0) -> bytes:
        """The whole body of a response with Content-Length."""
        length = int(self.headers["content-length"])
        deadline = time.monotonic() + timeout
        while len(self.buffer) < length:
            if not self._fill(deadline):
                raise TimeoutError(f"{len(self.buffer)} of {length} body bytes in {timeout} s")
        return self.buffer[:length]

    def close(self) -> None:
        self.sock.close()


def request(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            timeout: float = 5.0, host: str = "127.0.0.1") -> RawResponse:
    sock = socket.create_connection((host, port), timeout=timeout)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before the headers: {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, sock, rest)


class SSEReader:
    """Reads a live chunked SSE response and parses it as a browser would."""

    def __init__(self, response: RawResponse) -> None:
        self.response = response
        self.parser = EventStreamParser()
        self.raw = b""
        self.dispatched: list[ParsedEvent] = []  # every event parsed so far, in order

    def events(self, count: int, timeout: float = 5.0) -> list[ParsedEvent]:
        deadline = time.monotonic() + timeout
        found: list[ParsedEvent] = []
        while len(found) < count:
            remaining = deadline - time.monotonic()
            chunk = self.response.read_chunk(timeout=max(0.0, remaining)) if remaining > 0 else None
            if chunk is None:
                raise TimeoutError(f"only {len(found)} of {count} events in {timeout} s; raw: {self.raw[-500:]!r}")
            if chunk == b"":
                raise ConnectionError(f"stream ended after {len(found)} events; raw: {self.raw[-500:]!r}")
            self.raw += chunk
            new = self.parser.feed(chunk)
            self.dispatched.extend(new)
            found.extend(new)
        return found

    def until(self, needle: bytes, timeout: float = 5.0) -> bytes:
        """Read until ``needle`` has arrived (or the stream ends); return everything read so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.raw:
            remaining = deadline - time.monotonic()
            chunk = self.response.read_chunk(timeout=remaining) if remaining > 0 else None
            if chunk is None:
                raise TimeoutError(f"{needle!r} did not arrive in {timeout} s; raw: {self.raw[-500:]!r}")
            if chunk == b"":
                break
            self.raw += chunk
            self.dispatched.extend(self.parser.feed(chunk))
        return self.raw


def get_json(port: int, path: str) -> dict:  # type: ignore[type-arg]
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def wait_for(predicate, timeout: float, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; return it, or the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


class Publisher:
    """POSTs to /api/broadcast over one keep-alive connection."""

    def __init__(self, port: int, host: str = "127.0.0.1", token: str | None = None, prefix: str = "") -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=10)
        self.path = prefix + "/api/broadcast"
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    def __call__(self, channel: str, data: Any, event: str | None = None) -> dict[str, Any]:
        body = {"channel": channel, "data": data, **({"event": event} if event else {})}
        try:
            self.connection.request("POST", self.path, json.dumps(body), self.headers)
            response = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.connection.close()  # the server closed the idle keep-alive connection: open a new one
            self.connection.request("POST", self.path, json.dumps(body), self.headers)
            response = self.connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        self.connection.close()


def subscribe(port: int, channel: str, last_event_id: str | None = None, host: str = "127.0.0.1",
              prefix: str = "") -> SSEReader:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = request(port, f"{prefix}/realtime/{channel}", headers, timeout=10, host=host)
    if response.status != 200:
        response.close()
        raise AssertionError(f"subscribing to {channel!r}: {response.status} {response.buffer[:300]!r}")
    reader = SSEReader(response)
    reader.until(b"\n\nid: ")  # the retry hint, then the position block: subscribed
    return reader


def ws_client_class() -> Any:
    """simple_websocket's Client, minus a bug: its handshake takes the 101 response and leaves whatever
    arrived in the same read (our first frames, written right after the handshake) in wsproto's buffer
    until the next bytes come -- a ping or a close, seconds later. Browsers do not do this."""
    import simple_websocket

    class Client(simple_websocket.Client):  # type: ignore[misc]
        @classmethod
        def connect(cls, url: str, subprotocols: Any = ("rover.json",), **kwargs: Any) -> Any:
            """JSON frames, as the JavaScript and Python clients ask for; ``subprotocols=None`` is wscat."""
            return super().connect(url, subprotocols=list(subprotocols) if subprotocols else None, **kwargs)

        def handshake(self) -> None:
            super().handshake()
            self._handle_events()  # frames that came with the 101 response

    return Client


def next_message(room: Any, timeout: float = 10.0, text: str | None = None) -> dict[str, Any]:
    """The next ``message`` frame a room member receives (with ``text``, when given); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(room.receive(timeout=max(0.1, deadline - time.monotonic())) or "{}")
        if frame.get("type") == "message" and (text is None or frame.get("text") == text):
            return frame  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no message{f' {text!r}' if text else ''} within {timeout} s"


def room_echo(url: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
    """Join the room at ``url`` (JSON frames), say ``text``, and return the room's message frame for it."""
    room = ws_client_class().connect(url)
    try:
        room.send(json.dumps({"type": "message", "text": text}))
        return next_message(room, timeout, text)
    finally:
        room.close()
