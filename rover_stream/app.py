"""The application factory and the extension entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify

from . import settings as settings_module
from .errors import register_error_handlers
from .runtime import get_runtime, init_runtime

log = logging.getLogger("rover_stream")


def init_app(app: Flask, config: Mapping[str, Any] | None = None) -> None:
    """Set rover_stream up on an existing Flask app: settings (from ``config``, then ``app.config``, then the
    environment; validated now), the stream runtime and hub, JSON errors, ``GET /health`` and the hub's HTTP
    API (``/realtime``, ``/api/broadcast``)."""
    merged = {k: v for k, v in app.config.items() if k.startswith(settings_module.PREFIX)}
    merged.update(config or {})
    settings = settings_module.load(merged)
    app.config.update({s.key: settings[s.name] for s in settings_module.SETTINGS})
    init_runtime(app, settings)
    register_error_handlers(app)
    app.add_url_rule("/health", "health", _health)
    from .api import api
    from .rooms import init_rooms

    app.register_blueprint(api)
    init_rooms(app)


def _health() -> Any:
    """Liveness: answers while streams are at their cap, since it holds no stream slot."""
    runtime = get_runtime()
    engine = runtime.hub.engine
    body: dict[str, Any] = {
        "status": "shutting_down" if runtime.shutting_down else "ok",
        "pid": os.getpid(),
        "connected_clients": runtime.open_streams,
        "open_streams": runtime.open_streams,
        "max_streams": runtime.max_streams,
        "engine": engine.name,
        "producers": {name: p.status()["state"] for name, p in runtime.producers.items()},
    }
    if engine.name == "redis":
        engine.ping()
        body["redis"] = engine.stats()["redis"]
    return jsonify(body)


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
