"""rover_stream.client: EventSource against every parsing and connection rule of SSE-RULES.md, then the
stream, room and API clients against a real server.

The parsing cases run through the whole client (status and content-type checks, reading, reconnection
bookkeeping) with a scripted transport that hands the stream over in the pieces a test chooses: whole,
split at every byte position, and byte by byte. The network cases use a scripted loopback HTTP server that
writes exactly the bytes a test gives, and closes or resets the connection when told.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rover_stream.client import (
    CLOSED,
    Client,
    ConnectionFailed,
    DownloadError,
    EventSource,
    HTTPError,
    MessageEvent,
    NotAnEventStream,
    RoomClient,
    StreamClosed,
    download,
    stream_url,
)
from rover_stream.client import eventsource as sse_module
from rover_stream.client.download import name_from_disposition, name_from_url
from rover_stream.client.errors import RoomClosed
from rover_stream.client.terminal import Prompt, printable
from tests.wire_helpers import wait_for

# -- a scripted transport ----------------------------------------------------------------------------------


@dataclass
class Reply:
    """What one connection attempt gets: a refusal, or a status, a content type and body pieces, then the
    end of the body -- clean, or a network error."""

    chunks: tuple[bytes, ...] = ()
    status: int = 200
    content_type: str = "text/event-stream"
    body: bytes = b""
    error: BaseException | None = None
    refuse: bool = False


class FakeResponse:
    def __init__(self, reply: Reply) -> None:
        self.pieces = list(reply.chunks)
        self.reply = reply
        self.reason = "Reason"

    def read1(self, size: int) -> bytes:
        if self.pieces:
            return self.pieces.pop(0)
        if self.reply.error is not None:
            raise self.reply.error
        return b""

    def read(self, size: int = -1) -> bytes:
        return self.reply.body

    def getheaders(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.reply.content_type)]


class FakeExchange:
    def __init__(self, url: str, reply: Reply) -> None:
        self.url = url
        self.status = reply.status
        self.response = FakeResponse(reply)
        self.reply = reply

    def header(self, name: str, default: str = "") -> str:
        return self.reply.content_type if name.lower() == "content-type" else default

    def error(self) -> HTTPError:
        return HTTPError.from_body(self.url, self.status, "Reason", self.reply.body)

    def set_timeout(self, timeout: float | None) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTransport:
    """Stands in for ``open_request``: each connection gets the next reply; after the last, 204."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, method: str, url: str, headers: Any = None, body: Any = None, **kwargs: Any) -> FakeExchange:
        self.requests.append(dict(headers or {}))
        reply = self.replies.pop(0) if self.replies else Reply(status=204)
        if reply.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        return FakeExchange(url, reply)


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(*replies: Reply) -> FakeTransport:
        fake = FakeTransport(list(replies))
        monkeypatch.setattr(sse_module, "open_request", fake)
        return fake

    return install


def stream_once(retry: int = 1234, last_event_id: str | None = None) -> EventSource:
    """An EventSource that stops at the end of its first connection."""
    return EventSource("http://test/stream", retry=retry, last_event_id=last_event_id,
                       on_error=lambda source, error, delay: source.close())


def run_once(monkeypatch: pytest.MonkeyPatch, pieces: list[bytes], **kwargs: Any) -> tuple[list[Any], EventSource]:
    monkeypatch.setattr(sse_module, "open_request", FakeTransport([Reply(tuple(pieces))]))
    source = stream_once(**kwargs)
    events = [(e.event, e.data, e.id) for e in source]
    return events, source


# -- parsing: each rule of SSE-RULES.md ----------------------------------------------------------------------

