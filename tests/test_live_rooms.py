"""WebSocket rooms against a real gunicorn (gevent) with real clients (simple_websocket.Client answers
pings): isolation, order, presence, history, a member that never reads, limits, origin, tokens, shutdown."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from typing import Any

import pytest
import simple_websocket

from tests.wire_helpers import get_json, next_message, request, wait_for, ws_client_class

RoomClient = ws_client_class()

pytestmark = pytest.mark.live


def connect(server: Any, room: str, user: str, **kwargs: Any) -> simple_websocket.Client:
    return RoomClient.connect(f"ws://127.0.0.1:{server.port}/ws/comms/{room}?user={user}", **kwargs)


def frames(client: simple_websocket.Client, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        raw = client.receive(max(0.01, deadline - time.monotonic()))
        assert raw is not None, f"only {len(received)} of {count} frames: {received}"
        received.append(json.loads(raw))
    return received


def joined(server: Any, room: str, user: str) -> simple_websocket.Client:
    """Connect and read the three frames every member gets first: history, presence, its own join."""
    client = connect(server, room, user)
    history, presence, join = frames(client, 3)
    assert history["type"] == "history" and presence["type"] == "presence"
    assert join == {**join, "type": "join", "user": user, "room": room}
    return client


def close_code(client: simple_websocket.Client, timeout: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout
    while client.connected and time.monotonic() < deadline:
        try:
            client.receive(0.1)
        except simple_websocket.ConnectionClosed:
            break
    return client.close_reason


@pytest.fixture
def server(live_server: Any) -> Any:
    return live_server(env={"ROVER_WS_MESSAGE_RATE": "50", "ROVER_WS_MAX_MESSAGE_BYTES": "100000"})


def test_rooms_are_isolated_and_ordered(server: Any) -> None:
    ada, grace = joined(server, "science", "ada"), joined(server, "science", "grace")
    frames(ada, 1)  # grace's join
    linus = joined(server, "engineering", "linus")
    for i in range(50):
        ada.send(f"science {i}")
    linus.send(json.dumps({"text": "engineering only"}))
    for client in (ada, grace):
        got = frames(client, 50)
        assert [f["text"] for f in got] == [f"science {i}" for i in range(50)]
        assert {f["user"] for f in got} == {"ada"} and {f["room"] for f in got} == {"science"}
        ids = [tuple(map(int, f["id"].split("-"))) for f in got]
        assert ids == sorted(ids)
    assert [f["text"] for f in frames(linus, 1)] == ["engineering only"]
    assert grace.receive(0.3) is None  # nothing from the other room
    for client in (ada, grace, linus):
        client.close()


def test_presence_join_leave_and_history(server: Any) -> None:
    ada = joined(server, "ops", "ada")
    for i in range(3):
        ada.send(f"note {i}")
    frames(ada, 3)
    grace = connect(server, "ops", "grace")
    history, presence, join = frames(grace, 3)
    assert [m["text"] for m in history["messages"]] == ["note 0", "note 1", "note 2"]
    assert presence["members"] == ["ada", "grace"]
    assert frames(ada, 1)[0]["type"] == "join"
    assert get_json(server.port, "/api/rooms/ops") == {"room": "ops", "members": ["ada", "grace"], "count": 2}
    grace.close()
    leave = frames(ada, 1)[0]
    assert leave["type"] == "leave" and leave["user"] == "grace"
    assert wait_for(lambda: get_json(server.port, "/api/rooms/ops")["count"] == 1, timeout=3)
    ada.close()


def test_large_frames_arrive_whole(server: Any) -> None:
    """Pitfall 7: simple-websocket's send() truncated large messages under gevent."""
    member = joined(server, "big", "ada")
    size = 8 * 1024 * 1024
    connection = __import__("http.client").client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", f"/test/room-broadcast/big?size={size}")
    assert connection.getresponse().status == 200
    connection.close()
    frame = json.loads(member.receive(30))
    assert len(frame["text"]) == size and set(frame["text"]) == {"z"}
    member.close()


