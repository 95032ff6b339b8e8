"""Security rules, each tested so that switching the rule off fails a test (checked by mutation: the rule
was switched off by hand, the test run and seen to fail, the change reverted).

* Downloads cannot leave their folder, neither by ``..`` (plain, encoded, absolute) nor by a symlink that
  points out of it: a secret file really exists beside the uploads folder and must never be served.
* A Range is answered with exactly its bytes, not more, on the chunked path (here: the Flask test client,
  which has no sendfile) -- the sendfile path is covered under gunicorn in tests/test_live_files.py.
* A room's same-origin check compares the port too, and a malformed Origin is refused, not a 500.
* A subscriber that stops reading is let go by the slow-client *policy* (its queue is full), long before a
  kernel timeout or SEND_TIMEOUT could do it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.wire_helpers import Publisher, get_json, request, subscribe, wait_for

SECRET = b"TOP-SECRET-" + os.urandom(8).hex().encode() + b"\n"


# -- downloads: traversal and symlinks, with the Flask test client -------------------------------------------

@pytest.fixture
def files(app: Any, tmp_path: Path) -> Path:
    """The uploads folder of ``app`` with a secret beside it, a file and a folder inside, and symlinks."""
    uploads = tmp_path / "uploads"
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (uploads / "notes.txt").write_bytes(b"mission notes\n")
    (uploads / "sub").mkdir()
    (uploads / "sub" / "inner.txt").write_bytes(b"inner\n")
    (uploads / "escape.txt").symlink_to("../secret.txt")
    (uploads / "abs-escape.txt").symlink_to(tmp_path / "secret.txt")
    (uploads / "passwd").symlink_to("/etc/passwd")
    (uploads / "outside").symlink_to("..", target_is_directory=True)
    (uploads / "sub" / "deep-escape.txt").symlink_to("../../secret.txt")
    (uploads / "loop").symlink_to("loop")
    (uploads / "inside.txt").symlink_to("sub/inner.txt")
    (uploads / "inside-dir").symlink_to("sub", target_is_directory=True)
    return uploads


TRAVERSALS = [
    "../secret.txt", "..%2fsecret.txt", "..%2Fsecret.txt", "%2e%2e/secret.txt", "%2E%2E%2Fsecret.txt",
    ".%2e/secret.txt", "sub/../../secret.txt", "sub/..%2f..%2fsecret.txt", "sub/%2e%2e/%2e%2e/secret.txt",
    "./../secret.txt", "..//secret.txt", "..%5csecret.txt", "..%252fsecret.txt", "/{abs}", "%2f{abs_quoted}",
    "{abs_quoted_all}", "//{abs}",
    # Back into the folder through "..": the file is inside, yet ".." is refused all the same (the traversal
    # guard, checked on its own: the symlink check would let these through).
    "../uploads/notes.txt", "..%2fuploads%2fnotes.txt", "sub/../../uploads/sub/inner.txt",
]


def _assert_refused(response: Any) -> None:
    for content in (SECRET.strip(), b"root:", b"mission notes", b"inner\n"):
        assert content not in response.data, response.data[:300]
    assert response.status_code == 404, response.data[:300]
    assert response.is_json and response.get_json()["error"] == "not_found"


@pytest.mark.parametrize("template", TRAVERSALS)
def test_traversal_is_a_404_and_never_serves_what_lies_beside_the_folder(client: Any, files: Path,
                                                                         template: str) -> None:
    secret = files.parent / "secret.txt"
    assert secret.read_bytes() == SECRET  # it is there: a missing guard would serve it
    absolute = str(secret).lstrip("/")
    path = template.format(abs=absolute, abs_quoted=quote(absolute, safe=""),
                           abs_quoted_all=quote(str(secret), safe=""))
    _assert_refused(client.get("/download/" + path))


@pytest.mark.parametrize("name", ["escape.txt", "abs-escape.txt", "passwd", "outside/secret.txt",
                                  "outside/uploads/escape.txt", "sub/deep-escape.txt", "inside-dir/deep-escape.txt",
                                  "loop"])
def test_a_symlink_out_of_the_folder_is_a_404_like_a_missing_file(client: Any, files: Path, name: str) -> None:
    response = client.get("/download/" + name)
    _assert_refused(response)
    missing = client.get("/download/no-such-file").get_json()
    assert response.get_json()["message"] == missing["message"].replace("no-such-file", name)


@pytest.mark.parametrize(("name", "disposition"), [("inside.txt", "inside.txt"), ("inside-dir/inner.txt", "inner.txt"),
                                                   ("outside/uploads/sub/inner.txt", "inner.txt")])
def test_a_symlink_that_stays_in_the_folder_is_served(client: Any, files: Path, name: str, disposition: str) -> None:
    response = client.get("/download/" + name)
    assert (response.status_code, response.data) == (200, b"inner\n")
    assert response.headers["Content-Disposition"] == f"attachment; filename={disposition}"


def test_a_symlinked_uploads_folder_still_serves_its_files(tmp_path: Path) -> None:
    """The folder itself may be a symlink (uploads -> /data/uploads): it is resolved too."""
    from rover_stream.demo import create_demo_app

    real = tmp_path / "real-uploads"
    real.mkdir()
    (real / "a.txt").write_bytes(b"a\n")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (real / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "uploads-link").symlink_to(real, target_is_directory=True)
    app = create_demo_app({"TESTING": True, "ROVER_UPLOADS_DIR": str(tmp_path / "uploads-link"),
                           "ROVER_DATA_DIR": str(tmp_path / "var")})
    client = app.test_client()
    assert client.get("/download/a.txt").data == b"a\n"
    _assert_refused(client.get("/download/escape.txt"))
    _assert_refused(client.get("/download/../secret.txt"))


def test_a_fifo_in_the_folder_is_a_404_not_a_hang(client: Any, files: Path) -> None:
    os.mkfifo(files / "pipe")
    _assert_refused(client.get("/download/pipe"))


# -- ranges on the chunked path (no sendfile: the test client has no gunicorn socket) --------------------------

def _ranges(size: int) -> list[tuple[str, int, int]]:
    half = size // 2
    return [
        ("bytes=-500", size - 500, size),  # suffix
        ("bytes=100-", 100, size),  # open-ended
        (f"bytes={half}-{half + 9999}", half, half + 10000),  # ends mid-file, across chunk boundaries
        ("bytes=4000-20000", 4000, 20001),  # several chunks, starting and ending inside one
        ("bytes=4096-8191", 4096, 8192),
        ("bytes=0-0", 0, 1),
        (f"bytes={size - 1}-", size - 1, size),
        (f"bytes=0-{size - 2}", 0, size - 1),  # all but the last byte
        (f"bytes=10-{size * 3}", 10, size),  # an end past the file's: to the end
        ("bytes=-" + str(size * 2), 0, size),  # a suffix longer than the file: all of it
    ]


def _check_ranges(client: Any, url: str, whole: bytes) -> None:
    size = len(whole)
    for range_header, start, stop in _ranges(size):
        response = client.get(url, headers={"Range": range_header})
        assert response.status_code == 206, range_header
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}", range_header
        assert int(response.headers["Content-Length"]) == stop - start, range_header
        body = response.data
        assert len(body) == stop - start, f"{range_header}: {len(body) - (stop - start):+d} bytes"
        assert body == whole[start:stop], range_header
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 50}", "bytes=-0"):
        response = client.get(url, headers={"Range": unsatisfiable})
        assert response.status_code == 416, unsatisfiable
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert response.get_json()["error"] == "range_not_satisfiable"


def test_chunked_ranges_of_a_download_are_byte_exact(tmp_path: Path) -> None:
    from rover_stream.demo import create_demo_app

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    whole = os.urandom(300_000 + 123)
    (uploads / "data.bin").write_bytes(whole)
    app = create_demo_app({"TESTING": True, "ROVER_UPLOADS_DIR": str(uploads), "ROVER_DATA_DIR": str(tmp_path / "var"),
                           "ROVER_FILE_CHUNK_SIZE": 4096})
    _check_ranges(app.test_client(), "/download/data.bin", whole)


def test_chunked_ranges_of_the_rover_image_are_byte_exact(client: Any) -> None:
    """/stream/rover-image: send_file(use_sendfile=False) in 4 KiB chunks."""
    whole = client.get("/stream/rover-image").data
    assert whole[:2] == b"\xff\xd8" and len(whole) > 100_000
    _check_ranges(client, "/stream/rover-image", whole)


# -- rooms: same origin includes the port; a malformed Origin is refused --------------------------------------

def _upgrade(port: int, origin: str | None) -> tuple[int, bytes]:
    """A raw WebSocket upgrade request: the status, and the body of a refusal (nothing for a 101)."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if origin is not None:
        headers["Origin"] = origin
    response = request(port, "/ws/comms/origins?user=x", headers)
    try:
        return response.status, b"" if response.status == 101 else response.body()
    finally:
        response.close()


