"""The seeds' first example routes, written as plain ``def`` views on the public API."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, render_template, request

import rover_stream as rs

from .rover_image import ensure_rover_image

demo = Blueprint("demo", __name__)

#: Most rows /csv and /json-stream produce on request (?rows=N), to keep a typo from running for hours.
MAX_ROWS = 10_000_000


def _int_arg(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        raise rs.ApiError(f"Query parameter {name!r} must be an integer from 0 to {maximum}, not {raw!r}.",
                          code="invalid_parameter")
    return value


def _float_arg(name: str, default: float, maximum: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise rs.ApiError(f"Query parameter {name!r} must be a number from 0 to {maximum:g}, not {raw!r}.",
                          code="invalid_parameter")
    return value


@demo.get("/")
def index() -> Any:
    return render_template("index.html")


@demo.get("/events")
def events() -> Any:
    """An event with an id every second (?interval= seconds); resumes after Last-Event-ID."""
    interval = _float_arg("interval", 1.0, 60.0)
    last = rs.last_event_id()
    start = int(last) + 1 if last is not None and last.isascii() and last.isdigit() else 0

    def generate() -> Any:
        for n in itertools.count(start):
            yield rs.Event(id=n, data={"id": n, "message": f"Event {n}", "timestamp": time.time()})
            time.sleep(interval)

    return rs.sse_response(generate())


@demo.get("/stream/count")
@demo.get("/stream")
def count() -> Any:
    """The plain-text counter of the streaming guide: ``Count: N`` lines, ten a second."""
    rows = _int_arg("n", 10, 100_000)

    def generate() -> Any:
        for i in range(rows):
            yield f"Count: {i}\n"
            time.sleep(0.1)

    return rs.StreamingResponse(generate(), content_type="text/plain; charset=utf-8")


@demo.get("/csv")
def csv_download() -> Any:
    """``data.csv``: id,name,value rows (?rows=N, ?delay= seconds between rows)."""
    rows = _int_arg("rows", 100, MAX_ROWS)
    delay = _float_arg("delay", 0.0, 1.0)

    def generate() -> Any:
        for i in range(rows):
            yield (i, f"item-{i}", i * 10)
            if delay:
                time.sleep(delay)

    return rs.csv_response(generate(), header=("id", "name", "value"), filename="data.csv")


@demo.get("/json-stream")
def json_stream() -> Any:
    """NDJSON records: id, timestamp, value (?rows=N)."""
    rows = _int_arg("rows", 50, MAX_ROWS)
    return rs.ndjson_response({"id": i, "timestamp": time.time(), "value": i * 3.14159} for i in range(rows))


@demo.get("/stream/rover-image")
def rover_image() -> Any:
    """The rover camera's JPEG, streamed from disk in IMAGE_CHUNK_SIZE chunks (4 KiB), with Range."""
    data_dir = Path(current_app.config["ROVER_DATA_DIR"])
    # The first request renders the image (about 2 s of CPU): off the event loop, so streams go on.
    path = rs.run_blocking(ensure_rover_image, data_dir)
    return rs.send_file(path, mimetype="image/jpeg", use_sendfile=False,
                        chunk_size=current_app.config["ROVER_IMAGE_CHUNK_SIZE"])


@demo.get("/download/<path:filename>", merge_slashes=False)  # "//etc/passwd" is a 404, not a redirect
def download(filename: str) -> Any:
    """Files from the uploads folder: 404 JSON when missing, Content-Disposition, Range, conditional."""
    return rs.send_from_directory(current_app.config["ROVER_UPLOADS_DIR"], filename, as_attachment=True)
