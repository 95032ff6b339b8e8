"""One regression test per hole found by the security review, each named for it; the docstring says how to
reproduce the hole by hand against ``rover-stream serve`` (with ``ROVER_SECRET_KEY`` set where it says so).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

import rover_stream as rs
from rover_stream.demo import create_demo_app
from rover_stream.hub import MemoryEngine
from rover_stream.wire.sse_parser import EventStreamParser
from tests.wire_helpers import SSEReader, get_json, next_message, request, wait_for, ws_client_class

SECRET = "s" * 40


def token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    return create_demo_app({"TESTING": True, "ROVER_SECRET_KEY": SECRET, "ROVER_DATA_DIR": str(tmp_path),
                            "ROVER_METRICS_INTERVAL": 0}).test_client()


@pytest.fixture
def open_client(tmp_path: Path) -> Any:
    return create_demo_app({"TESTING": True, "ROVER_DATA_DIR": str(tmp_path),
                            "ROVER_METRICS_INTERVAL": 0}).test_client()


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length (or what came before the connection closed)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# -- 1. a private room's channel was readable without a token -------------------------------------------

@pytest.mark.parametrize("path", ["/realtime/room.private-ops", "/realtime?channel=news&channel=room.private-ops",
                                  "/realtime/private-ops", "/api/rooms/private-ops"])
def test_private_room_channel_needs_a_token(secured: Any, path: str) -> None:
    """``curl -N localhost:8000/realtime/room.private-ops`` answered 200 and streamed the room: the privacy
    rule looked only at the ``private-`` prefix, not at a room's hub channel."""
    refused = secured.get(path)
    assert refused.status_code == 401 and refused.json["error"] == "token_required"
    wrong = secured.get(path, headers={"Authorization": f"Bearer {token(subscribe=['news', 'public-*'])}"})
    assert wrong.status_code == 403
    allowed = secured.get(path, headers={"Authorization": f"Bearer {token(subscribe=['news', 'private-*'])}"},
                          buffered=False)
    assert allowed.status_code == 200
    allowed.close()


# -- 2. room identity ignored the token ---------------------------------------------------------------------

@pytest.mark.live
def test_room_member_name_is_the_tokens_subject(live_server: Any) -> None:
    """A token with ``sub=alice`` and ``?user=mallory`` showed ``mallory`` in presence and on messages:
    ``wscat -c 'ws://localhost:8000/ws/comms/private-ops?user=mallory&token=<alice's token>'``."""
    server = live_server(env={"ROVER_SECRET_KEY": SECRET, "ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"})
    alice = token(sub="alice", subscribe=["private-*"])
    client = ws_client_class().connect(f"ws://127.0.0.1:{server.port}/ws/comms/private-ops?user=mallory&token={alice}")
    try:
        client.send(json.dumps({"text": "who am I"}))
        assert next_message(client)["user"] == "alice"
        assert get_json(server.port, f"/api/rooms/private-ops?token={alice}")["members"] == ["alice"]
    finally:
        client.close()


# -- 3. 500s ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param('{"channel": "news", "data": ' + "1" * 4301 + "}", id="int-of-4301-digits"),
    pytest.param('{"channel": "news", "data": NaN}', id="NaN"),
    pytest.param('{"channel": "news", "data": [Infinity]}', id="Infinity"),
    pytest.param('{"channel": "news", "data": 1e999}', id="1e999"),
    pytest.param('{"channel": "news", "data": ' + "[" * 5000 + "]" * 5000 + "}", id="nested-5000"),
])
def test_publish_bodies_that_were_500s_or_relayed_as_non_json_are_400(open_client: Any, body: str) -> None:
    """``curl -X POST -H 'Content-Type: application/json' -d '{"channel":"news","data":1111...(4301 digits)}'
    localhost:8000/api/broadcast`` answered 500; ``NaN``, ``Infinity`` and ``1e999`` were accepted and relayed
    as tokens that are not JSON."""
    answer = open_client.post("/api/broadcast", data=body, content_type="application/json")
    assert answer.status_code == 400 and answer.json["error"] == "invalid_json", answer.data[:300]


@pytest.mark.parametrize("path", ["/events", "/stream", "/realtime/news"])
@pytest.mark.parametrize("digits", [4300, 4301, 30])
def test_huge_last_event_ids_start_over_instead_of_failing(open_client: Any, path: str, digits: int) -> None:
    """``curl -N -H "Last-Event-ID: $(printf '9%.0s' {1..4301})" localhost:8000/events`` answered 500 (4,300
    digits: 200, then the stream was aborted mid-response)."""
    response = open_client.get(path, headers={"Last-Event-ID": "9" * digits, "Accept": "text/event-stream"},
                               buffered=False)
    try:
        assert response.status_code == 200
        parser = EventStreamParser()
        events = []
        for chunk in response.response:
            events += parser.feed(chunk)
            if any(e.data for e in events):
                break
        assert any(e.data for e in events)
    finally:
        response.close()