CASES = [
    # line ends
    pytest.param(b"data: a\n\n", [("message", "a", "")], id="lf"),
    pytest.param(b"data: a\r\n\r\n", [("message", "a", "")], id="crlf"),
    pytest.param(b"data: a\r\r", [("message", "a", "")], id="cr"),
    pytest.param(b"data: a\rdata: b\ndata: c\r\n\r\n", [("message", "a\nb\nc", "")], id="mixed-line-ends"),
    pytest.param(b"data: a\r\n\r\ndata: b\n\n", [("message", "a", ""), ("message", "b", "")],
                 id="crlf-is-one-line-end"),
    # BOM and decoding
    pytest.param("\ufeffdata: a\n\n".encode(), [("message", "a", "")], id="bom-stripped"),
    pytest.param("\ufeff\ufeffdata: a\n\ndata: b\n\n".encode(), [("message", "b", "")], id="only-one-bom-stripped"),
    pytest.param("data: \ufeffa\n\n".encode(), [("message", "\ufeffa", "")], id="bom-inside-is-data"),
    pytest.param(b"data: a\xffb\xc3\n\n", [("message", "a\ufffdb\ufffd", "")], id="invalid-utf8-replaced"),
    pytest.param("data: é ✓ 🚀\n\n".encode(), [("message", "é ✓ 🚀", "")], id="utf8"),
    pytest.param(b"data: a\x00b\n\n", [("message", "a\x00b", "")], id="nul-in-data-kept"),
    # dispatch
    pytest.param(b"data: a\n\ndata: b\n", [("message", "a", "")], id="pending-event-at-end-discarded"),
    pytest.param(b"data: a\n\ndata: b", [("message", "a", "")], id="unterminated-line-at-end-discarded"),
    # comments
    pytest.param(b": hello\ndata: a\n\n", [("message", "a", "")], id="comment-ignored"),
    pytest.param(b"data: a\n: note\ndata: b\n\n", [("message", "a\nb", "")], id="comment-does-not-split"),
    pytest.param(b":data: x\n\n:\n\n", [], id="comment-whatever-it-holds"),
    # fields
    pytest.param(b"data\n\n", [("message", "", "")], id="no-colon-is-empty-value"),
    pytest.param(b"data\n\ndata\ndata\n\n", [("message", "", ""), ("message", "\n", "")], id="data-lines-joined"),
    pytest.param(b"data:\n\n", [("message", "", "")], id="empty-value"),
    pytest.param(b"data: a: b:c\n\n", [("message", "a: b:c", "")], id="first-colon-splits"),
    pytest.param(b"data:  x\n\n", [("message", " x", "")], id="one-space-removed"),
    pytest.param(b"data:x\n\n", [("message", "x", "")], id="no-space"),
    pytest.param(b"data:\tx\n\n", [("message", "\tx", "")], id="tab-kept"),
    pytest.param(b"Data: x\nDATA: y\n\n", [], id="names-case-sensitive"),
    pytest.param(b"foo: bar\ndata : x\ndata: y\n\n", [("message", "y", "")], id="unknown-fields-ignored"),
    # event
    pytest.param(b"event: tick\ndata: 1\n\ndata: 2\n\n", [("tick", "1", ""), ("message", "2", "")],
                 id="event-applies-once"),
    pytest.param(b"event: a\n\ndata: x\n\n", [("message", "x", "")], id="empty-data-resets-event-type"),
    pytest.param(b"event\ndata: x\n\nevent:\ndata: y\n\n", [("message", "x", ""), ("message", "y", "")],
                 id="empty-event-is-message"),
    pytest.param(b"event:  spaced\ndata: x\n\n", [(" spaced", "x", "")], id="event-one-space-removed"),
    # id
    pytest.param(b"id: 1\ndata: a\n\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "1")],
                 id="id-persists"),
    pytest.param(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "1")],
                 id="id-with-nul-ignored"),
    pytest.param(b"id: 1\ndata: a\n\nid\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "")],
                 id="bare-id-resets"),
    pytest.param(b"id: 1\ndata: a\n\nid:\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "")],
                 id="empty-id-resets"),
    pytest.param(b"id: 7\n\n", [], id="id-without-data"),
    pytest.param("id: é-1\ndata: a\n\n".encode(), [("message", "a", "é-1")], id="id-unicode"),
]

#: (stream, last event id of the source once it ended)
LAST_IDS = [
    pytest.param(b"id: 7\n\n", "7", id="set-by-block-without-data"),
    pytest.param(b"id: 1\ndata: a\n\nid\n\n", "", id="bare-id-resets"),
    pytest.param(b"id: 1\n\nid: 2\x00\n\n", "1", id="nul-ignored"),
    pytest.param(b"id: 1\n\nid: 2\n", "1", id="cut-off-block-sets-nothing"),
    pytest.param(b"id: 1\n\nid: 2\ndata: x\n", "1", id="cut-off-event-sets-nothing"),
]

#: (stream, the source's reconnection time afterwards; it starts at 1234)
RETRIES = [
    pytest.param(b"retry: 1500\n\n", 1500, id="digits"),
    pytest.param(b"retry: 0\n\n", 0, id="zero"),
    pytest.param(b"retry: 1000x\n\n", 1234, id="trailing-letter"),
    pytest.param(b"retry: -1\n\n", 1234, id="negative"),
    pytest.param(b"retry: 1.5\n\n", 1234, id="decimal"),
    pytest.param(b"retry: 1e3\n\n", 1234, id="exponent"),
    pytest.param(b"retry:\n\nretry\n\n", 1234, id="empty"),
    pytest.param(b"retry:  500\n\n", 1234, id="two-spaces"),
    pytest.param("retry: ١٢٣\n\n".encode(), 1234, id="non-ascii-digits"),
    pytest.param(b"Retry: 500\n\n", 1234, id="case-sensitive"),
    pytest.param(b"retry: 99999999999999999999\n\n", 99999999999999999999, id="very-large"),
    pytest.param(b"retry: 10\ndata: x\n", 10, id="applies-without-a-blank-line"),
]


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_parsing(monkeypatch: pytest.MonkeyPatch, wire: bytes, expected: list[tuple[str, str, str]]) -> None:
    events, _ = run_once(monkeypatch, [wire])
    assert events == expected


