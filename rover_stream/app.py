"""The application factory and the extension entry point."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import settings as settings_module
from .errors import register_error_handlers
from .runtime import init_runtime

log = logging.getLogger("rover_stream")


def init_app(app: Flask, config: Mapping[str, Any] | None = None) -> None:
    """Set rover_stream up on an existing Flask app: settings (from ``config``, then ``app.config``, then the
    environment; validated now), the stream runtime and hub, JSON errors, the operations endpoints
    (``/health``, ``/ready``, ``/metrics``, ``/admin/stream-stats``), the hub's HTTP API (``/realtime``,
    ``/api/broadcast``), WebSocket rooms, and two producers per worker: the metrics sync and the
    ``server.metrics`` channel."""
    merged = {k: v for k, v in app.config.items() if k.startswith(settings_module.PREFIX)}
    merged.update(config or {})
    settings = settings_module.load(merged)
    app.config.update({s.key: settings[s.name] for s in settings_module.SETTINGS})
    runtime = init_runtime(app, settings)
    register_error_handlers(app)
    from .api import api
    from .cors import init_cors
    from .logs import init_logging
    from .metrics import publish_process_metrics
    from .ops import ops
    from .producers import add_producer
    from .rooms import init_rooms

    init_logging(app)
    init_cors(app, settings["CORS_ORIGINS"])
    app.before_request(runtime.metrics.count_request)
    app.register_blueprint(ops)
    app.register_blueprint(api)
    init_rooms(app)
    add_producer(app, "metrics-sync", runtime.metrics.run_sync, scope="worker")
    add_producer(app, "server-metrics", publish_process_metrics(runtime), scope="worker")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the rover_stream app. ``config`` holds settings (``ROVER_...``, see docs/settings.md) and any
    other Flask config keys; invalid settings raise :class:`~rover_stream.errors.ConfigError` here."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    app = Flask(
        "rover_stream",
        template_folder=str(root / "templates"),
        static_folder=str(root / "static"),
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    rover_config = {k: v for k, v in (config or {}).items() if k.startswith(settings_module.PREFIX)
                    or k in settings_module.BY_NAME}
    app.config.update({k: v for k, v in (config or {}).items() if k not in rover_config})
    init_app(app, rover_config)
    if app.config["ROVER_DEMO"]:
        from .demo import register_demo

        register_demo(app)
    return app
