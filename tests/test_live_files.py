"""Files from disk under gunicorn: sendfile integrity, Range, conditional requests, traversal."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess

import pytest

from tests.conftest import need
from tests.wire_helpers import request

pytestmark = pytest.mark.live

SIZE = 24 * 1024 * 1024 + 12345  # well past the first write, not a multiple of any buffer


@pytest.fixture(scope="module")
def server(module_server):  # type: ignore[no-untyped-def]
    server = module_server()
    block = os.urandom(1 << 20)
    with open(server.uploads / "big.bin", "wb") as f:
        for _ in range(SIZE >> 20):
            f.write(block)
        f.write(block[: SIZE & ((1 << 20) - 1)])
    (server.uploads / "notes.txt").write_text("mission notes\n")
    (server.uploads / "sub").mkdir()
    (server.uploads / "sub" / "inner.txt").write_text("inner\n")
    return server


def fetch(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"):  # type: ignore[no-untyped-def]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_large_download_is_byte_exact(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/download/big.bin")
    assert status == 200
    assert int(headers["Content-Length"]) == SIZE == len(body)
    assert hashlib.sha256(body).digest() == hashlib.sha256((server.uploads / "big.bin").read_bytes()).digest()
    assert headers["Content-Disposition"] == "attachment; filename=big.bin"
    assert headers["Accept-Ranges"] == "bytes"


def test_keep_alive_survives_a_sendfile_download(server) -> None:  # type: ignore[no-untyped-def]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(2):
        connection.request("GET", "/download/big.bin")
        assert len(connection.getresponse().read()) == SIZE
    connection.request("GET", "/download/notes.txt")
    assert connection.getresponse().read() == b"mission notes\n"
    connection.close()


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=10000000-", 10000000, SIZE), ("bytes=-5000", SIZE - 5000, SIZE),
     (f"bytes=100-{SIZE * 2}", 100, SIZE)],
)
def test_range_requests(server, range_header: str, start: int, end: int) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/download/big.bin", {"Range": range_header})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert body == (server.uploads / "big.bin").read_bytes()[start:end]


def test_unsatisfiable_range_is_416(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/download/notes.txt", {"Range": "bytes=500-600"})
    assert status == 416
    assert headers["Content-Range"] == "bytes */14"
    assert b"range_not_satisfiable" in body


def test_if_range_with_a_stale_etag_sends_the_whole_file(server) -> None:  # type: ignore[no-untyped-def]
    status, _, body = fetch(server.port, "/download/notes.txt", {"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert status == 200 and body == b"mission notes\n"


def test_conditional_get_is_304(server) -> None:  # type: ignore[no-untyped-def]
    _, headers, _ = fetch(server.port, "/download/notes.txt")
    status, headers_304, body = fetch(server.port, "/download/notes.txt", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    assert headers_304["ETag"] == headers["ETag"]
    status, _, _ = fetch(server.port, "/download/notes.txt", {"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304
    (server.uploads / "notes.txt").write_text("changed notes\n")
    try:
        status, _, body = fetch(server.port, "/download/notes.txt", {"If-None-Match": headers["ETag"]})
        assert status == 200 and body == b"changed notes\n"
    finally:
        (server.uploads / "notes.txt").write_text("mission notes\n")


def test_head_sends_headers_only(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/download/big.bin", method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == SIZE and body == b""


@pytest.mark.parametrize(
    "path",
    ["/download/../setup.cfg", "/download/..%2fsetup.cfg", "/download/%2e%2e/setup.cfg",
     "/download/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/download//etc/passwd", "/download/%2fetc%2fpasswd",
     "/download/sub/../../setup.cfg", "/download/missing.txt", "/download/sub"],
)
def test_nothing_outside_the_folder_and_missing_is_json_404(server, path: str) -> None:  # type: ignore[no-untyped-def]
    # Raw request line: http.client and curl would normalise some of these paths away.
    response = request(server.port, path)
    body = response.body()
    response.close()
    assert response.status == 404, body
    assert b'"error":"not_found"' in body or b'"error": "not_found"' in body


def test_subfolder_file_is_served(server) -> None:  # type: ignore[no-untyped-def]
    assert fetch(server.port, "/download/sub/inner.txt")[2] == b"inner\n"


def test_curl_resumes_a_partial_download(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    curl = need("curl")
    original = (server.uploads / "big.bin").read_bytes()
    target = tmp_path / "partial.bin"
    target.write_bytes(original[: SIZE // 3])
    subprocess.run([curl, "-sSf", "-C", "-", "-o", str(target), server.url + "/download/big.bin"],
                   check=True, timeout=60)
    assert target.read_bytes() == original


def test_rover_image_streams_as_jpeg_with_length_and_range(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/stream/rover-image")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert int(headers["Content-Length"]) == len(body) > 1_000_000
    assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"
    status, headers, part = fetch(server.port, "/stream/rover-image", {"Range": "bytes=1000-1999"})
    assert status == 206 and part == body[1000:2000]


def test_sendfile_is_used_behind_a_tls_terminating_proxy(server) -> None:  # type: ignore[no-untyped-def]
    """nginx sends X-Forwarded-Proto: https; the hop from nginx to us is still plain HTTP."""
    status, _, body = fetch(server.port, "/download/big.bin", {"X-Forwarded-Proto": "https"})
    assert status == 200 and len(body) == SIZE
    # gunicorn's access log counts only what went through its own writes: the first 64 KiB.
    assert '"GET /download/big.bin HTTP/1.1" 200 65536 ' in server.log()