@pytest.mark.parametrize(("wire", "expected"), CASES)
def test_parsing_is_the_same_whatever_the_network_chunks(monkeypatch: pytest.MonkeyPatch, wire: bytes,
                                                         expected: list[tuple[str, str, str]]) -> None:
    """A CR at the end of a chunk and the LF at the start of the next are one line end; a UTF-8 sequence or
    the BOM may be split too."""
    for cut in range(1, len(wire)):
        assert run_once(monkeypatch, [wire[:cut], wire[cut:]])[0] == expected, f"split at byte {cut}"
    assert run_once(monkeypatch, [wire[i:i + 1] for i in range(len(wire))])[0] == expected, "byte by byte"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], ["a\nb"], id="crlf-split"),
        pytest.param([b"data: a\r", b"\r"], ["a"], id="cr-then-cr-is-two-line-ends"),
        pytest.param([b"data: a\r", b"\n", b"\r\n"], ["a"], id="crlf-split-then-crlf"),
        pytest.param([b"data: a\n\r", b"\ndata: b\n\n"], ["a", "b"], id="blank-crlf-split"),
        pytest.param([b"\xef\xbb", b"\xbfdata: a\n\n"], ["a"], id="bom-split"),
        pytest.param([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"], ["a"], id="bom-byte-by-byte"),
        pytest.param([b"data: \xc3", b"\xa9\n\n"], ["é"], id="utf8-split"),
    ],
)
def test_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, pieces: list[bytes], expected: list[str]) -> None:
    assert [data for _, data, _ in run_once(monkeypatch, pieces)[0]] == expected


@pytest.mark.parametrize(("wire", "last_id"), LAST_IDS)
def test_last_event_id(monkeypatch: pytest.MonkeyPatch, wire: bytes, last_id: str) -> None:
    assert run_once(monkeypatch, [wire])[1].last_event_id == last_id


@pytest.mark.parametrize(("wire", "retry"), RETRIES)
def test_retry(monkeypatch: pytest.MonkeyPatch, wire: bytes, retry: int) -> None:
    assert run_once(monkeypatch, [wire])[1].retry == retry


def test_events_carry_the_reconnection_time_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_module, "open_request", FakeTransport([Reply((b"data: a\n\nretry: 50\ndata: b\n\n",))]))
    assert list(stream_once()) == [MessageEvent("a", retry=1234), MessageEvent("b", retry=50)]


def test_json_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_module, "open_request", FakeTransport([Reply((b'data: {"a": [1, 2]}\n\ndata: x\n\n',))]))
    first, second = list(stream_once())
    assert first.json() == {"a": [1, 2]}
    with pytest.raises(ValueError):
        second.json()


# -- the connection: reconnect, resume, stop ----------------------------------------------------------------

def collect(source: EventSource, limit: float = 5.0) -> tuple[list[MessageEvent], BaseException | None]:
    """Every event until the iteration ends, and the exception that ended it (None: it just ended)."""
    timer = threading.Timer(limit, source.close)
    timer.start()
    events: list[MessageEvent] = []
    try:
        for event in source:
            events.append(event)
    except Exception as exc:
        return events, exc
    finally:
        timer.cancel()
    return events, None


def test_reconnects_after_a_clean_end_sending_last_event_id(transport: Any) -> None:
    fake = transport(Reply((b"retry: 0\nid: 1\ndata: a\n\n",)), Reply((b"id: 2\ndata: b\n\n",)))
    source = EventSource("http://test/s")
    events, error = collect(source)
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "2")]
    assert isinstance(error, StreamClosed) and "204" in str(error)
    assert "Last-Event-ID" not in fake.requests[0]
    assert fake.requests[0]["Accept"] == "text/event-stream"
    assert [r["Last-Event-ID"] for r in fake.requests[1:]] == [b"1", b"2"]
    assert source.reconnects == 1 and source.ready_state == CLOSED


def test_reconnects_after_a_network_error(transport: Any) -> None:
    fake = transport(Reply((b"retry: 0\nid: 1\ndata: a\n\ndata: cut",), error=ConnectionResetError()),
                     Reply((b"data: b\n\n",)))
    events, _ = collect(EventSource("http://test/s"))
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1")]  # "cut" was never dispatched
    assert fake.requests[1]["Last-Event-ID"] == b"1"


def test_the_id_is_sent_as_utf8_and_a_reset_id_is_not_sent(transport: Any) -> None:
    fake = transport(Reply(("retry: 0\nid: é-1\n\n".encode(),)), Reply((b"id\n\n",)), Reply())
    collect(EventSource("http://test/s"))
    assert fake.requests[1]["Last-Event-ID"] == "é-1".encode()
    assert "Last-Event-ID" not in fake.requests[2]


def test_a_given_last_event_id_is_sent_on_the_first_connection(transport: Any) -> None:
    fake = transport(Reply((b"data: a\n\n",)))
    collect(EventSource("http://test/s", last_event_id="41", retry=0))
    assert fake.requests[0]["Last-Event-ID"] == b"41"


def test_each_connection_is_a_new_stream(transport: Any) -> None:
    """The BOM of each connection is stripped, and an event cut off by the end of one connection is not
    completed by the next."""
    transport(Reply(("\ufeffretry: 0\ndata: a\n\ndata: half".encode(),)), Reply(("\ufeffdata: b\n\n".encode(),)))
    assert [e.data for e in collect(EventSource("http://test/s"))[0]] == ["a", "b"]


