"""The Flask extension: rover_stream added to an app, the way flask-sock and Flask-SocketIO are.

::

    app = Flask(__name__)
    streams = RoverStream(app, url_prefix="/rt")      # or: streams = RoverStream(); streams.init_app(app)

    @app.get("/ticks")
    def ticks():
        return rs.sse_response(streams.hub.subscribe("ticks", last_event_id=rs.last_event_id()))

What it mounts, all under ``url_prefix`` and in one blueprint named ``rover_stream``: the hub's HTTP API
(``/realtime/<channel>``, ``/api/broadcast``), the operations endpoints (``/health``, ``/ready``,
``/metrics``, ``/admin/stream-stats``) and WebSocket rooms (``/ws/comms/<room>``, ``/api/rooms/<room>``).
Its JSON errors, CORS (``ROVER_CORS_ORIGINS``), request ids and request counting apply to that blueprint
only: the host's error pages, its own ``OPTIONS`` and CORS, its own ``/health`` stay as they were. The one
app-wide hook that answers anything is the handler of :class:`~rover_stream.errors.ApiError`, which only
rover_stream raises (a stream refused at the cap inside one of the host's views is a 503, not a 500).

:func:`rover_stream.create_app` builds an app that is all rover_stream: it passes ``whole_app=True``, which
applies the JSON errors, CORS and request ids to every route of the app instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, has_app_context

from . import settings as settings_module
from .body import close_unread_bodies
from .browser import browser
from .cors import init_cors
from .errors import ApiError, register_error_handlers
from .hub import Hub, create_hub
from .hub_api import api
from .logs import init_logging, send_request_id
from .metrics import ProcessMetrics, publish_process_metrics
from .ops import ops
from .producers import add_producer
from .rooms import init_rooms, rooms_api
from .runtime import EXTENSION_KEY, StreamRuntime, init_runtime
from .transport.streaming import close_unsent_bodies

#: The name of the blueprint that holds every route the extension mounts (``url_for("rover_stream....")``).
BLUEPRINT_NAME = "rover_stream"


class RoverStream:
    """rover_stream on a Flask app.

    :param app: the app; or ``None``, and :meth:`init_app` later (application factories).
    :param url_prefix: where every route of the extension is mounted (``"/rt"``: ``/rt/realtime/news``,
        ``/rt/health``, ``/rt/ws/comms/<room>``); none by default.
    :param config: settings (``ROVER_...``, see docs/settings.md). They win over ``app.config``, which wins
        over the environment; invalid ones raise :class:`~rover_stream.errors.ConfigError` now.
    :param whole_app: apply the JSON errors, CORS and request ids to the whole app, for an app that is
        all rover_stream (what :func:`rover_stream.create_app` builds). Off by default: a host app's own
        routes keep their behaviour.
    """

    def __init__(self, app: Flask | None = None, *, url_prefix: str | None = None,
                 config: Mapping[str, Any] | None = None, whole_app: bool = False) -> None:
        self.url_prefix = url_prefix
        self.config = dict(config or {})
        self.whole_app = whole_app
        self.app: Flask | None = None
        self.runtime: StreamRuntime | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, url_prefix: str | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        """Set rover_stream up on ``app``: settings (validated now), the stream runtime and hub, the
        blueprint, and two producers per worker (the metrics sync and the ``server.metrics`` channel)."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"rover_stream is already set up on the app {app.name!r}.")
        prefix = self.url_prefix if url_prefix is None else url_prefix
        merged = {k: v for k, v in app.config.items() if k.startswith(settings_module.PREFIX)}
        merged.update(self.config)
        merged.update(config or {})
        settings = settings_module.load(merged)
        app.config.update({s.key: settings[s.name] for s in settings_module.SETTINGS})
        runtime = init_runtime(app, settings, create_hub(settings))
        runtime.count_with(ProcessMetrics(runtime))
        # A body a view created but did not return (it raised after sse_response()) leaves the runtime.
        app.teardown_request(close_unsent_bodies)

        blueprint = Blueprint(BLUEPRINT_NAME, __name__)
        for part in (ops, api, rooms_api, browser):
            blueprint.register_blueprint(part)
        scope: Flask | Blueprint = app if self.whole_app else blueprint
        register_error_handlers(scope)
        if not self.whole_app:
            # Only rover_stream raises ApiError: a stream refused inside one of the host's own views (the
            # stream cap, shutting down) is answered as such, not as a 500.
            app.register_error_handler(ApiError, lambda exc: exc.to_response())
        init_cors(scope, settings["CORS_ORIGINS"])
        init_logging()
        scope.after_request(send_request_id)
        scope.before_request(runtime.metrics.count_request)
        scope.after_request(close_unread_bodies)
        init_rooms(app, runtime)
        app.register_blueprint(blueprint, url_prefix=prefix or None)

        add_producer(app, "metrics-sync", runtime.metrics.run_sync, scope="worker")
        add_producer(app, "server-metrics", publish_process_metrics(runtime), scope="worker")
        self.app, self.runtime = app, runtime

    @property
    def hub(self) -> Hub:
        """The app's pub/sub hub."""
        return self._runtime().hub

    def publish(self, channel: str, data: Any, event: str | None = None) -> Any:
        """Publish on the app's hub from anywhere (a view, a thread, a producer): ``streams.publish("news",
        {"title": ...})``. Returns the hub's result (``.message.id``, ``.subscribers``)."""
        return self._runtime().hub.publish(channel, data, event=event)

    def _runtime(self) -> StreamRuntime:
        """The current app's runtime when there is one (an extension object may serve several apps, as
        with an application factory), else that of the app it was last set up on."""
        if has_app_context() and EXTENSION_KEY in current_app.extensions:
            return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
        if self.runtime is None:
            raise RuntimeError("RoverStream is not set up on an app yet: call init_app(app) first.")
        return self.runtime
