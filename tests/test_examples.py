"""The apps in examples/, run the way their docstrings say (``rover-stream serve --app MODULE:app`` from the
examples folder: gunicorn with the gevent worker), checked for what a user of each would see."""

from __future__ import annotations

import ast
import csv
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rover_stream.wire.sse_parser import EventStreamParser, ParsedEvent
from tests.wire_helpers import SSEReader, get_json, request, subscribe, ws_client_class

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODULES = ("sse_in_existing_app", "export", "chat_room")
#: Variables that would make the server listen elsewhere or change what it runs: the tests set their own.
SERVER_VARIABLES = ("HOST", "PORT", "WEB_CONCURRENCY", "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR")


class ExampleServer:
    """``rover-stream serve --app MODULE:app`` in examples/, on a loopback port the kernel picks (PORT=0)."""

    def __init__(self, module: str, tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_") and k not in SERVER_VARIABLES}
        env.update(HOST="127.0.0.1", PORT="0", ROVER_DATA_DIR=str(tmp / "var"), PYTHONUNBUFFERED="1",
                   PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ left in examples/
        self.log_path = tmp / f"{module}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "rover_stream", "serve", "--app", f"{module}:app"],
                                     cwd=EXAMPLES, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.port = 0  # known once it listens: wait_for_port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_port(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log)
            if match and "Booting worker" in log:
                try:
                    socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=1).close()
                    self.port = int(match.group(1))
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{log}")
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start within {timeout} s:\n{self.log()}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ExampleServer]]:
    """The three examples, started together and stopped together (each stop takes a second or so)."""
    tmp = tmp_path_factory.mktemp("examples")
    started: dict[str, ExampleServer] = {}
    try:
        for module in MODULES:
            started[module] = ExampleServer(module, tmp)
        for server in started.values():
            server.wait_for_port()
        yield started
    finally:
        for server in started.values():
            server.terminate()
        for server in started.values():
            server.stop()


@pytest.fixture
def shop(servers: dict[str, ExampleServer]) -> ExampleServer:
    return servers["sse_in_existing_app"]


@pytest.fixture
def exports(servers: dict[str, ExampleServer]) -> ExampleServer:
    return servers["export"]