def test_the_server_retry_applies_to_the_following_reconnects(transport: Any) -> None:
    transport(Reply((b"retry: 30\n\n",)), Reply(), Reply())
    delays: list[float] = []
    started = time.monotonic()
    collect(EventSource("http://test/s", on_error=lambda source, error, delay: delays.append(delay)))
    assert delays == [0.03, 0.03, 0.03]
    assert time.monotonic() - started >= 0.09


@pytest.mark.parametrize(
    ("reply", "error_type", "message"),
    [
        pytest.param(Reply(status=204), StreamClosed, "204 No Content", id="204"),
        pytest.param(Reply(status=404, body=b'{"error": "not_found", "message": "No such stream.", "status": 404}'),
                     HTTPError, "No such stream.", id="404-json"),
        pytest.param(Reply(status=503, body=b"busy"), HTTPError, "503", id="503"),
        pytest.param(Reply(status=201), HTTPError, "201", id="another-2xx"),
        pytest.param(Reply(content_type="text/plain"), NotAnEventStream, "'text/plain'", id="text-plain"),
        pytest.param(Reply(content_type=""), NotAnEventStream, "none", id="no-content-type"),
        pytest.param(Reply(content_type="text/event-streams"), NotAnEventStream, "event-streams", id="near-miss"),
    ],
)
def test_stops_for_good(transport: Any, reply: Reply, error_type: type[Exception], message: str) -> None:
    fake = transport(reply, Reply((b"data: never\n\n",)))
    events, error = collect(EventSource("http://test/s", retry=0))
    assert events == [] and isinstance(error, error_type) and message in str(error)
    assert len(fake.requests) == 1


def test_http_error_carries_the_server_error_fields(transport: Any) -> None:
    transport(Reply(status=403, body=b'{"error": "forbidden", "message": "Not yours.", "status": 403}'))
    _, error = collect(EventSource("http://test/s"))
    assert isinstance(error, HTTPError)
    assert (error.status, error.code, error.message) == (403, "forbidden", "Not yours.")


@pytest.mark.parametrize("content_type", ["text/event-stream; charset=utf-8", "Text/Event-Stream",
                                          " text/event-stream ;charset=UTF-8"])
def test_content_type_parameters_and_case(transport: Any, content_type: str) -> None:
    transport(Reply((b"data: a\n\n",), content_type=content_type))
    assert [e.data for e in collect(EventSource("http://test/s", retry=0))[0]] == ["a"]


def test_gives_up_after_max_retries_failed_attempts(transport: Any) -> None:
    fake = transport(Reply(refuse=True), Reply(refuse=True), Reply(refuse=True), Reply((b"data: late\n\n",)))
    events, error = collect(EventSource("http://test/s", retry=0, max_retries=2))
    assert events == [] and isinstance(error, ConnectionFailed)
    assert "connection refused" in str(error) and "3 attempts" in str(error)
    assert len(fake.requests) == 3


def test_an_open_connection_resets_the_failure_count(transport: Any) -> None:
    transport(Reply(refuse=True), Reply((b"data: a\n\n",)), Reply(refuse=True), Reply((b"data: b\n\n",)))
    events, error = collect(EventSource("http://test/s", retry=0, max_retries=1))
    assert [e.data for e in events] == ["a", "b"] and isinstance(error, StreamClosed)


def test_hooks_and_counters(transport: Any) -> None:
    transport(Reply((b"retry: 20\nid: 5\n\n",)), Reply(refuse=True), Reply((b"data: a\n\n",)))
    seen: list[Any] = []
    source = EventSource("http://test/s", on_open=lambda s: seen.append(("open", s.reconnects, s.last_event_id)),
                         on_error=lambda s, e, d: seen.append(("error", type(e).__name__, d)))
    collect(source)
    assert seen == [("open", 0, ""), ("error", "NoneType", 0.02), ("error", "ConnectionRefusedError", 0.02),
                    ("open", 1, "5"), ("error", "NoneType", 0.02)]
    assert 0.04 <= source.downtime < 30  # two retry waits at least; the upper bound is a sanity bound only


def test_close_from_the_loop_stops_at_once(transport: Any) -> None:
    transport(Reply((b"data: 1\n\ndata: 2\n\n",)))
    source = EventSource("http://test/s")
    received = []
    for event in source:
        received.append(event.data)
        source.close()
    assert received == ["1"] and source.ready_state == CLOSED


def test_close_from_another_thread_ends_a_very_long_retry_wait(transport: Any) -> None:
    transport(Reply((b"retry: 99999999999999999999\n\n",)))
    started = time.monotonic()
    events, error = collect(EventSource("http://test/s"), limit=0.3)
    assert events == [] and error is None
    assert time.monotonic() - started < 30  # ended by close(), not after the retry: 3e15 years


# -- the same over real sockets ----------------------------------------------------------------------------

@dataclass
class Scripted:
    """One connection's answer: a head, body pieces written one by one (``pause`` apart), then the end."""

    pieces: tuple[bytes, ...] = ()
    head: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    pause: float = 0.0
    end: str = "close"  # "close", "reset" (RST) or "hold" (until the client leaves)
    chunked: bool = False


