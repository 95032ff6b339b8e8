"""The Cosmic Rover tutorial's and the synchronous streaming page's example routes, written as plain
``def`` views on the public API."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request

import rover_stream as rs

from . import live
from .assets import asset_folder, write_once
from .rover_image import ensure_rover_image

#: The dashboard's page and files: /static/ is the demo's (the app built by create_app() has no static
#: folder of its own).
demo = Blueprint("demo", __name__, template_folder=str(asset_folder("templates")),
                 static_folder=str(asset_folder("static")), static_url_path="/static")

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


ENDPOINTS = {
    "dashboard": "/",
    "rover_image": "/stream/rover-image",
    "rover_telemetry": "/stream/rover-telemetry",
    "comms": "/ws/comms/{team_channel}",
    "stream": "/stream",
    "events": "/events",
    "live_metrics": "/live-metrics",
    "metrics": "/metrics",
    "realtime": "/realtime/{channel}",
    "broadcast_api": "/api/broadcast",
    "broadcast_stream": "/broadcast-stream",
    "broadcast": "/broadcast",
    "chat": "/chat/{username}",
    "chat_send": "/chat/send",
    "analytics": "/analytics-stream",
    "managed": "/managed-stream",
    "process": "/process-stream",
    "large_dataset": "/large-dataset",
    "health_monitored": "/health-monitored-stream",
    "count": "/stream/count",
    "csv": "/csv",
    "json_stream": "/json-stream",
    "large_file": "/large-file",
    "download": "/download/{filename}",
    "stream_stats": "/admin/stream-stats",
    "health": "/health",
}


def _counters() -> live.Counters:
    return current_app.extensions["rover_demo_counters"]  # type: ignore[no-any-return]


@demo.get("/")
def index() -> Any:
    """The dashboard for browsers; the SSE API's JSON status document for clients that ask for JSON."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"], default="text/html")
    if best == "application/json" and request.accept_mimetypes["application/json"] > \
            request.accept_mimetypes["text/html"]:
        stats = rs.streaming_stats()
        return jsonify(status="running", clients=stats.active_streams, endpoints=ENDPOINTS)
    visitor, new = live.visitor_id()
    _counters().count_page_view(visitor)
    response = current_app.make_response(render_template("index.html"))
    response.headers["Vary"] = "Accept"
    if new:
        response.set_cookie(live.VISITOR_COOKIE, visitor, max_age=365 * 86400, httponly=True, samesite="Lax")
    return response


@demo.get("/events")
def events() -> Any:
    """An event with an id every second (?interval= seconds); resumes after Last-Event-ID."""
    interval = _float_arg("interval", 1.0, 60.0)
    last = rs.last_event_number()
    start = last + 1 if last is not None else 0

    def generate() -> Any:
        for n in itertools.count(start):
            yield rs.Event(id=n, data={"id": n, "message": f"Event {n}", "timestamp": time.time()})
            time.sleep(interval)

    return rs.sse_response(generate())


@demo.get("/stream/count")
def count() -> Any:
    """The plain-text counter of the synchronous streaming page: ``Count: N`` lines, ten a second."""
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
    data_dir = rs.get_runtime().settings.data_dir
    # The first request renders the image (about 2 s of CPU): off the event loop, so streams go on.
    path = rs.run_blocking(ensure_rover_image, data_dir)
    return rs.send_file(path, mimetype="image/jpeg", use_sendfile=False,
                        chunk_size=current_app.config["ROVER_IMAGE_CHUNK_SIZE"])


@demo.get("/download/<path:filename>", merge_slashes=False)  # "//etc/passwd" is a 404, not a redirect
def download(filename: str) -> Any:
    """Files from the uploads folder: 404 JSON when missing, Content-Disposition, Range, conditional."""
    return rs.send_from_directory(rs.get_runtime().settings.uploads_dir, filename, as_attachment=True)


#: Size of the file /large-file serves (generated once in ROVER_DATA_DIR).
LARGE_FILE_BYTES = 32 * 1024 * 1024


def ensure_large_file(directory: Path) -> Path:
    """``large_file.bin``: LARGE_FILE_BYTES of pseudo-random bytes, written once (atomically: several
    workers may race to write it)."""
    path = directory / "large_file.bin"
    if path.exists() and path.stat().st_size == LARGE_FILE_BYTES:
        return path
    seed = hashlib.sha256(b"rover_stream large file").digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))  # 64 KiB
    return write_once(path, block, LARGE_FILE_BYTES // len(block))


@demo.get("/large-file")
def large_file() -> Any:
    """A 32 MiB binary file, sent with sendfile, Content-Length and Range (the page's backpressure example:
    the server sends as fast as the client takes, and no faster)."""
    path = rs.run_blocking(ensure_large_file, rs.get_runtime().settings.data_dir)
    return rs.send_file(path, mimetype="application/octet-stream", as_attachment=True,
                        download_name="large_file.bin")
