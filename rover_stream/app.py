"""The application factory: the full server in one line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import settings as settings_module
from .extension import RoverStream


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app that is all rover_stream: the hub's HTTP API, the operations endpoints and WebSocket rooms
    at the root, with JSON errors, CORS and request ids on every route (:class:`RoverStream` with
    ``whole_app=True``). Add your own streaming views to it. ``config`` holds settings (``ROVER_...``, see
    docs/settings.md) and any other Flask config keys; invalid settings raise
    :class:`~rover_stream.errors.ConfigError` here. The Mission Control demo is not part of it: see
    :func:`rover_stream.demo.create_demo_app`."""
    app = Flask("rover_stream", static_folder=None, template_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    rover_config = {k: v for k, v in (config or {}).items() if k.startswith(settings_module.PREFIX)
                    or k in settings_module.BY_NAME}
    app.config.update({k: v for k, v in (config or {}).items() if k not in rover_config})
    RoverStream(app, config=rover_config, whole_app=True)
    return app
