"""Files from disk under gunicorn: sendfile integrity, Range, conditional requests, traversal, symlinks.

The traversal and symlink cases aim at a secret file that really exists next to the uploads folder, so a
guard switched off would serve it; the range cases end before the file's end on both body paths (sendfile
and chunked), and read the connection to its end, so bytes sent past a range's end would be seen.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
from urllib.parse import quote

import pytest

from tests.conftest import need
from tests.wire_helpers import request

pytestmark = pytest.mark.live

SIZE = 24 * 1024 * 1024 + 12345  # well past the first write, not a multiple of any buffer
SECRET = b"TOP-SECRET-" + os.urandom(8).hex().encode() + b"\n"


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
    # A secret beside the uploads folder, and symlinks in the folder: out of it (relative, absolute, a
    # folder) and within it.
    secret = server.uploads.parent / "secret.txt"
    secret.write_bytes(SECRET)
    (server.uploads / "escape.txt").symlink_to("../secret.txt")
    (server.uploads / "abs-escape.txt").symlink_to(secret)
    (server.uploads / "passwd").symlink_to("/etc/passwd")
    (server.uploads / "outside").symlink_to("..", target_is_directory=True)
    (server.uploads / "sub" / "deep-escape.txt").symlink_to("../../secret.txt")
    (server.uploads / "inside.txt").symlink_to("sub/inner.txt")
    (server.uploads / "inside-dir").symlink_to("sub", target_is_directory=True)
    return server


def fetch(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"):  # type: ignore[no-untyped-def]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def fetch_to_eof(port: int, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Raw request with ``Connection: close``: the status, the headers, and every byte after the head until
    the server closes. A body longer than its Content-Length (bytes past a range's end) shows here, where
    http.client would stop at Content-Length."""
    response = request(port, path, {**(headers or {}), "Connection": "close"}, timeout=30)
    data = response.buffer
    try:
        response.sock.settimeout(30)
        while chunk := response.sock.recv(1 << 20):
            data += chunk
    finally:
        response.close()
    return response.status, response.headers, data


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


# -- a real secret beside the folder: traversal and symlinks must not reach it -------------------------------

TRAVERSALS = [
    "/download/../secret.txt", "/download/..%2fsecret.txt", "/download/..%2Fsecret.txt",
    "/download/%2e%2e/secret.txt", "/download/%2E%2E%2Fsecret.txt", "/download/.%2e/secret.txt",
    "/download/%2e%2e%2fsecret.txt", "/download/sub/../../secret.txt", "/download/sub/..%2f..%2fsecret.txt",
    "/download/sub/%2e%2e/%2e%2e/secret.txt", "/download/./../secret.txt", "/download/..//secret.txt",
    "/download/..%5csecret.txt", "/download/..%252fsecret.txt", "/download/%252e%252e/secret.txt",
    "/download/..%00/secret.txt", "/download//{abs}", "/download/%2f{abs_quoted}", "/download/{abs_quoted_all}",
    "/download///{abs}",
    # Back into the folder through "..": the file is inside, yet ".." is refused all the same (the traversal
    # guard, checked on its own: the symlink check would let these through).
    "/download/../uploads/notes.txt", "/download/..%2fuploads%2fnotes.txt", "/download/sub/../../uploads/sub/inner.txt",
]


def _traversal_path(template: str, secret: os.PathLike[str]) -> str:
    absolute = os.fspath(secret)
    return template.format(abs=absolute.lstrip("/"), abs_quoted=quote(absolute.lstrip("/"), safe=""),
                           abs_quoted_all=quote(absolute, safe=""))


def _assert_refused(status: int, head: dict[str, str], body: bytes) -> None:
    for content in (SECRET.strip(), b"root:", b"mission notes", b"inner\n"):
        assert content not in body, body[:300]
    assert status == 404, (status, body[:300])
    assert head.get("content-type", head.get("Content-Type", "")).startswith("application/json")
    assert b'"error":"not_found"' in body or b'"error": "not_found"' in body


@pytest.mark.parametrize("template", TRAVERSALS)
def test_traversal_is_a_404_and_never_serves_what_lies_beside_the_folder(server, template: str) -> None:  # type: ignore[no-untyped-def]
    secret = server.uploads.parent / "secret.txt"
    assert secret.read_bytes() == SECRET  # it is really there: a missing guard would serve it
    status, headers, body = fetch_to_eof(server.port, _traversal_path(template, secret))
    _assert_refused(status, headers, body)


@pytest.mark.parametrize("name", ["escape.txt", "abs-escape.txt", "passwd", "outside/secret.txt",
                                  "outside/uploads/escape.txt", "sub/deep-escape.txt", "inside-dir/deep-escape.txt"])
def test_a_symlink_out_of_the_folder_is_a_404(server, name: str) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch_to_eof(server.port, "/download/" + name)
    _assert_refused(status, headers, body)
    assert f"No file named {name!r}".encode() in body  # the same answer as for a missing file


@pytest.mark.parametrize(("name", "disposition"), [("inside.txt", "inside.txt"), ("inside-dir/inner.txt", "inner.txt"),
                                                   ("outside/uploads/sub/inner.txt", "inner.txt")])
