"""Someone else's Flask app, with rover_stream added under a prefix.

It has what real apps have and rover_stream must leave alone: an HTML 404 page, its own ``OPTIONS``
answer, its own ``/health``. ``make_app(with_streams=False)`` builds the same app without the extension,
for comparing the host's answers byte for byte.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_sock import Sock

import rover_stream as rs

PREFIX = "/rt"


def make_app(with_streams: bool = True, config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)

    @app.errorhandler(404)
    def not_found(exc: Any) -> Any:
        return Response("<h1>Host page not found</h1>", status=404, content_type="text/html; charset=utf-8")

    @app.get("/page")
    def page() -> Any:
        return "<p>the host's page</p>"

    @app.route("/page", methods=["OPTIONS"])
    def page_options() -> Any:
        response = Response(status=200)
        response.headers["Allow"] = "GET, OPTIONS"
        response.headers["X-Host-Options"] = "yes"
        response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
        return response

    @app.get("/health")
    def health() -> Any:
        return jsonify(host="ok")

    @app.post("/boom")
    def boom() -> Any:
        raise ValueError("the host's own bug")

    # The host's own flask-sock route, with its own options: rover_stream's rooms must not change how it runs.
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
    sock = Sock(app)

    @sock.route("/echo")
    def echo(ws: Any) -> None:
        while True:
            message = ws.receive(timeout=10)
            if message is None:
                return
            ws.send(f"echo: {message}")

    if with_streams:
        streams = rs.RoverStream(app, url_prefix=PREFIX, config=config)

        @app.get("/ticker")
        def ticker() -> Any:
            """A route author's SSE view: a hub channel, resumable with Last-Event-ID."""
            return rs.sse_response(streams.hub.subscribe("ticker", last_event_id=rs.last_event_id()))

        @app.post("/tick")
        def tick() -> Any:
            """A route author's own publishing view."""
            result = streams.publish("ticker", request.get_json(force=True), event="tick")
            return jsonify(id=result.message.id, subscribers=result.subscribers)

    return app


app = make_app(config={"ROVER_MAX_STREAMS": int(os.environ.get("HOST_APP_MAX_STREAMS", "100"))})
