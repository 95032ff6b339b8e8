"""Hostile input: fuzzed HTTP API requests (hypothesis, Flask test client), and against a live gunicorn
garbage WebSocket frames, slow headers and connection floods. The server answers each with the documented
error (a JSON body with error/message/status, never a 500), stays up, and other clients notice nothing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_helpers import Publisher, get_json, subscribe, ws_client_class

import rover_stream as rs

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("hostile")
    (base / "uploads").mkdir()
    (base / "uploads" / "ok.txt").write_text("fine")
    (base / "secret.txt").write_text("do not serve")
    app = rs.create_app({"TESTING": True, "ROVER_UPLOADS_DIR": str(base / "uploads"), "ROVER_DATA_DIR": str(base),
                         "ROVER_METRICS_INTERVAL": 0, "ROVER_MAX_BODY_BYTES": 4096})
    return app


def assert_documented_error(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.data[:300])
    if response.status_code >= 400:
        body = response.get_json()
        assert set(body) == {"error", "message", "status"} and body["status"] == response.status_code


@FUZZ
@given(body=st.binary(max_size=6000), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"]))
def test_fuzzed_broadcast_bodies(api: Any, body: bytes, content_type: str) -> None:
    response = api.test_client().post("/api/broadcast", data=body, content_type=content_type or None)
    assert_documented_error(response, {200, 400, 413, 415})


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                                             max_size=4),
                           max_leaves=20)


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["channel", "event", "data", "message", "timestamp", "x"]),
                            json_values, max_size=4))
def test_fuzzed_broadcast_fields(api: Any, body: dict[str, Any]) -> None:
    response = api.test_client().post("/api/broadcast", json=body)
    assert_documented_error(response, {200, 400})
    if response.status_code == 200:  # what was published is what a subscriber will parse
        assert response.get_json()["channel"] == body.get("channel", "broadcast")


@FUZZ
@given(channel=st.text(min_size=1, max_size=120), last_event_id=st.text(max_size=80))
def test_fuzzed_channel_names_and_last_event_ids(api: Any, channel: str, last_event_id: str) -> None:
    headers = {}
    if all(32 <= ord(c) < 127 for c in last_event_id):
        headers["Last-Event-ID"] = last_event_id
    response = api.test_client().get("/realtime", query_string={"channel": channel}, headers=headers,
                                      buffered=False)
    try:
        assert_documented_error(response, {200, 400})
    finally:
        response.close()


@FUZZ
@given(event=st.builds(lambda a, c, b: a + c + b, st.text(max_size=12), st.sampled_from(["\r", "\n", "\x00", ":"]),
                       st.text(max_size=12)))
def test_event_names_cannot_inject_lines(api: Any, event: str) -> None:
    response = api.test_client().post("/api/broadcast", json={"channel": "news", "event": event, "data": 1})
    if response.status_code == 200:  # only a name the encoder accepts (a ':' alone is harmless)
        assert not any(c in event for c in "\r\n\x00")
    else:
        assert_documented_error(response, {400})


@FUZZ
@given(path=st.text(min_size=1, max_size=60))
def test_fuzzed_download_paths_never_leave_the_folder(api: Any, path: str) -> None:
    response = api.test_client().get("/download/" + path)
    assert_documented_error(response, {200, 206, 304, 400, 404, 405, 416})
    if response.status_code == 200:
        assert response.data == b"fine"


def test_user_names_with_control_characters_are_refused(api: Any) -> None:
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for name in ("ada\x00", "ada\nbob", "x" * 65, "\x1b[31mred"):
        response = api.test_client().get("/ws/comms/science", query_string={"user": name}, headers=upgrade)
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_user"
        chat = api.test_client().get("/chat/" + quote(name, safe=""), buffered=False)
        chat.close()
        assert chat.status_code in (400, 404), name


# -- against a live server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(module_server: Any) -> Any:
    return module_server(env={"ROVER_METRICS_INTERVAL": "0"})


def test_garbage_websocket_frames_close_only_that_connection(server: Any) -> None:
    client_class = ws_client_class()
    bystander = client_class.connect(f"ws://127.0.0.1:{server.port}/ws/comms/hostile?user=calm")
    try:
        for payload in (os.urandom(64), b"\x81\xff" + os.urandom(20), b"\x8f\x80\x00\x00\x00\x00", b"\x01" * 100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall((f"GET /ws/comms/hostile?user=rogue HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            sock.recv(4096)
            sock.sendall(payload)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass  # the server closes it
            except OSError:
                pass
            sock.close()
        bystander.send("still fine")
        deadline = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline:
            raw = bystander.receive(1)
            if raw and json.loads(raw).get("text") == "still fine":
                break
            seen.append(raw)
        else:
            pytest.fail(f"the bystander's message did not come back: {seen}")
    finally:
        bystander.close()


def test_slow_headers_and_connection_floods_do_not_starve_others(server: Any) -> None:
    reader = subscribe(server.port, "steady")
    publish = Publisher(server.port)
    slow: list[socket.socket] = []
    stop = threading.Event()

    def drip() -> None:  # slowloris: headers a byte at a time
        while not stop.is_set():
            for sock in list(slow):
                try:
                    sock.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        dripper = threading.Thread(target=drip)
        dripper.start()
        for _ in range(300):  # a flood of connections opened and dropped at once
            socket.create_connection(("127.0.0.1", server.port)).close()
        started = time.monotonic()
        assert get_json(server.port, "/health")["status"] == "ok"
        publish("steady", "on time")
        assert reader.events(1, timeout=3)[0].data == "on time"
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        publish.close()
        reader.response.close()