def _raw_upgrade(port: int, origin: str, host: str) -> tuple[int, bytes]:
    """An upgrade request with our own Host line: the status and the body of a refusal."""
    headers = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": origin}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        lines = ["GET /ws/comms/origins?user=x HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        while len(body) < length and time.monotonic() < deadline:
            more = sock.recv(65536)
            if not more:
                break
            body += more
        return status, body


@pytest.fixture(scope="module")
def rooms_server(module_server: Any) -> Any:
    return module_server()


@pytest.mark.live
def test_an_origin_with_another_port_is_refused_before_the_upgrade(rooms_server: Any) -> None:
    port = rooms_server.port
    other = port + 1 if port < 65535 else port - 1
    for origin in (f"http://127.0.0.1:{other}", f"http://127.0.0.1:{port - 1}", "http://127.0.0.1:80",
                   "http://127.0.0.1", f"https://127.0.0.1:{other}"):
        status, body = _upgrade(port, origin)
        assert status == 403, (origin, status, body[:200])
        assert json.loads(body)["error"] == "origin_not_allowed"


@pytest.mark.live
def test_an_origin_with_the_server_port_is_accepted(rooms_server: Any) -> None:
    port = rooms_server.port
    for origin in (f"http://127.0.0.1:{port}", None):  # same origin; no Origin at all (not a browser)
        status, body = _upgrade(port, origin)
        assert status == 101, (origin, status, body[:200])


