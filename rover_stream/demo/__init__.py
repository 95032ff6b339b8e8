"""The Cosmic Rover Mission Control demo: blueprints that use the library's public API.

Nothing in the library imports this package except :func:`rover_stream.create_app`, and only when
``ROVER_DEMO`` is on; deleting it leaves the library whole.

* :mod:`.routes` -- the dashboard, the rover image, downloads, the synchronous streaming page's examples;
* :mod:`.guide` -- the streaming guide's and the SSE API pages' examples, and the rover's telemetry;
* :mod:`.live` -- the telemetry producer (once per deployment) and the request counters behind
  ``/analytics-stream`` (the server's own metrics come from the library: ``rs.METRICS_CHANNEL``);
* :mod:`.telemetry` -- the rover simulation, a pure function of time.
"""

from __future__ import annotations

from flask import Flask

import rover_stream as rs


def register_demo(app: Flask) -> None:
    from . import live
    from .guide import ConnectionRegistry, MainStreamClients, guide
    from .routes import demo

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