@dataclass
class ScriptedServer:
    """A loopback HTTP server answering each connection with the next script (after the last: 204), and
    recording each request's head."""

    scripts: list[Scripted]
    requests: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            script = self.scripts.pop(0) if self.scripts else Scripted(head=b"HTTP/1.1 204 No Content\r\n")
            thread = threading.Thread(target=self._answer, args=(connection, script), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _answer(self, connection: socket.socket, script: Scripted) -> None:
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = b""
            while b"\r\n\r\n" not in head:
                data = connection.recv(65536)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape").split("\r\n")
            request = {"request-line": lines[0]}
            request.update({k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])})
            self.requests.append(request)
            self.times.append(time.monotonic())
            framing = b"Transfer-Encoding: chunked\r\n" if script.chunked else b"Connection: close\r\n"
            connection.sendall(script.head + framing + b"\r\n")
            for piece in script.pieces:
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if script.chunked else piece)
                time.sleep(script.pause)
            if script.end == "reset":
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if script.end == "hold":
                connection.settimeout(0.1)
                while not self._stop.is_set():
                    try:
                        if not connection.recv(1024):
                            return
                    except TimeoutError:
                        continue
                    except OSError:
                        return
            elif script.chunked:
                connection.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(2)


@contextlib.contextmanager
def scripted(*scripts: Scripted) -> Iterator[ScriptedServer]:
    server = ScriptedServer(list(scripts))
    try:
        yield server
    finally:
        server.close()


def test_over_the_network_chunked_and_byte_by_byte() -> None:
    wire = "\ufeffretry: 0\r\nid: 1\r\ndata: é\r\ndata: b\r\r: c\n\nevent: e\ndata: x\n\n".encode()
    with scripted(Scripted(tuple(wire[i:i + 1] for i in range(len(wire))), pause=0.001, chunked=True),
                  Scripted((wire,))) as server:
        events, error = collect(EventSource(server.url + "/s"))
    expected = [("message", "é\nb", "1"), ("e", "x", "1")]
    assert [(e.event, e.data, e.id) for e in events] == expected * 2
    assert isinstance(error, StreamClosed)
    assert server.requests[1]["last-event-id"] == "1"


def test_over_the_network_a_reset_mid_chunk_reconnects_with_the_last_id() -> None:
    with scripted(Scripted((b"retry: 0\nid: \xc3\xa9\ndata: a\n\n", b"data: cut"), chunked=True, end="reset"),
                  Scripted((b"data: b\n\n",))) as server:
        events, error = collect(EventSource(server.url + "/s"))
    assert [e.data for e in events] == ["a", "b"] and isinstance(error, StreamClosed)
    assert server.requests[1]["last-event-id"].encode("utf-8", "surrogateescape") == "é".encode()


def test_over_the_network_the_retry_delay_is_waited() -> None:
    delays: list[float] = []
    with scripted(Scripted((b"retry: 300\ndata: a\n\n",)), Scripted((b"data: b\n\n",))) as server:
        events, _ = collect(EventSource(server.url + "/s", on_error=lambda s, e, delay: delays.append(delay)),
                            limit=30)
    assert [e.data for e in events] == ["a", "b"]
    assert delays[0] == 0.3  # the server's retry, not the default 3 s
    assert server.times[1] - server.times[0] >= 0.3  # and it was waited (a lower bound: load only adds)


def test_over_the_network_a_silent_stream_is_reconnected_after_the_timeout() -> None:
    with scripted(Scripted((b"retry: 0\nid: 3\ndata: a\n\n",), end="hold"), Scripted((b"data: b\n\n",))) as server:
        started = time.monotonic()
        # The first connection is held open and silent: only the 0.3 s timeout can end it before collect()
        # gives up (30 s), so "b" proves the reconnection.
        events, _ = collect(EventSource(server.url + "/s", timeout=0.3), limit=30)
    assert [e.data for e in events] == ["a", "b"] and server.requests[1]["last-event-id"] == "3"
    assert time.monotonic() - started >= 0.3