@pytest.mark.live
@pytest.mark.parametrize("origin", ["http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://[::1",
                                    "http://127.0.0.1:-1", "http://127.0.0.1:65536"])
def test_an_origin_with_a_bad_port_is_refused_not_a_500(rooms_server: Any, origin: str) -> None:
    status, body = _raw_upgrade(rooms_server.port, origin, f"127.0.0.1:{rooms_server.port}")
    assert status == 403, (status, body[:200])
    assert json.loads(body)["error"] == "origin_not_allowed"


@pytest.mark.live
def test_a_host_with_a_bad_port_is_refused_not_a_500(rooms_server: Any) -> None:
    status, body = _raw_upgrade(rooms_server.port, "http://127.0.0.1:5", "127.0.0.1:99999")
    assert status == 403, (status, body[:200])
    assert json.loads(body)["error"] == "origin_not_allowed"


# -- the slow-client policy, not a timeout, lets go of a frozen subscriber ------------------------------------

POLICY_DEADLINE = 30.0  # seconds: far below the kernel's and SEND_TIMEOUT's 120 s below


@pytest.mark.live
def test_a_frozen_subscriber_is_dropped_by_the_slow_client_policy_before_any_timeout(live_server: Any) -> None:
    """A subscriber that stops reading while publishing goes on is let go when its queue overflows
    (ROVER_SUBSCRIBER_QUEUE_SIZE), after its socket buffers fill: seconds. The heartbeat (whose double is the
    socket's TCP_USER_TIMEOUT) and SEND_TIMEOUT are 60 s and 120 s, so only the policy can drop it within
    POLICY_DEADLINE; and the hub's counter and log line say it was the policy."""
    server = live_server(env={"ROVER_SUBSCRIBER_QUEUE_SIZE": "32", "ROVER_SLOW_CLIENT_POLICY": "disconnect",
                              "ROVER_HEARTBEAT_INTERVAL": "60", "ROVER_SEND_TIMEOUT": "120"})
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect(("127.0.0.1", server.port))
    frozen.sendall(f"GET /realtime/policy HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    fast = [subscribe(server.port, "policy") for _ in range(2)]
    publish = Publisher(server.port)

    def hub() -> dict[str, Any]:
        return get_json(server.port, "/test/state")["hub"]  # type: ignore[no-any-return]

    try:
        assert wait_for(lambda: hub()["subscribers_per_channel"].get("policy") == 3, timeout=10), hub()
        assert hub()["slow_subscribers_disconnected"] == 0
        payload = "x" * 4000
        sent = 0
        started = time.monotonic()
        while hub()["slow_subscribers_disconnected"] == 0:
            assert time.monotonic() - started < POLICY_DEADLINE, \
                f"the slow-client policy did not drop the frozen subscriber in {POLICY_DEADLINE:g} s: {hub()}"
            for _ in range(20):
                publish("policy", {"i": sent, "pad": payload})
                sent += 1
            for reader in fast:  # the others keep reading all along
                reader.events(20, timeout=20)
        state = hub()
        assert state["slow_subscribers_disconnected"] == 1, state  # the frozen one, and only it
        assert state["subscribers_per_channel"].get("policy") == 2, state
        for reader in fast:
            assert [json.loads(e.data)["i"] for e in reader.dispatched] == list(range(sent))
        # The log says why: the hub's drop, by the "disconnect" policy.
        drops = [line for line in server.log().splitlines() if "stream drop" in line]
        assert len(drops) == 1 and "channel=policy" in drops[0] and "policy=disconnect" in drops[0], drops
        # The frozen client, reading again, gets what was already on its way, then the end of its stream (to
        # resume from history with its Last-Event-ID), closed as a slow client.
        frozen.settimeout(1)
        deadline = time.monotonic() + 20
        received = 0
        while True:
            assert time.monotonic() < deadline, f"the dropped stream did not end ({received} bytes read)"
            try:
                chunk = frozen.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += len(chunk)
        assert wait_for(lambda: "reason=slow_client" in server.log(), timeout=5), server.log()[-2000:]
    finally:
        for reader in fast:
            reader.response.close()
        publish.close()
        frozen.close()
