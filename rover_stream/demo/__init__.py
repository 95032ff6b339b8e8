"""The Cosmic Rover Mission Control demo: blueprints that use the library's public API.

The library never imports this package: the shipped entry points do (``wsgi.py``, ``rover-stream serve``,
both through :func:`create_demo_app`, and only while ``ROVER_DEMO`` is on). Deleting it leaves the library
whole.

* :mod:`.routes` -- the dashboard, the rover image, downloads, the synchronous streaming page's examples;
* :mod:`.guide` -- the streaming guide's and the SSE API pages' examples, and the rover's telemetry;
* :mod:`.live` -- the telemetry producer (once per deployment) and the request counters behind
  ``/analytics-stream`` (the server's own metrics come from the library: ``rs.METRICS_CHANNEL``);
* :mod:`.telemetry` -- the rover simulation, a pure function of time;
* :mod:`.assets` -- where the dashboard's templates and static files are, and the example downloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

import rover_stream as rs

from . import live
from .assets import ensure_example_files
from .guide import ConnectionRegistry, MainStreamClients, guide
from .routes import demo


def register_demo(app: Flask) -> None:
    """Mount the demo on ``app``, which must have rover_stream set up (``create_app()`` or
    ``RoverStream(app)``), and write its example downloads into the uploads folder."""
    settings = rs.get_runtime(app).settings
    ensure_example_files(settings.uploads_dir)
    counters = live.Counters()
    app.extensions["rover_demo_counters"] = counters
    app.extensions["rover_demo_connections"] = ConnectionRegistry()
    app.extensions["rover_demo_main_stream"] = MainStreamClients()
    app.before_request(counters.count_request)
    app.after_request(counters.count_response)
    app.register_blueprint(demo)
    app.register_blueprint(guide)
    rs.add_producer(app, "rover-telemetry", live.telemetry_producer(app))
    if getattr(rs.get_hub(app).engine, "remote", False):  # Redis: the analytics are the deployment's
        rs.add_producer(app, "demo-analytics", live.analytics_sharing(app, counters), scope="worker")


def create_demo_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The full server (:func:`rover_stream.create_app`) with Mission Control mounted on it."""
    app = rs.create_app(config)
    register_demo(app)
    return app
