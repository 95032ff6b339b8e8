"""CSV, NDJSON, plain and writer streams against a real gunicorn: exact rows, batching, incremental
delivery, and errors mid-stream that look like the failed transfers they are."""

from __future__ import annotations

import csv
import http.client
import io
import json
import subprocess
import time

import pytest

from tests.conftest import need
from tests.wire_helpers import get_json, request, wait_for

pytestmark = pytest.mark.live


@pytest.fixture
def server(live_server):  # type: ignore[no-untyped-def]
    return live_server(env={"ROVER_FLUSH_INTERVAL": "0.05"})


@pytest.fixture
def get(server):  # type: ignore[no-untyped-def]
    """``get(path)``: an http.client response from the server; connections are closed after the test."""
    connections: list[http.client.HTTPConnection] = []

    def get(path: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connections.append(connection)
        connection.request("GET", path)
        return connection.getresponse()

    yield get
    for connection in connections:
        connection.close()


def test_csv_parses_back_to_exactly_the_rows_sent(server) -> None:  # type: ignore[no-untyped-def]
    rows = 100_000
    response = request(server.port, f"/csv?rows={rows}")
    assert response.status == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == "attachment; filename=data.csv"
    while response.read_chunk(timeout=30) not in (b"", None):
        pass
    assert response.ended, "the terminating chunk did not arrive"
    parsed = list(csv.reader(io.StringIO(b"".join(response.chunks).decode(), newline="")))
    assert parsed[0] == ["id", "name", "value"]
    assert parsed[1:] == [[str(i), f"item-{i}", str(i * 10)] for i in range(rows)]
    # Rows travel in batches of tens of KiB, not one write per row.
    assert len(response.chunks) < rows / 500
    assert max(len(c) for c in response.chunks) >= 32 * 1024
    response.close()


def test_ndjson_parses_back(get) -> None:  # type: ignore[no-untyped-def]
    response = get("/json-stream?rows=5000")
    assert response.getheader("Content-Type") == "application/x-ndjson"
    records = [json.loads(line) for line in response.read().decode().splitlines()]
    assert [r["id"] for r in records] == list(range(5000))
    assert records[3]["value"] == pytest.approx(3 * 3.14159)


def test_slow_rows_arrive_while_the_export_runs(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/csv?rows=6&delay=0.3")
    arrivals = []
    body = b""
    while (chunk := response.read_chunk(timeout=5)) not in (b"", None):
        arrivals.append(time.monotonic())
        body += chunk
    assert body.count(b"\r\n") == 7
    assert arrivals[-1] - arrivals[0] >= 1.0, "rows were held back until the end"
    response.close()


def test_plain_counter_streams_incrementally(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/stream/count?n=5")
    first = response.read_chunk()
    assert first == b"Count: 0\n"
    rest = b""
    while (chunk := response.read_chunk()) not in (b"", None):
        rest += chunk
    assert rest == b"Count: 1\nCount: 2\nCount: 3\nCount: 4\n"
    response.close()


def test_writer_form_streams_while_writing_and_cleans_up(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/test/writer?lines=40&pause=0.1")
    first = response.read_chunk()
    received_at = time.time()
    assert first is not None and first.startswith(b"line 0 at ")
    written_at = float(first.split()[3])
    assert received_at - written_at < 0.5, "a written line waited for more"
    response.read_chunk()
    response.close()  # leave while the writer is still writing
    state = wait_for(lambda: (s := get_json(server.port, "/test/state"))["cleaned"]["writer"] == 1 and s,
                     timeout=5)
    assert state and state["open_streams"] == 0


@pytest.mark.parametrize("path", ["/test/broken-csv?rows=20000", "/test/slow-writer-fails"])
def test_error_mid_stream_is_a_failed_transfer_for_curl(server, path: str) -> None:  # type: ignore[no-untyped-def]
    curl = need("curl")
    result = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{size_download}", server.url + path],
                            capture_output=True, text=True, timeout=30)
    # 18: partial file; 56: failure receiving data (chunked body cut before its last chunk).
    assert result.returncode in (18, 56), (result.returncode, result.stderr)
    assert int(result.stdout) > 0  # data did flow before the failure


def test_error_mid_stream_is_an_incomplete_read_for_python(server, get) -> None:  # type: ignore[no-untyped-def]
    response = get("/test/broken-csv?rows=20000")
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    assert "database went away" in server.log()  # logged for the operator