def _raw_member(server: Any, room: str) -> socket.socket:
    """A WebSocket member that completes the handshake and then never reads its socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/comms/{room}?user=frozen HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def test_a_member_that_never_reads_does_not_stall_the_room(server: Any) -> None:
    frozen = _raw_member(server, "busy")
    readers = [joined(server, "busy", f"reader{i}") for i in range(5)]
    for reader in readers:  # drain the joins that came after each one's own
        while reader.receive(0.2) is not None:
            pass
    sender = __import__("http.client").client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    size, sent = 2000, 0
    started = time.monotonic()
    # Send until the frozen member's socket buffers and queue are full and the hub lets go of it.
    while get_json(server.port, "/test/state")["hub"]["slow_subscribers_disconnected"] == 0:
        assert sent < 20_000, "the frozen member was never dropped"
        for _ in range(20):
            sender.request("POST", f"/test/room-broadcast/busy?size={size}")
            assert sender.getresponse().read()
            sent += 1
        for reader in readers:  # the others keep reading, and get every frame
            got = frames(reader, 20, timeout=10)
            assert all(len(f["text"]) == size for f in got)
    assert time.monotonic() - started < 60
    sender.close()
    frozen.close()
    for reader in readers:
        reader.close()


def test_oversize_message_closes_1009(server: Any) -> None:
    member = joined(server, "limits", "ada")
    member.send("x" * 200_000)
    assert close_code(member) == 1009


def test_message_flood_closes_1008(server: Any) -> None:
    member = joined(server, "limits", "flooder")
    for i in range(300):
        try:
            member.send(f"spam {i}")
        except (simple_websocket.ConnectionClosed, OSError):  # closed by the server meanwhile
            break
    assert close_code(member) == 1008


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, size, j = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if size == 126:
            size, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif size == 127:
            size, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        frames.append((opcode, data[j:j + size]))
        i = j + size
    return frames


def test_nothing_follows_the_close_frame(server: Any) -> None:
    """A flooder is closed with 1008 while messages are still queued for it: the close frame must be the
    last frame (RFC 6455 5.5.1); browsers fail a connection that sends data after it (1006)."""
    listener = joined(server, "flood2", "listener")
    sock = _raw_member(server, "flood2")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    received = received.split(b"\r\n\r\n", 1)[1]
    mask = os.urandom(4)
    for i in range(300):
        payload = json.dumps({"text": f"flood {i}"}).encode()
        try:
            masked = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
            sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)
        except OSError:
            break
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    sock.close()
    opcodes = [opcode for opcode, _ in _server_frames(received)]
    assert 8 in opcodes, opcodes
    assert opcodes.index(8) == len(opcodes) - 1, f"{len(opcodes) - 1 - opcodes.index(8)} frames after the close"
    close_payload = _server_frames(received)[-1][1]
    assert int.from_bytes(close_payload[:2], "big") == 1008
    listener.close()


def test_foreign_origin_is_refused(server: Any) -> None:
    response = request(server.port, "/ws/comms/science?user=x", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": "http://evil.example"})
    assert response.status == 403
    assert json.loads(response.body())["error"] == "origin_not_allowed"
    response.close()
    same = connect(server, "science", "ok", headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert frames(same, 1)[0]["type"] == "history"
    same.close()


def test_private_room_needs_a_token(live_server: Any) -> None:
    from rover_stream.auth import mint_token

    secret = "a-secret-for-tests-0123456789-abcdef"
    server = live_server(env={"ROVER_SECRET_KEY": secret})
    response = request(server.port, "/ws/comms/private-ops?user=x", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
    assert response.status == 401
    response.close()
    token = mint_token(secret, subscribe=["private-ops"])
    member = RoomClient.connect(
        f"ws://127.0.0.1:{server.port}/ws/comms/private-ops?user=x&token={token}")
    assert frames(member, 1)[0]["type"] == "history"
    member.close()


def test_members_get_1001_on_sigterm(live_server: Any) -> None:
    server = live_server(env={"ROVER_GRACEFUL_TIMEOUT": "30"})
    members = [joined(server, "shutdown", f"m{i}") for i in range(5)]
    took = server.stop()
    assert took < 5.0
    for member in members:
        assert close_code(member) == 1001


def test_rooms_span_two_instances_on_redis(live_server: Any, redis_server: Any) -> None:
    env = {"ROVER_REDIS_URL": redis_server.url}
    host_a, host_b = live_server(env=env), live_server(env=env)
    ada = joined(host_a, "shared", "ada")
    grace = connect(host_b, "shared", "grace")
    frames(grace, 3)  # history, presence, own join
    assert frames(ada, 1)[0]["user"] == "grace"  # grace's join, published on the other host
    ada.send("across hosts")
    grace.send("and back")
    seen_by_grace = [f["text"] for f in frames(grace, 2)]
    seen_by_ada = [f["text"] for f in frames(ada, 2)]
    assert sorted(seen_by_grace) == ["across hosts", "and back"]
    assert seen_by_ada == seen_by_grace  # one order for everyone: the stream's
    ada.close()
    grace.close()


def test_idle_member_is_closed_1008(live_server: Any) -> None:
    server = live_server(env={"ROVER_WS_IDLE_TIMEOUT": "1"})
    member = joined(server, "quiet", "ada")
    started = time.monotonic()
    assert close_code(member, timeout=5) == 1008
    assert 0.9 <= time.monotonic() - started < 4


def test_member_that_never_answers_pings_is_closed(live_server: Any) -> None:
    server = live_server(env={"ROVER_WS_PING_INTERVAL": "0.5"})
    frozen = _raw_member(server, "pings")
    assert wait_for(lambda: get_json(server.port, "/api/rooms/pings")["count"] == 1, timeout=3)
    # No pong comes back: after a ping interval unanswered, the server closes the connection.
    assert wait_for(lambda: get_json(server.port, "/api/rooms/pings")["count"] == 0, timeout=5)
    frozen.close()


def test_room_members_are_listed_across_instances_on_redis(live_server: Any, redis_server: Any) -> None:
    env = {"ROVER_REDIS_URL": redis_server.url}
    host_a, host_b = live_server(env=env), live_server(env=env)
    ada = joined(host_a, "crew", "ada")
    grace = connect(host_b, "crew", "grace")
    _, presence, _ = frames(grace, 3)
    assert presence["members"] == ["ada", "grace"]  # who is in the room on the other host too
    for host in (host_a, host_b):
        assert get_json(host.port, "/api/rooms/crew") == {"room": "crew", "members": ["ada", "grace"], "count": 2}
    grace.close()
    assert wait_for(lambda: get_json(host_a.port, "/api/rooms/crew")["members"] == ["ada"], timeout=5)
    ada.close()


def test_a_client_that_asks_for_no_subprotocol_reads_plain_text_lines(module_server: Any) -> None:
    """What ``wscat -c ws://.../ws/comms/science`` shows: ``Message: hello``, and short ``*`` lines; a client
    that asks for ``rover.json`` in the same room gets the same events as JSON frames."""
    server = module_server(env={"ROVER_DEMO": "0"})
    client = ws_client_class()
    url = f"ws://127.0.0.1:{server.port}/ws/comms/plaintext"
    json_member = client.connect(url + "?user=grace")
    try:
        assert json.loads(json_member.receive(timeout=5))["type"] == "history"
        wscat = client.connect(url, subprotocols=None)
        try:
            lines = [wscat.receive(timeout=5) for _ in range(3)]
            assert lines == ["* no earlier messages in plaintext", "* in plaintext: anonymous, grace",
                             "* anonymous joined plaintext"]
            wscat.send("hello")
            assert wscat.receive(timeout=5) == "Message: hello"
            heard = next_message(json_member, text="hello")
            assert heard["user"] == "anonymous" and heard["type"] == "message"
            json_member.send(json.dumps({"text": "sample 7"}))
            assert wscat.receive(timeout=5) == "Message: sample 7"
        finally:
            wscat.close()
        late = client.connect(url + "?user=ada", subprotocols=None)
        try:
            history = late.receive(timeout=5)
            assert history.splitlines() == ["* earlier in plaintext:", "Message: hello", "Message: sample 7"]
        finally:
            late.close()
    finally:
        json_member.close()