def test_a_symlink_that_stays_in_the_folder_is_served(server, name: str, disposition: str) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, "/download/" + name)
    assert (status, body) == (200, b"inner\n")
    assert headers["Content-Disposition"] == f"attachment; filename={disposition}"


# -- ranges that end before the file's end, on both body paths -----------------------------------------------

@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [
        ("bytes=1000000-3999999", 1000000, 4000000),  # megabytes from the middle: sendfile, ends mid-file
        ("bytes=100-200000", 100, 200001),  # across the first write (64 KiB) into sendfile
        ("bytes=0-65536", 0, 65537),  # the first write, then one byte by sendfile
        (f"bytes={SIZE - 3000000}-{SIZE - 2}", SIZE - 3000000, SIZE - 1),  # all but the last byte
        ("bytes=-500", SIZE - 500, SIZE),  # suffix, small: chunks
        ("bytes=-3000000", SIZE - 3000000, SIZE),  # suffix, large: sendfile
        ("bytes=100-", 100, SIZE),  # open-ended
        ("bytes=0-0", 0, 1),
    ],
)
def test_sendfile_ranges_are_byte_exact_and_stop_at_their_end(server, range_header: str, start: int,  # type: ignore[no-untyped-def]
                                                              stop: int) -> None:
    status, headers, body = fetch_to_eof(server.port, "/download/big.bin", {"Range": range_header})
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert int(headers["content-length"]) == stop - start
    expected = (server.uploads / "big.bin").read_bytes()[start:stop]
    assert len(body) == len(expected), f"{len(body) - len(expected):+d} bytes"  # nothing past the range's end
    assert body == expected


def test_a_range_ending_mid_file_leaves_the_keep_alive_connection_clean(server) -> None:  # type: ignore[no-untyped-def]
    """Bytes sent past a range's end would be read as the next response's status line."""
    original = (server.uploads / "big.bin").read_bytes()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for start, stop in ((2000000, 5000000), (0, 100000), (7, 70007)):
            connection.request("GET", "/download/big.bin", headers={"Range": f"bytes={start}-{stop - 1}"})
            response = connection.getresponse()
            assert response.status == 206 and response.read() == original[start:stop]
        connection.request("GET", "/download/notes.txt")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"mission notes\n")
    finally:
        connection.close()


def test_large_file_range_by_sendfile_stops_at_its_end(server) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = fetch_to_eof(server.port, "/large-file", {"Range": "bytes=0-0"})  # written on first use
    assert status == 206
    whole = (server.uploads.parent / "var" / "large_file.bin").read_bytes()
    start, stop = 1048576 + 3, 5 * 1048576 + 11
    status, headers, body = fetch_to_eof(server.port, "/large-file", {"Range": f"bytes={start}-{stop - 1}"})
    assert status == 206 and headers["content-range"] == f"bytes {start}-{stop - 1}/{len(whole)}"
    assert len(body) == stop - start and body == whole[start:stop]


@pytest.mark.parametrize("range_header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_unsatisfiable_ranges_of_a_large_file_are_416(server, range_header: str) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch_to_eof(server.port, "/download/big.bin", {"Range": range_header})
    assert status == 416
    assert headers["content-range"] == f"bytes */{SIZE}"
    assert b"range_not_satisfiable" in body and len(body) < 1000


def _image_ranges(size: int) -> list[tuple[str, int, int]]:
    half = size // 2
    return [
        ("bytes=-500", size - 500, size),  # suffix
        ("bytes=100-", 100, size),  # open-ended
        (f"bytes={half}-{half + 9999}", half, half + 10000),  # ends mid-file, crosses 4 KiB chunk boundaries
        ("bytes=4000-20000", 4000, 20001),  # starts and ends inside chunks, several chunks between
        ("bytes=4096-8191", 4096, 8192),  # exactly one chunk's worth, not aligned to the file's chunks
        (f"bytes={size - 1}-{size - 1}", size - 1, size),  # the last byte only
        (f"bytes=0-{size - 2}", 0, size - 1),  # all but the last byte
    ]


def test_chunked_file_ranges_are_byte_exact_and_stop_at_their_end(server) -> None:  # type: ignore[no-untyped-def]
    """/stream/rover-image is sent in 4 KiB chunks without sendfile (use_sendfile=False)."""
    status, headers, whole = fetch_to_eof(server.port, "/stream/rover-image")
    assert status == 200 and len(whole) == int(headers["content-length"]) > 100_000
    size = len(whole)
    for range_header, start, stop in _image_ranges(size):
        status, headers, body = fetch_to_eof(server.port, "/stream/rover-image", {"Range": range_header})
        assert status == 206, range_header
        assert headers["content-range"] == f"bytes {start}-{stop - 1}/{size}", range_header
        assert len(body) == stop - start and body == whole[start:stop], range_header
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 50}"):
        status, headers, body = fetch_to_eof(server.port, "/stream/rover-image", {"Range": unsatisfiable})
        assert status == 416 and headers["content-range"] == f"bytes */{size}"