def test_over_the_network_redirects_are_followed() -> None:
    with scripted(Scripted(head=b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n"),
                  Scripted((b"data: a\n\n",))) as server:
        events, error = collect(EventSource(server.url + "/s", retry=0))
    assert [e.data for e in events] == ["a"] and isinstance(error, StreamClosed)
    assert [r["request-line"] for r in server.requests] == ["GET /s HTTP/1.1", "GET /elsewhere HTTP/1.1",
                                                            "GET /s HTTP/1.1"]


def test_over_the_network_close_interrupts_a_blocked_read() -> None:
    with scripted(Scripted((b"data: a\n\n",), end="hold")) as server:
        source = EventSource(server.url + "/s")
        started = time.monotonic()
        events, error = collect(source, limit=0.3)
    # Ended by close() at 0.3 s; the held connection would otherwise stay silent until the 60 s read timeout.
    assert [e.data for e in events] == ["a"] and error is None and time.monotonic() - started < 20


def test_over_the_network_refused_connections_give_up() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    events, error = collect(EventSource(f"http://127.0.0.1:{port}/s", retry=10, max_retries=2))
    assert isinstance(error, ConnectionFailed) and "3 attempts" in str(error)


def test_stream_url() -> None:
    assert stream_url("http://h:1/", ["news"]) == "http://h:1/realtime/news"
    assert stream_url("http://h:1", ["a", "b.c"]) == "http://h:1/realtime?channel=a&channel=b.c"


# -- against a real server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(module_server: Any) -> Any:
    return module_server(app="wsgi:app", env={"ROVER_RETRY_MS": "200", "ROVER_WS_MESSAGE_RATE": "50"})


@pytest.mark.live
def test_publish_and_listen_against_the_server(server: Any) -> None:
    client = Client(server.url)
    opened = threading.Event()
    source = client.listen("client-news", "client-alerts", on_open=lambda s: opened.set())
    received: list[MessageEvent] = []

    def read() -> None:
        for event in source:
            received.append(event)
            if len(received) == 3:
                source.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(5)
    answers = [client.publish("client-news", {"n": 1}), client.publish("client-alerts", "two", event="alert"),
               client.publish("client-news", [3])]
    assert [a["subscribers"] for a in answers] == [1, 1, 1]
    reader.join(5)
    source.close()
    assert [(e.event, e.json()) for e in received] == [
        ("message", {"channel": "client-news", "data": {"n": 1}}),
        ("alert", {"channel": "client-alerts", "data": "two"}),
        ("message", {"channel": "client-news", "data": [3]})]


@pytest.mark.live
def test_api_errors_carry_the_server_message(server: Any) -> None:
    with pytest.raises(HTTPError) as caught:
        Client(server.url).publish("bad name!", 1)
    assert caught.value.status == 400 and caught.value.code == "invalid_channel"
    assert "Invalid channel name 'bad name!'" in str(caught.value)
    assert Client(server.url).health()["status"] == "healthy"
    assert "active_streams" in Client(server.url).stream_stats()


@pytest.mark.live
def test_room_client_gets_the_frames_sent_with_the_handshake(server: Any) -> None:
    """History and presence come right after the 101 response, often in the same read: they must arrive
    at once, not when the next bytes (a ping, seconds later) wake the reader."""
    with RoomClient(server.url, "client-room", "ada") as ada:
        # All three well before the server's first ping (25 s), which would otherwise bring them.
        deadline = time.monotonic() + 10
        frames = [ada.receive(max(0.1, deadline - time.monotonic())) for _ in range(3)]
        assert [f["type"] for f in frames if f] == ["history", "presence", "join"]
        with RoomClient(server.url, "client-room", "grace") as grace:
            assert [grace.receive(2)["type"] for _ in range(3)] == ["history", "presence", "join"]  # type: ignore[index]
            join = ada.receive(2)
            assert join is not None and (join["type"], join["user"]) == ("join", "grace")
            grace.send("hello ada ✓")
            mine = grace.receive(2)
            assert mine is not None and (mine["type"], mine["user"], mine["text"]) == ("message", "grace",
                                                                                      "hello ada ✓")
            got = ada.receive(2)
            assert got is not None and got["text"] == "hello ada ✓"
            assert grace.close() == 1000
        leave = ada.receive(2)
        assert leave is not None and (leave["type"], leave["user"]) == ("leave", "grace")
        with pytest.raises(RoomClosed):
            grace.send("too late")


@pytest.mark.live
def test_room_client_refused_with_the_server_reason(server: Any) -> None:
    with pytest.raises(HTTPError) as caught:
        RoomClient(server.url, "client-room", "x" * 65)
    assert caught.value.status == 400 and "user name" in str(caught.value)
    with pytest.raises(ConnectionFailed):
        RoomClient("http://127.0.0.1:1", "client-room", "ada", timeout=2)


@pytest.mark.live
def test_room_client_sees_the_server_close(server: Any) -> None:
    room = RoomClient(server.url, "client-big", "ada")
    assert [room.receive(2)["type"] for _ in range(3)] == ["history", "presence", "join"]  # type: ignore[index]
    big = "x" * 2_000_000  # beyond ROVER_WS_MAX_MESSAGE_BYTES (1 MiB): the server closes with 1009
    room.send(big)
    with pytest.raises(RoomClosed) as caught:
        while True:
            room.receive(5)
    assert caught.value.code == 1009
    room.close()


@pytest.mark.live
def test_room_client_reconnects_after_a_server_restart_without_repeating_history(
        tmp_path: Path, redis_server: Any) -> None:
    """``reconnect=True``: the server (on Redis, whose room history outlives it) is stopped with SIGTERM
    and started again on the same port. The client gets 1001, comes back by itself, says so with a
    ``reconnected`` frame, and the rejoin's history holds none of the messages it had seen already; a
    message sent after the restart reaches it. Without ``reconnect`` the 1001 ends the client."""
    from conftest import LiveServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_REDIS_URL": redis_server.url, "ROVER_METRICS_INTERVAL": "0"}
    first = LiveServer(tmp_path, app="wsgi:app", env=env)
    second = None
    staying = RoomClient(first.url, "client-restart", "ada", reconnect=True)
    leaving = RoomClient(first.url, "client-restart", "grace")
    try:
        for n in range(3):
            staying.send(f"before {n}")
        seen: list[Any] = []
        while len(seen) < 3:
            frame = staying.receive(5)
            assert frame is not None
            if frame["type"] == "message":
                seen.append(frame["text"])
        first.stop()
        with pytest.raises(RoomClosed) as caught:
            while True:
                leaving.receive(5)
        assert caught.value.code == 1001
        second = LiveServer(tmp_path, app="wsgi:app", env=env)
        after: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(f.get("type") == "reconnected" for f in after):
            assert time.monotonic() < deadline, after
            frame = staying.receive(1)
            if frame is not None:
                after.append(frame)
        assert next(f for f in after if f["type"] == "reconnected")["code"] == 1001
        gone = next(f for f in after if f["type"] == "disconnected")
        assert gone["code"] == 1001 and after.index(gone) < after.index(next(f for f in after
                                                                         if f["type"] == "reconnected"))
        with RoomClient(second.url, "client-restart", "linus") as linus:
            linus.send("after the restart")
            while True:
                frame = staying.receive(5)
                assert frame is not None
                after.append(frame)
                if frame.get("text") == "after the restart":
                    break
        history = next(f for f in after if f["type"] == "history")
        assert history["messages"] == []  # all three were seen before the restart
        texts = [f.get("text") for f in after if f["type"] == "message"]
        assert texts == ["after the restart"] and staying.reconnections == 1
        assert staying.close() == 1000
    finally:
        staying.close(timeout=1)
        leaving.close(timeout=1)
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.live
def test_room_client_gives_up_when_the_server_refuses_it_for_good(tmp_path: Path) -> None:
    """``reconnect=True`` against a server that comes back with a secret: the private room now needs a
    token this client lacks (401). It does not retry forever: it ends, saying why."""
    from conftest import LiveServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_METRICS_INTERVAL": "0", "ROVER_DEMO": "0"}
    first = LiveServer(tmp_path, env=env)
    second = None
    room = RoomClient(first.url, "private-ops", "ada", reconnect=True)
    try:
        first.stop()
        second = LiveServer(tmp_path, env={**env, "ROVER_SECRET_KEY": "k" * 32})
        frames = []
        with pytest.raises(RoomClosed) as caught:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                frame = room.receive(1)
                if frame is not None:
                    frames.append(frame)
        assert "401" in caught.value.reason, caught.value
        assert any(f["type"] == "disconnected" for f in frames)
        assert not any(f["type"] == "reconnected" for f in frames)
    finally:
        room.close(timeout=1)
        first.stop()
        if second is not None:
            second.stop()


def test_message_event_json_round_trip() -> None:
    assert MessageEvent(json.dumps({"a": 1})).json() == {"a": 1}


# -- download ----------------------------------------------------------------------------------------------

def test_download_broken_off_then_resumed_with_if_range(tmp_path: Path) -> None:
    whole = Scripted((b"a" * 50,), head=b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: "v1"\r\n'
                     b'Content-Disposition: attachment; filename="../../the file.bin"\r\n')
    rest = Scripted((b"b" * 50,), head=b'HTTP/1.1 206 Partial Content\r\nContent-Length: 50\r\n'
                    b'Content-Range: bytes 50-99/100\r\nETag: "v1"\r\n')
    with scripted(whole, rest) as server:
        with pytest.raises(ConnectionFailed, match="stopped at 50 of 100 bytes; run again with --resume"):
            download(server.url + "/files/x", tmp_path)
        partial = tmp_path / "the file.bin"  # the server's name, without its folders
        assert partial.read_bytes() == b"a" * 50
        assert json.loads((tmp_path / "the file.bin.part.json").read_text())["etag"] == '"v1"'
        result = download(server.url + "/files/x", directory=tmp_path, resume=True)
    assert (result.path, result.size, result.resumed_from, result.validated) == (partial, 100, 50, True)
    assert partial.read_bytes() == b"a" * 50 + b"b" * 50
    assert (server.requests[1]["range"], server.requests[1]["if-range"]) == ("bytes=50-", '"v1"')
    assert not (tmp_path / "the file.bin.part.json").exists()


def test_download_errors(tmp_path: Path) -> None:
    not_found = Scripted((b'{"error": "not_found", "message": "No file named \'x\' is available here.", '
                          b'"status": 404}',), head=b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n")
    wrong_range = Scripted(head=b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-99/100\r\n")
    (tmp_path / "x").write_bytes(b"12345")
    with scripted(not_found, wrong_range) as server:
        with pytest.raises(HTTPError, match="No file named 'x'"):
            download(server.url + "/x", tmp_path / "y")
        with pytest.raises(DownloadError, match="sent bytes from 10, but .* has 5"):
            download(server.url + "/x", tmp_path / "x", resume=True)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        pytest.param('attachment; filename="report.pdf"', "report.pdf", id="plain"),
        pytest.param("attachment; filename*=UTF-8''na%C3%AFve%20file.txt", "naïve file.txt", id="rfc5987"),
        pytest.param('attachment; filename="/etc/passwd"', "passwd", id="no-folders"),
        pytest.param('attachment; filename="..\\\\..\\\\win.ini"', "win.ini", id="no-windows-folders"),
        pytest.param('attachment; filename=".bashrc"', "bashrc", id="no-hidden-file"),
        pytest.param('attachment; filename=".."', None, id="dots"),
        pytest.param("attachment", None, id="no-name"),
        pytest.param("", None, id="no-header"),
    ],
)
def test_file_names_from_the_server_are_plain_names(header: str, name: str | None) -> None:
    assert name_from_disposition(header) == name


def test_file_names_from_urls() -> None:
    assert name_from_url("http://h/download/a%20b.txt?x=1") == "a b.txt"
    assert name_from_url("http://h/") == "download"


# -- terminal ----------------------------------------------------------------------------------------------

def test_printable_shows_control_characters() -> None:
    assert printable("ok ✓ é") == "ok ✓ é"
    assert printable("\x1b]0;pwned\x07\x1b[2J\r\x9b\ttab") == "\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x9b tab"


def stop_when(prompt: Prompt, condition: Any, timeout: float = 10.0) -> threading.Event:
    """An event for ``read_line(stop)``, set once the prompt has read and handled every key written so far
    and ``condition()`` holds (or after ``timeout``, for the assertion that follows to fail)."""
    import fcntl
    import termios

    def settled() -> bool:
        unread = struct.unpack("i", fcntl.ioctl(prompt.fd, termios.FIONREAD, b"\0" * 4))[0]
        return unread == 0 and not prompt._pending and not prompt._escape and bool(condition())

    stop = threading.Event()

    def watch() -> None:
        wait_for(settled, timeout=timeout, interval=0.01)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


@contextlib.contextmanager
def prompt_on_a_pty() -> Iterator[tuple[Prompt, int, io.StringIO]]:
    master, slave = os.openpty()
    stdin = open(slave, closefd=True)  # noqa: SIM115 -- closed below
    out = io.StringIO()
    try:
        with Prompt("me> ", stdin=stdin, stdout=out) as prompt:
            yield prompt, master, out
    finally:
        stdin.close()
        os.close(master)


def test_prompt_edits_the_line_and_keeps_it_while_lines_are_shown() -> None:
    with prompt_on_a_pty() as (prompt, keys, out):
        os.write(keys, b"ab cd\x17xyz\x1b[1;5A")  # Ctrl-W erases a word; an unknown sequence is ignored
        stop = stop_when(prompt, lambda: prompt.buffer == "ab xyz")
        assert prompt.read_line(stop) is None and prompt.buffer == "ab xyz"
        prompt.show("grace: hi")
        assert out.getvalue().endswith("\r\x1b[Kgrace: hi\nme> ab xyz")
        os.write(keys, b"\x15")  # Ctrl-U: everything before the cursor
        stop = stop_when(prompt, lambda: prompt.buffer == "")
        assert prompt.read_line(stop) is None and prompt.buffer == ""
        os.write(keys, b"xyz")
        os.write(keys, "\x7fé\r\x15gone\x15kept\n\x04".encode())  # Backspace, Enter, Ctrl-U, Ctrl-D
        assert prompt.read_line() == "xyé"
        assert prompt.read_line() == "kept"
        assert prompt.read_line() is None


def test_prompt_moves_the_cursor_and_edits_in_the_middle() -> None:
    with prompt_on_a_pty() as (prompt, keys, out):
        # "abd", Left, "c" -> "abcd"; Home, Delete -> "bcd"; End, "e" -> "bcde"; Ctrl-A, "<"; Ctrl-E, ">"
        # -> "<bcde>"; Left twice (before "e"), Backspace -> "<bce>": every key acts where the cursor is.
        os.write(keys, b"abd\x1b[Dc\x1b[H\x1b[3~\x1b[Fe\x01<\x05>\x1b[D\x1b[D\x7f\r")
        assert prompt.read_line() == "<bce>"
        assert out.getvalue().endswith("\r\x1b[Kme> ")  # a new, empty input after Enter


def test_a_long_input_scrolls_sideways_and_is_sent_whole() -> None:
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 30, 0, 0))  # a 30-column terminal
    terminal = open(slave, "w", closefd=False)  # noqa: SIM115 -- closed below
    stdin = open(slave, closefd=True)  # noqa: SIM115 -- closed below
    try:
        with Prompt("me> ", stdin=stdin, stdout=terminal) as prompt:
            text = "".join(chr(ord("a") + n % 26) for n in range(60))
            os.write(master, text.encode())
            assert prompt.read_line(stop_when(prompt, lambda: prompt.buffer == text)) is None
            drawn = prompt._input_line()
            assert drawn == "\r\x1b[Kme> " + text[-25:]  # 30 - the prompt - 1: the tail, where the cursor is
            os.write(master, b"\x01")  # Ctrl-A: the start comes into view, the cursor on it
            assert prompt.read_line(stop_when(prompt, lambda: prompt.cursor == 0)) is None
            assert prompt._input_line() == "\r\x1b[Kme> " + text[:25] + "\x1b[25D"
            os.write(master, b"\r")
            assert prompt.read_line() == text
    finally:
        terminal.close()
        stdin.close()
        os.close(master)


def test_prompt_ctrl_c_interrupts() -> None:
    with prompt_on_a_pty() as (prompt, keys, _):
        os.write(keys, b"half\x03")
        with pytest.raises(KeyboardInterrupt):
            prompt.read_line()