@pytest.mark.live
@pytest.mark.parametrize("raw", [
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="InvalidChunkSize"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="ChunkMissingTerminator"),
])
def test_a_malformed_chunked_body_is_400(module_server: Any, raw: bytes) -> None:
    """``printf 'POST /api/broadcast HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n
    Transfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\n' | nc localhost 8000`` answered 500."""
    server = module_server(env={"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + raw)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"malformed_body"' in answer


@pytest.mark.live
@pytest.mark.parametrize("headers,status", [
    pytest.param({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 426, id="no-version"),
    pytest.param({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "8"}, 426, id="version-8"),
    pytest.param({"Sec-WebSocket-Version": "13"}, 400, id="no-key"),
    pytest.param({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "k", "Origin": "http://127.0.0.1:abc"}, 403,
                 id="origin-port-abc"),
    pytest.param({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "k", "Origin": "http://127.0.0.1:99999"}, 403,
                 id="origin-port-99999"),
    pytest.param({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "k", "Origin": "http://[::1"}, 403,
                 id="origin-broken-ipv6"),
])
def test_bad_upgrades_are_answered_before_the_upgrade(module_server: Any, headers: dict[str, str],
                                                       status: int) -> None:
    """An upgrade without ``Sec-WebSocket-Version`` (``curl -H 'Upgrade: websocket' -H 'Connection: Upgrade'
    -H 'Sec-WebSocket-Key: x' localhost:8000/ws/comms/science``), or with ``Origin: http://127.0.0.1:abc``,
    answered 500."""
    server = module_server(env={"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"})
    response = request(server.port, "/ws/comms/science", {"Upgrade": "websocket", "Connection": "Upgrade", **headers})
    try:
        assert response.status == status
    finally:
        response.close()


# -- 4. a channel name with a trailing newline --------------------------------------------------------------

@pytest.mark.parametrize("name", ["inj\n", "inj\r", "news\nid: 1", " news", "news "])
def test_channel_names_with_a_trailing_newline_are_refused(open_client: Any, name: str) -> None:
    """``curl -N 'localhost:8000/realtime/inj%0A'`` was accepted (the pattern's ``$`` matches before a final
    newline); on a multi-channel stream the ``id:`` line was then split."""
    published = open_client.post("/api/broadcast", json={"channel": name, "data": 1})
    assert published.status_code == 400 and published.json["error"] == "invalid_channel"
    subscribed = open_client.get("/realtime", query_string=[("channel", "news"), ("channel", name)])
    assert subscribed.status_code == 400 and subscribed.json["error"] == "invalid_channel"


# -- 5. /process-stream read a body of any size --------------------------------------------------------------

@pytest.mark.live
def test_process_stream_refuses_a_huge_body_before_reading_it(module_server: Any) -> None:
    """``head -c 300M /dev/zero | curl -X POST -H 'Content-Type: application/json' --data-binary @-
    localhost:8000/process-stream`` was read whole (the worker grew by 900 MB)."""
    server = module_server(app="wsgi:app", env={"ROVER_METRICS_INTERVAL": "0"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /process-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 314572800\r\n\r\n" + b"[" * 65536)
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        sock.settimeout(5)
        rest = b""
        try:  # the connection is closed: the rest of the body is never read
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            pass


# -- 6. MAX_CHANNELS did not bound channels that are only published to --------------------------------------

def test_max_channels_bounds_channels_that_are_only_published_to(tmp_path: Path) -> None:
    """10,000 publishes to distinct channels with ``ROVER_MAX_CHANNELS=100`` kept all 10,000 histories. The
    idlest channels without subscribers are now forgotten; a subscriber resuming on one gets a reset."""
    app = rs.create_app({"ROVER_MAX_CHANNELS": 100, "ROVER_METRICS_INTERVAL": 0, "ROVER_DATA_DIR": str(tmp_path)})
    hub = rs.get_hub(app)
    watched = hub.subscribe("watched")
    first = hub.publish("c0", "first").message.id
    for n in range(10_000):
        hub.publish(f"c{n}", n)
    engine = hub.engine
    assert isinstance(engine, MemoryEngine)
    assert engine.stats()["history_events"] <= 100
    assert len(engine.held_channels()) <= 100
    assert engine.holds("watched") or "watched" in hub.stats()["subscribers_per_channel"]
    # c0 was forgotten; it begins again, and its new ids must not be taken for the old ones.
    again = [hub.publish("c0", f"again {n}").message.id for n in range(2)]
    assert first not in again
    resumed = hub.subscribe("c0", last_event_id=first)
    parser, events = EventStreamParser(), list[Any]()
    while len(events) < 3 and (parts := resumed.take(1)):
        events += parser.feed(b"".join(parts))
    assert events[0].event == "reset" and json.loads(events[0].data)["reason"] in ("unknown", "expired")
    assert [e.last_event_id for e in events[1:]][-2:] == again  # everything of the new c0
    watched.close()
    resumed.close()


# -- 7. deeply nested JSON in a room frame ended the connection without a close frame ------------------------

@pytest.mark.live
def test_a_deeply_nested_room_frame_is_ignored_and_the_member_stays(module_server: Any) -> None:
    """``wscat -c ws://localhost:8000/ws/comms/science`` then sending ``{"a":[[[[...50,000 levels...]]]]}``
    ended the connection with a RecursionError and no close frame."""
    server = module_server(env={"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"})
    client = ws_client_class().connect(f"ws://127.0.0.1:{server.port}/ws/comms/science?user=deep")
    try:
        client.send('{"type": "message", "text": ' + "[" * 50_000 + "]" * 50_000 + "}")
        client.send(json.dumps({"text": "still here"}))
        assert next_message(client)["text"] == "still here"  # the member was not cut
    finally:
        client.close()


# -- 10. a slow-body flood locked out new clients -------------------------------------------------------------

@pytest.mark.live
def test_a_slow_body_flood_does_not_lock_out_new_clients(live_server: Any) -> None:
    """1,000 connections sending a POST body a byte at a time kept every new connection, even ``/health``,
    waiting for the whole flood: they held every greenlet of the worker. Now at most 5% of the connections
    read a body at once (503 beyond, at once), and a body must keep up a minimum rate."""
    server = live_server(env={"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0", "ROVER_WORKER_CONNECTIONS": "1000"})
    head = (b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n{")
    flood: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(head)
            flood.append(sock)
        # The burst is dealt with: every connection either answered at once (503 too_many_bodies, then
        # closed) or held, its body being read; the held ones go on trickling while new clients come.
        seen: set[int] = set()
        answered = wait_for(lambda: sum(_answered(sock, seen) for sock in flood) >= 900, 30)
        assert answered, "the flood was not answered"
        held = [sock for sock in flood if not _answered(sock, seen)]
        assert 0 < len(held) <= 100
        for _ in range(3):
            for sock in held:  # a byte more, as a trickle would
                try:
                    sock.send(b" ")
                except OSError:
                    pass
            started = time.monotonic()
            assert get_json(server.port, "/health")["status"] == "healthy"
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            response = request(server.port, "/realtime/news", timeout=5)
            try:
                assert response.status == 200
                SSEReader(response).until(b"\n\nid: ", timeout=1.0)
                assert time.monotonic() - started < 1.0
            finally:
                response.close()
    finally:
        for sock in flood:
            sock.close()


def _answered(sock: socket.socket, seen: set[int]) -> bool:
    """Whether the server answered (or closed) this connection; remembered in ``seen`` once seen."""
    if id(sock) in seen:
        return True
    sock.setblocking(False)
    answered: bool
    try:
        answered = bool(sock.recv(65536, socket.MSG_PEEK)) or True
    except BlockingIOError:
        answered = False
    except OSError:
        answered = True
    finally:
        sock.setblocking(True)
    if answered:
        seen.add(id(sock))
    return answered


# -- 11. smaller ----------------------------------------------------------------------------------------------

def test_joining_the_chat_announces_the_user_so_it_needs_a_publish_token(secured: Any) -> None:
    """``curl -N localhost:8000/chat/anyone`` published ``user_joined``/``user_left`` without a token while
    ``POST /chat/send`` needed one."""
    assert secured.get("/chat/mallory").status_code == 401
    allowed = secured.get("/chat/ada", headers={"Authorization": f"Bearer {token(publish=['chat'])}"},
                          buffered=False)
    assert allowed.status_code == 200
    allowed.close()


@pytest.mark.live
def test_a_path_cannot_forge_access_log_lines(live_server: Any) -> None:
    """``curl 'localhost:8000/x%0D%0A127.0.0.1%20"GET%20/admin%20HTTP/1.1"%20200'`` wrote a forged line into
    the access log."""
    server = live_server(env={"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", '/x%0D%0A127.0.0.1%20"GET%20/forged%20HTTP/1.1"%20200')
    connection.getresponse().read()
    connection.close()
    assert wait_for(lambda: "\\x0d\\x0a127.0.0.1" in server.log(), 5), server.log()[-2000:]
    assert not any(line.startswith('127.0.0.1 "GET /forged') for line in server.log().splitlines())
