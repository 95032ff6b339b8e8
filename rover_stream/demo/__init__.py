"""The Cosmic Rover Mission Control demo: blueprints that use the library's public API.

Nothing in the library imports this package except :func:`rover_stream.create_app`, and only when
``ROVER_DEMO`` is on; deleting it leaves the library whole.
"""

from __future__ import annotations

from flask import Flask


def register_demo(app: Flask) -> None:
    from .routes import demo

    app.register_blueprint(demo)
