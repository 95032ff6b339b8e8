"""A host app for the browser client's tests (tests/test_browser_client.py): rover_stream mounted under
``JS_CLIENT_PREFIX`` (``/rt`` unless set; empty for the root), and a blank page at ``/`` to run modules in,
so that the page and the server share an origin as a real site's pages do.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

import rover_stream as rs

PREFIX = os.environ.get("JS_CLIENT_PREFIX", "/rt")

app = Flask(__name__)
streams = rs.RoverStream(app, url_prefix=PREFIX or None)


@app.get("/")
def blank() -> Any:
    return ('<!doctype html><html><head><meta charset="utf-8"><title>rover-stream.js</title>'
            '<link rel="icon" href="data:,"></head><body></body></html>')
