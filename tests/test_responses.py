"""Flask test-client unit tests of the responses (producers run in real threads here, not greenlets)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask

import rover_stream as rs
from rover_stream.runtime import get_runtime
from rover_stream.wire.sse_parser import EventStreamParser


def read_until(response: Any, needle: bytes, timeout: float = 3.0) -> bytes:
    """Iterate a streamed test-client response until ``needle`` arrived (never read .data: endless)."""
    data = b""
    deadline = time.monotonic() + timeout
    for chunk in response.response:
        data += chunk
        if needle in data or time.monotonic() > deadline:
            break
    return data


def test_sse_headers_retry_and_events(app: Flask, client: Any) -> None:
    @app.get("/sse")
    def sse() -> Any:
        return rs.sse_response([rs.Event(data="a", id=0), {"event": "x", "data": [1]}, "plain"], retry=1234)

    response = client.get("/sse", buffered=False)
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    body = b"".join(response.response)
    response.close()
    parser = EventStreamParser()
    events = parser.feed(body)
    assert body.startswith(b"retry: 1234\n\n")
    assert [(e.event, e.data, e.last_event_id) for e in events] == [
        ("message", "a", "0"), ("x", "[1]", "0"), ("message", "plain", "0")]
    assert get_runtime(app).open_streams == 0


def test_heartbeat_while_generator_blocks_and_finally_runs_on_close(app: Flask, client: Any) -> None:
    cleaned = threading.Event()
    release = threading.Event()

    @app.get("/idle")
    def idle() -> Any:
        def generate() -> Any:
            try:
                yield "first"
                release.wait()
                yield "after release"
            finally:
                cleaned.set()

        return rs.sse_response(generate())

    response = client.get("/idle", buffered=False)
    data = read_until(response, b": ping\n\n: ping\n\n")
    assert data.count(b": ping") >= 2 and b"data: first" in data
    assert get_runtime(app).open_streams == 1
    response.close()  # the client leaves
    assert get_runtime(app).open_streams == 0
    release.set()  # a thread cannot be killed: it stops at its next hand-off
    assert cleaned.wait(3), "the generator's finally did not run"


def test_last_event_id_header_and_query(app: Flask, client: Any) -> None:
    @app.get("/last")
    def last() -> Any:
        return {"last": rs.last_event_id()}

    assert client.get("/last", headers={"Last-Event-ID": "17"}).json == {"last": "17"}
    assert client.get("/last?last_event_id=9").json == {"last": "9"}
    assert client.get("/last").json == {"last": None}


def test_bad_event_from_generator_aborts_the_stream(app: Flask, client: Any) -> None:
    @app.get("/bad")
    def bad() -> Any:
        return rs.sse_response(iter([rs.Event(data="ok"), rs.Event(data="x", id="a\nb")]))

    response = client.get("/bad", buffered=False)
    with pytest.raises(rs.StreamAborted, match="EncodeError"):
        b"".join(response.response)
    response.close()


def test_stream_cap_refuses_with_503_json(tmp_path: Any) -> None:
    app = rs.create_app({"ROVER_MAX_STREAMS": 1, "ROVER_DEMO": False, "ROVER_RETRY_MS": 7000})

    @app.get("/sse")
    def sse() -> Any:
        return rs.sse_response(iter(()))

    client = app.test_client()
    first = client.get("/sse", buffered=False)
    second = client.get("/sse")
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "7"
    assert second.json is not None and second.json["error"] == "too_many_streams"
    first.close()
    third = client.get("/sse", buffered=False)
    assert third.status_code == 200
    third.close()


def test_shutdown_ends_sse_with_final_event_and_refuses_new_streams(app: Flask, client: Any) -> None:
    @app.get("/forever")
    def forever() -> Any:
        return rs.sse_response(iter(threading.Event().wait, True))

    @app.get("/plain")
    def plain() -> Any:
        return rs.StreamingResponse(iter(["x"]))

    response = client.get("/forever", buffered=False)
    chunks = response.response
    assert next(chunks).startswith(b"retry:")
    get_runtime(app).begin_shutdown()
    rest = b"".join(chunks)
    assert b"event: shutdown\nretry: 1000\n" in rest
    response.close()
    # An EventSource reconnecting on a kept-alive connection must not get a 503 (it would stop for good):
    # it gets the final event with its retry hint, and reconnects elsewhere.
    again = client.get("/forever")
    assert again.status_code == 200 and b"event: shutdown\nretry: 1000\n" in again.data
    assert get_runtime(app).open_streams == 0
    refused = client.get("/plain")
    assert refused.status_code == 503 and refused.json["error"] == "shutting_down"


def test_writer_inline_form_of_the_seed(app: Flask, client: Any) -> None:
    @app.get("/csv")
    def csv_view() -> Any:
        response = rs.StreamingResponse(content_type="text/csv",
                                        headers={"Content-Disposition": "attachment; filename=data.csv"})
        with response.writer() as writer:
            writer.write("id,name,value\n")
            for i in range(100):
                writer.write(f"{i},item-{i},{i * 10}\n")
        return response

    response = client.get("/csv")
    assert response.data.decode().splitlines()[100] == "99,item-99,990"
    assert response.headers["Content-Disposition"] == "attachment; filename=data.csv"


def test_seed_streaming_writer_class(app: Flask, client: Any) -> None:
    @app.get("/w")
    def w() -> Any:
        response = rs.StreamingResponse(content_type="text/csv")
        writer = rs.StreamingWriter(response)
        writer.write("a\n")
        writer.write(b"b\n")
        writer.close()
        return response

    assert client.get("/w").data == b"a\nb\n"


def test_inline_writer_that_writes_too_much_gets_a_clear_error(app: Flask, client: Any) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/big")
    def big() -> Any:
        response = rs.StreamingResponse(content_type="text/plain")
        with response.writer() as writer:
            for _ in range(100_000):
                writer.write("x" * 100)
        return response

    with pytest.raises(rs.RoverStreamError, match="@response.writer"):
        client.get("/big")


def test_writer_function_form_streams_with_backpressure(app: Flask, client: Any) -> None:
    progress: list[int] = []

    @app.get("/live")
    def live() -> Any:
        response = rs.StreamingResponse(content_type="application/octet-stream")

        @response.writer
        def produce(w: rs.StreamingWriter) -> None:
            for i in range(2000):
                w.write(b"x" * 4096)
                progress.append(i)

        return response

    response = client.get("/live", buffered=False)
    chunks = iter(response.response)
    first = next(chunks)
    time.sleep(0.3)  # the client stalls: the writer must block, not buffer 8 MB
    written = len(progress) * 4096
    limit = app.config["ROVER_WRITE_BATCH_BYTES"] * 5
    assert written - len(first) <= limit, f"the writer ran {written} bytes ahead"
    total = len(first) + sum(len(c) for c in chunks)
    assert total == 2000 * 4096
    response.close()


def test_csv_and_ndjson_responses(app: Flask, client: Any) -> None:
    @app.get("/c")
    def c() -> Any:
        return rs.csv_response([(1, "a,b")], header=("n", "s"), filename="x.csv")

    @app.get("/n")
    def n() -> Any:
        return rs.ndjson_response([{"a": 1}], filename="x.ndjson")

    response = client.get("/c")
    assert response.data == b'n,s\r\n1,"a,b"\r\n'
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == "attachment; filename=x.csv"
    response = client.get("/n")
    assert response.data == b'{"a":1}\n'
    assert response.headers["Content-Type"] == "application/x-ndjson"


def test_files_through_the_test_client(app: Flask, client: Any) -> None:
    uploads = app.config["ROVER_UPLOADS_DIR"]
    with open(f"{uploads}/f.txt", "wb") as f:
        f.write(b"0123456789")
    response = client.get("/download/f.txt")
    assert response.data == b"0123456789" and response.headers["Content-Length"] == "10"
    assert client.get("/download/f.txt", headers={"Range": "bytes=2-4"}).data == b"234"
    assert client.get("/download/f.txt", headers={"Range": "bytes=2-3,5-6"}).status_code == 200
    etag = response.headers["ETag"]
    assert client.get("/download/f.txt", headers={"If-None-Match": etag}).status_code == 304
    missing = client.get("/download/nope.txt")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"


def test_errors_are_json(client: Any) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json["error"] == "not_found" and response.json["status"] == 404
    response = client.post("/health")
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"
    response = client.get("/csv?rows=lots")
    assert response.status_code == 400 and "rows" in response.json["message"]


def test_health(client: Any) -> None:
    body = client.get("/health").json
    assert body["status"] == "healthy" and body["open_streams"] == 0 and body["max_streams"] == 900


def test_a_view_that_fails_after_creating_a_stream_leaks_nothing(app: Flask, client: Any) -> None:
    import inspect

    generators: list[Any] = []

    def events() -> Any:
        yield "never sent"

    @app.get("/fails")
    def fails() -> Any:
        generators.append(events())
        rs.sse_response(generators[-1])
        raise rs.ApiError("something else went wrong")

    @app.get("/file-thrown-away")
    def file_thrown_away() -> Any:
        rs.send_from_directory(app.config["ROVER_UPLOADS_DIR"], "f.txt")
        return {"ok": True}

    with open(f"{app.config['ROVER_UPLOADS_DIR']}/f.txt", "w") as f:
        f.write("x")
    import os

    # A first round opens what lives as long as the process (the metrics' files, producers): not a leak.
    assert client.get("/fails").status_code == 400
    assert client.get("/file-thrown-away").status_code == 200
    get_runtime(app).metrics.sync()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert client.get("/fails").status_code == 400
        assert client.get("/file-thrown-away").status_code == 200
    get_runtime(app).metrics.sync()
    assert get_runtime(app).open_streams == 0
    assert {inspect.getgeneratorstate(g) for g in generators} == {inspect.GEN_CLOSED}
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_inline_writer_error_releases_its_slot(app: Flask, client: Any) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/big")
    def big() -> Any:
        response = rs.StreamingResponse(content_type="text/plain")
        with response.writer() as writer:
            for _ in range(100_000):
                writer.write("x" * 100)
        return response

    assert client.get("/big").status_code == 500
    assert get_runtime(app).open_streams == 0


def test_head_closes_a_generator_that_never_runs(app: Flask, client: Any) -> None:
    import inspect

    generators: list[Any] = []

    @app.get("/gen")
    def gen() -> Any:
        def events() -> Any:
            yield "x"

        generators.append(events())
        return rs.sse_response(generators[-1])

    response = client.head("/gen")
    assert response.status_code == 200 and response.data == b""
    response.close()  # what every WSGI server does with a body, iterated or not
    assert inspect.getgeneratorstate(generators[0]) == inspect.GEN_CLOSED
    assert get_runtime(app).open_streams == 0


def test_current_app_works_in_generators_and_writers(app: Flask, client: Any) -> None:
    from flask import current_app

    @app.get("/ctx-sse")
    def ctx_sse() -> Any:
        def events() -> Any:
            yield current_app.config["ROVER_UPLOADS_DIR"]

        return rs.sse_response(events())

    @app.get("/ctx-writer")
    def ctx_writer() -> Any:
        response = rs.StreamingResponse(content_type="text/plain")

        @response.writer
        def write(w: rs.StreamingWriter) -> None:
            w.write(current_app.config["ROVER_UPLOADS_DIR"])

        return response

    uploads = app.config["ROVER_UPLOADS_DIR"].encode()
    assert uploads in b"".join(client.get("/ctx-sse", buffered=False).response)
    assert client.get("/ctx-writer").data == uploads


def test_fast_writer_output_is_batched(app: Flask, client: Any) -> None:
    @app.get("/many")
    def many() -> Any:
        response = rs.StreamingResponse(content_type="text/plain")

        @response.writer
        def write(w: rs.StreamingWriter) -> None:
            for i in range(20_000):
                w.write(f"line {i}\n")

        return response

    response = client.get("/many", buffered=False)
    chunks = list(response.response)
    response.close()
    assert b"".join(chunks).count(b"\n") == 20_000
    assert len(chunks) < 200, f"{len(chunks)} writes for 20,000 lines: not batched"


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        pytest.param({"Range": "bytes=-500"}, 206, b"0123456789", id="suffix-longer-than-file"),
        pytest.param({"Range": "bytes=-3"}, 206, b"789", id="suffix"),
        pytest.param({"Range": "items=0-3"}, 200, b"0123456789", id="unknown-unit-ignored"),
        pytest.param({"Range": "bytes=5-2"}, 200, b"0123456789", id="invalid-range-ignored"),
        pytest.param({"Range": "bytes=10-"}, 416, None, id="start-at-end"),
        pytest.param({"If-Match": '"other"'}, 412, None, id="if-match-mismatch"),
        pytest.param({"If-Match": "*"}, 200, b"0123456789", id="if-match-star"),
        pytest.param({"If-None-Match": "*"}, 304, b"", id="if-none-match-star"),
        pytest.param({"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 412, None, id="unmodified-since"),
        pytest.param({"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200, b"0123456789",
                     id="modified-since-old-date"),
    ],
)
def test_file_conditions_and_ranges(app: Flask, client: Any, headers: dict[str, str], status: int,
                                    body: bytes | None) -> None:
    with open(f"{app.config['ROVER_UPLOADS_DIR']}/f.txt", "wb") as f:
        f.write(b"0123456789")
    response = client.get("/download/f.txt", headers=headers)
    assert response.status_code == status, response.data
    if body is not None:
        assert response.data == body
    else:
        assert response.json["status"] == status


def test_if_range_needs_a_strong_current_etag(app: Flask, client: Any) -> None:
    with open(f"{app.config['ROVER_UPLOADS_DIR']}/f.txt", "wb") as f:
        f.write(b"0123456789")
    etag = client.get("/download/f.txt").headers["ETag"]
    assert client.get("/download/f.txt", headers={"Range": "bytes=0-1", "If-Range": etag}).data == b"01"
    weak = client.get("/download/f.txt", headers={"Range": "bytes=0-1", "If-Range": "W/" + etag})
    assert weak.status_code == 200 and weak.data == b"0123456789"
    with_etag = client.get("/download/f.txt", headers={"If-None-Match": "W/" + etag})
    assert with_etag.status_code == 304  # If-None-Match compares weakly


def test_room_joins_are_refused_before_the_upgrade_when_the_worker_stops_or_is_full(app: Flask) -> None:
    """A refusal must come as an HTTP answer before the 101: after it, the client would read the HTTP
    answer as WebSocket frames (a CI run saw exactly that during a restart: 101, then a 503)."""
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Test": "1"}
    import socket

    runtime = get_runtime(app)
    runtime.shutting_down = True
    sock = socket.socket()  # what gunicorn would hand over (the upgrade is refused before using it)
    overrides = {"gunicorn.socket": sock}
    try:
        answer = app.test_client().get("/ws/comms/science?user=ada", headers=upgrade, environ_overrides=overrides)
        assert answer.status_code == 503 and answer.get_json()["error"] == "shutting_down"
        assert int(answer.headers["Retry-After"]) >= 1
    finally:
        runtime.shutting_down = False
    max_streams, runtime.max_streams = runtime.max_streams, 0
    try:
        answer = app.test_client().get("/ws/comms/science?user=ada", headers=upgrade, environ_overrides=overrides)
        assert answer.status_code == 503 and answer.get_json()["error"] == "too_many_streams"
    finally:
        runtime.max_streams = max_streams
        sock.close()
