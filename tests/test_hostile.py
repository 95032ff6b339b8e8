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
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from wire_helpers import Publisher, get_json, subscribe, ws_client_class

from rover_stream.demo import create_demo_app

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("hostile")
    (base / "uploads").mkdir()
    (base / "uploads" / "ok.txt").write_text("fine")
    (base / "secret.txt").write_text("do not serve")
    app = create_demo_app({"TESTING": True, "ROVER_UPLOADS_DIR": str(base / "uploads"), "ROVER_DATA_DIR": str(base),
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
    data = json.dumps(body).encode()
    response = api.test_client().post("/api/broadcast", data=data, content_type="application/json")
    # 413 exactly when the JSON is longer than ROVER_MAX_BODY_BYTES (4096 here).
    assert_documented_error(response, {413} if len(data) > 4096 else {200, 400})
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


@pytest.mark.live
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


@pytest.mark.live
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
        assert get_json(server.port, "/health")["status"] == "healthy"
        publish("steady", "on time")
        assert reader.events(1, timeout=3)[0].data == "on time"
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        publish.close()
        reader.response.close()


# A WebSocket frame as a client may send it, right or wrong: FIN, reserved bits, any opcode, masked or not
# (clients must mask), a payload of any bytes (text that is not UTF-8, control frames over 125 bytes), and
# a length field that may claim more than follows.
def _frame(fin: bool, rsv: int, opcode: int, masked: bool, payload: bytes, extra: int) -> bytes:
    length = len(payload) + extra  # extra > 0: the header claims bytes that never come
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if masked:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


_payloads = st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
_frames = st.one_of(
    st.builds(_frame, st.booleans(), st.sampled_from([0, 0, 0, 1, 2, 4, 7]),
              st.sampled_from([0, 1, 1, 2, 8, 9, 10, 3, 7, 11, 15]), st.sampled_from([True, True, True, False]),
              _payloads, st.sampled_from([0, 0, 0, 1, 5000])),
    # Well-formed framing, so that the fuzzing gets past the frame parser: fragments (FIN unset, then
    # continuations), pings, pongs, closes with any payload, text that may not be UTF-8.
    st.builds(_frame, st.booleans(), st.just(0), st.sampled_from([0, 1, 1, 1, 2, 8, 9, 10]), st.just(True),
              _payloads, st.just(0)))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse what the server sent (unmasked frames); raise on anything malformed."""
    frames = []
    while data:
        assert len(data) >= 2, data
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert data[1] & 0x80 == 0, "the server masked a frame"
        at = 2
        if length == 126:
            length, at = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(data[2:10], "big"), 10
        assert len(data) >= at + length, "a frame from the server was cut"
        frames.append((opcode, data[at:at + length]))
        data = data[at + length:]
    return frames


@pytest.mark.live
@FUZZ
@given(frames=st.lists(_frames, min_size=1, max_size=4))
# Found by this test: a ping, then a continuation with nothing to continue. simple-websocket handed over
# the pong and the 1002 close frame as one piece, the close frame went out as data, and the member then
# sent a second close frame.
@example(frames=[_frame(True, 0, 9, True, b"", 0), _frame(False, 0, 0, True, b"", 0)])
def test_fuzzed_websocket_frames(server: Any, frames: list[bytes]) -> None:
    """Any sequence of frames: the server answers with well-formed frames only; if it closes, its close
    frame is the last one and carries a code for what was wrong; and when the client then closes its side
    the server lets go of the connection promptly."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.sendall((f"GET /ws/comms/fuzz?user=rogue HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, received = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        for frame in frames:
            try:
                sock.sendall(frame)
            except OSError:
                break  # the server already closed: fine
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "the server held on to a client that had closed its side"
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break  # a reset after our unread garbage: the connection is gone, which is what counts
            if not more:
                break
            received += more
    finally:
        sock.close()
    answered = _server_frames(received)
    closes = [i for i, (opcode, _) in enumerate(answered) if opcode == 0x8]
    assert all(opcode in (0x1, 0x8, 0x9, 0xA) for opcode, _ in answered)
    if closes:
        assert closes == [len(answered) - 1], "a frame after the close frame"
        payload = answered[-1][1]
        code = int.from_bytes(payload[:2], "big") if payload else None
        # Ours (1002 protocol error, 1007 not UTF-8, 1008, 1009 too big...), or the client's own, echoed.
        assert code is None or code in (1000, 1001, 1002, 1003, *range(1007, 1015)) or 3000 <= code <= 4999, \
            payload
        event(f"closed with {code}")
    else:
        event("no close frame (connection reset)")


@pytest.mark.live
def test_after_the_fuzzed_frames_the_room_still_works(server: Any) -> None:
    """After the fuzzing (run before this test): the server is up, a member of the fuzzed room gets only
    well-formed room frames (what the rogue members sent reached it as messages, if at all), and a message
    goes round."""
    client_class = ws_client_class()
    member = client_class.connect(f"ws://127.0.0.1:{server.port}/ws/comms/fuzz?user=after")
    try:
        member.send("after the storm")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            raw = member.receive(1)
            frame = json.loads(raw) if raw else {}
            assert not raw or frame.get("type") in ("history", "presence", "join", "leave", "message"), raw
            if frame.get("text") == "after the storm":
                break
        else:
            pytest.fail("the message did not come back")
    finally:
        member.close()