@pytest.fixture
def chat(servers: dict[str, ExampleServer]) -> ExampleServer:
    return servers["chat_room"]


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request; the status, the headers (lower-case names) and the whole body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def whole_stream(port: int, path: str, headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> list[ParsedEvent]:
    """The events of an SSE response that ends by itself, read to its end."""
    response = request(port, path, headers, timeout=timeout)
    try:
        assert response.status == 200, response.buffer[:300]
        assert response.headers["content-type"].startswith("text/event-stream")
        parser, events = EventStreamParser(), list[Any]()
        deadline = time.monotonic() + timeout
        while not response.ended:
            chunk = response.read_chunk(timeout=max(0.01, deadline - time.monotonic()))
            assert chunk is not None and time.monotonic() < deadline, f"the stream did not end: {events}"
            events.extend(parser.feed(chunk))
        return events
    finally:
        response.close()


@pytest.mark.parametrize("module", MODULES)
def test_each_example_says_how_to_run_it(module: str) -> None:
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{module}.py").read_text()))
    assert doc and f"rover-stream serve --app {module}:app" in doc
    assert "curl" in doc or "wscat" in doc
    assert len((EXAMPLES / f"{module}.py").read_text().splitlines()) < 100


# -- sse_in_existing_app -------------------------------------------------------------------------------------

@pytest.mark.live
def test_the_shop_keeps_its_page_and_gains_the_prefixed_routes(shop: ExampleServer) -> None:
    status, headers, body = call(shop.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"new EventSource(\"/countdown\")" in body
    assert get_json(shop.port, "/rt/health")["status"] == "healthy"
    status, headers, body = call(shop.port, "GET", "/nope")
    assert status == 404 and headers["content-type"].startswith("text/html")  # the app's own 404, as before
    status, headers, body = call(shop.port, "GET", "/rt/realtime/-bad-")
    assert status == 400 and json.loads(body)["error"] == "invalid_channel"  # the extension's errors: JSON


@pytest.mark.live
def test_the_countdown_has_ids_and_resumes(shop: ExampleServer) -> None:
    events = whole_stream(shop.port, "/countdown?start=5&interval=0.01")
    assert [(e.event, e.last_event_id, json.loads(e.data)) for e in events[:-1]] == [
        ("tick", str(n), {"remaining": n}) for n in range(5, -1, -1)]
    assert (events[-1].event, events[-1].data) == ("done", "open")

    resumed = whole_stream(shop.port, "/countdown?start=5&interval=0.01", {"Last-Event-ID": "3"})
    assert [e.last_event_id for e in resumed if e.event == "tick"] == ["2", "1", "0"]
    first_time = whole_stream(shop.port, "/countdown?start=5&interval=0.01&last_event_id=1")
    assert [e.last_event_id for e in first_time if e.event == "tick"] == ["0"]

    over = request(shop.port, "/countdown?start=5", {"Last-Event-ID": "0"})
    assert over.status == 204  # EventSource stops reconnecting
    over.close()


@pytest.mark.live
def test_an_order_posted_reaches_the_stream_and_replays(shop: ExampleServer) -> None:
    stream = SSEReader(request(shop.port, "/orders/stream", timeout=10))
    hub_reader = subscribe(shop.port, "orders", prefix="/rt")
    try:
        assert stream.response.status == 200
        stream.until(b"\n\nid: ")  # subscribed
        status, _, body = call(shop.port, "POST", "/orders", {"item": "tea", "qty": 2})
        assert status == 201 and json.loads(body)["subscribers"] == 2
        status, _, body = call(shop.port, "POST", "/rt/api/broadcast",
                               {"channel": "orders", "event": "order", "data": {"item": "jam"}})
        assert status == 200 and json.loads(body)["subscribers"] == 2
        for reader in (stream, hub_reader):
            first, second = reader.events(2, timeout=10)
            assert (first.event, json.loads(first.data)) == ("order", {"item": "tea", "qty": 2})
            assert (second.event, json.loads(second.data)) == ("order", {"item": "jam"})
    finally:
        stream.response.close()
        hub_reader.response.close()

    again = SSEReader(request(shop.port, "/orders/stream", {"Last-Event-ID": first.last_event_id}, timeout=10))
    try:
        (missed,) = again.events(1, timeout=10)
        assert json.loads(missed.data) == {"item": "jam"} and missed.last_event_id == second.last_event_id
    finally:
        again.response.close()

    status, headers, body = call(shop.port, "POST", "/orders", {"qty": 2})
    assert status == 400 and json.loads(body)["error"] == "invalid_order"


# -- export --------------------------------------------------------------------------------------------------

@pytest.mark.live
def test_the_csv_export_is_a_download_of_the_rows_asked_for(exports: ExampleServer) -> None:
    status, headers, body = call(exports.port, "GET", "/readings.csv?rows=20000")
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == "attachment; filename=readings.csv"
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert rows[0] == ["id", "sensor", "recorded_at", "celsius"] and len(rows) == 20001
    assert rows[1] == ["0", "sensor-0", "2025-01-01T00:00:00+00:00", "18.0"]
    assert [int(row[0]) for row in rows[1:]] == list(range(20000))
    assert call(exports.port, "GET", "/readings.csv?rows=0")[2] == b"id,sensor,recorded_at,celsius\r\n"


@pytest.mark.live
def test_the_ndjson_export_is_one_json_object_a_line(exports: ExampleServer) -> None:
    status, headers, body = call(exports.port, "GET", "/readings.ndjson?rows=500")
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    records = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert len(records) == 500 and body.endswith(b"\n")
    assert records[499]["id"] == 499 and set(records[0]) == {"id", "sensor", "recorded_at", "celsius"}


@pytest.mark.live
@pytest.mark.parametrize("query", ["rows=lots", "rows=-1", "rows=1e3", "rows=", "rows=10000001"])
@pytest.mark.parametrize("path", ["/readings.csv", "/readings.ndjson"])
def test_a_bad_row_count_is_a_json_400(exports: ExampleServer, path: str, query: str) -> None:
    status, headers, body = call(exports.port, "GET", f"{path}?{query}")
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["error"] == "invalid_rows" and "?rows must be a whole number" in error["message"]


# -- chat_room -----------------------------------------------------------------------------------------------

def frames_until(ws: Any, wanted: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The JSON frames ``ws`` receives, up to and including the first for which ``wanted(frame)`` is true."""
    deadline = time.monotonic() + timeout
    frames: list[dict[str, Any]] = []
    while not frames or not wanted(frames[-1]):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not received in {timeout} s; got {frames}"
        raw = ws.receive(timeout=remaining)
        if raw is not None:
            frames.append(json.loads(raw))
    return frames


@pytest.mark.live
def test_the_chat_page_is_html_that_opens_the_room(chat: ExampleServer) -> None:
    status, headers, body = call(chat.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"new WebSocket(" in body and b"/ws/comms/" in body and b"?user=" in body


@pytest.mark.live
def test_two_members_of_a_room_see_each_others_messages(chat: ExampleServer) -> None:
    client = ws_client_class()
    base = f"ws://127.0.0.1:{chat.port}/ws/comms/kitchen"
    feed = SSEReader(request(chat.port, "/chat/kitchen/feed", timeout=10))
    ada = grace = linus = None
    try:
        feed.until(b"\n\nid: ")
        ada = client.connect(f"{base}?user=ada")
        assert frames_until(ada, lambda f: f["type"] == "presence")[-1]["members"] == ["ada"]
        grace = client.connect(f"{base}?user=grace")
        assert frames_until(grace, lambda f: f["type"] == "presence")[-1]["members"] == ["ada", "grace"]
        assert frames_until(ada, lambda f: f["type"] == "join" and f["user"] == "grace")
        assert get_json(chat.port, "/api/rooms/kitchen")["members"] == ["ada", "grace"]

        ada.send(json.dumps({"text": "soup's on"}))  # as the page sends
        said = frames_until(grace, lambda f: f["type"] == "message")[-1]
        assert (said["room"], said["user"], said["text"]) == ("kitchen", "ada", "soup's on")
        grace.send("coming")  # plain text, as wscat sends
        said = frames_until(ada, lambda f: f["type"] == "message" and f["user"] == "grace")[-1]
        assert said["text"] == "coming"

        heard = [json.loads(e.data) for e in feed.events(4, timeout=10)]  # join, join, message, message
        assert [(h["type"], h["user"]) for h in heard] == [("join", "ada"), ("join", "grace"),
                                                           ("message", "ada"), ("message", "grace")]

        linus = client.connect(f"{base}?user=linus")
        history = frames_until(linus, lambda f: f["type"] == "history")[-1]["messages"]
        assert [(m["user"], m["text"]) for m in history] == [("ada", "soup's on"), ("grace", "coming")]
    finally:
        feed.response.close()
        for member in (ada, grace, linus):
            if member is not None:
                member.close()

    status, _, body = call(chat.port, "GET", "/chat/private-ops/feed")
    assert status == 403 and json.loads(body)["error"] == "forbidden"
