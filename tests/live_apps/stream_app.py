"""A test app: the real rover_stream app plus routes that misbehave on purpose.

Served by gunicorn in the live tests (``stream_app:app`` with ``--pythonpath tests/live_apps``). Module
level state is per worker process, which the tests run one of.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import jsonify, request

import rover_stream as rs
from rover_stream.runtime import get_runtime

if rs.settings.load()["DEMO"]:  # the demo too, as wsgi.py does: several tests use its routes
    from rover_stream.demo import create_demo_app

    app = create_demo_app()
else:
    app = rs.create_app()

#: How many SSE/writer generators have run their ``finally`` (i.e. were cleaned up), by route.
cleaned: dict[str, int] = {"idle": 0, "writer": 0}


@app.get("/test/state")
def state() -> Any:
    runtime = get_runtime()
    return jsonify(cleaned=cleaned, hub=runtime.hub.stats(), **runtime.stats())


@app.get("/test/idle-sse")
def idle_sse() -> Any:
    """One event, then the generator blocks forever on an event nobody sets (a subscriber with no news)."""

    def generate() -> Any:
        try:
            yield rs.Event(data="hello", id=1)
            threading.Event().wait()
        finally:
            cleaned["idle"] += 1

    return rs.sse_response(generate())


@app.get("/test/broken-csv")
def broken_csv() -> Any:
    """Rows, then an exception mid-stream."""
    fail_after = int(request.args.get("rows", "1000"))

    def rows() -> Any:
        for i in range(fail_after):
            yield (i, f"row-{i}")
        raise RuntimeError("database went away")

    return rs.csv_response(rows(), header=("id", "name"))


@app.get("/test/writer")
def writer() -> Any:
    """The writer form: lines written one at a time with a pause, cleaned up when the client leaves."""
    count = int(request.args.get("lines", "5"))
    pause = float(request.args.get("pause", "0.3"))
    response = rs.StreamingResponse(content_type="text/plain; charset=utf-8")

    @response.writer
    def produce(w: rs.StreamingWriter) -> None:
        try:
            for i in range(count):
                w.write(f"line {i} at {time.time():.3f}\n")
                time.sleep(pause)
        finally:
            cleaned["writer"] += 1

    return response


@app.get("/test/slow-writer-fails")
def slow_writer_fails() -> Any:
    response = rs.StreamingResponse(content_type="text/plain")

    @response.writer
    def produce(w: rs.StreamingWriter) -> None:
        w.write("partial data\n" * 100)
        time.sleep(0.2)
        raise OSError("disk read error")

    return response


@app.get("/test/burst")
def burst() -> Any:
    """``n`` events produced as fast as possible, then the generator ends."""
    count = int(request.args.get("n", "500"))
    return rs.sse_response(rs.Event(id=i, data=f"event {i}") for i in range(count))


@app.get("/test/tail")
def tail() -> Any:
    """A plain (non-SSE) stream whose generator blocks forever after its first line, like `tail -f`."""

    def generate() -> Any:
        yield "first line\n"
        threading.Event().wait()

    return rs.StreamingResponse(generate(), content_type="text/plain")


@app.post("/test/room-broadcast/<room>")
def room_broadcast(room: str) -> Any:
    """Publish a message of ``size`` characters into a room (larger than clients may send)."""
    size = int(request.args.get("size", "10"))
    result = rs.publish(f"room.{room}", {"type": "message", "room": room, "user": "server", "text": "z" * size})
    return jsonify(id=result.message.id, subscribers=result.subscribers)
