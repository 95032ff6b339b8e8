"""The plain-Flask peer for ``bench/downloads.py``: ``GET /download/<filename>`` answered by Flask's own
``send_from_directory`` (werkzeug's file wrapper; gunicorn's sendfile path when the server offers one).

Run under the same gunicorn config as rover_stream::

    BENCH_UPLOADS_DIR=/some/dir python -m gunicorn -c gunicorn.conf.py --chdir bench/peers flask_sendfile:app
"""

from __future__ import annotations

import os

import flask

UPLOADS = os.environ.get("BENCH_UPLOADS_DIR", "uploads")

app = flask.Flask(__name__)


@app.get("/download/<path:filename>")
def download(filename: str) -> flask.Response:
    return flask.send_from_directory(UPLOADS, filename, as_attachment=True)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
