"""Operations endpoints: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics`` (Prometheus, or the
metrics event stream), ``/admin/stream-stats`` (``streaming_stats()`` as JSON).

``/metrics`` and ``/admin/stream-stats`` need an admin token when ``ROVER_SECRET_KEY`` is set (Prometheus
sends one with ``authorization: {credentials: ...}`` in its scrape config); the metrics event stream for
``Accept: text/event-stream`` carries the same figures as the dashboard's and follows the channel rules.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .auth import Keys, require, require_admin
from .metrics import METRICS_CHANNEL, exposition, streaming_stats
from .runtime import get_runtime
from .transport.event_stream import last_event_id, sse_response

ops = Blueprint("ops", __name__)


def _secret() -> Keys:
    return get_runtime().keys


@ops.get("/health")
def health() -> Any:
    """Liveness: the process answers (also while streams are at their cap: it holds no stream slot)."""
    runtime = get_runtime()
    engine = runtime.hub.engine
    body: dict[str, Any] = {
        "status": "shutting_down" if runtime.shutting_down else "healthy",
        "pid": os.getpid(),
        "connected_clients": runtime.open_streams,
        "open_streams": runtime.open_streams,
        "max_streams": runtime.max_streams,
        "engine": engine.name,
        "producers": {name: p.status()["state"] for name, p in runtime.producers.items()},
        **engine.health(),
    }
    return jsonify(body)


@ops.get("/ready")
def ready() -> Any:
    """Readiness: 200 when this worker should get new clients, 503 (with the failing checks) when not:
    shutting down, at its stream cap, the hub not answering, or Redis (when configured) unreachable."""
    runtime = get_runtime()
    checks: dict[str, dict[str, Any]] = {}
    checks["shutdown"] = {"ok": not runtime.shutting_down}
    checks["capacity"] = {"ok": runtime.open_streams < runtime.max_streams, "open_streams": runtime.open_streams,
                          "max_streams": runtime.max_streams}
    engine = runtime.hub.engine
    try:
        runtime.hub.stats()
        checks["hub"] = {"ok": True, "engine": engine.name}
    except Exception as exc:  # noqa: BLE001 (reported, not raised)
        checks["hub"] = {"ok": False, "engine": engine.name, "error": f"{type(exc).__name__}: {exc}"}
    checks.update(engine.checks())
    ok = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ok else "not_ready", pid=os.getpid(), checks=checks)
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = "1"
    return response


@ops.get("/metrics")
def metrics() -> Any:
    """Prometheus text (every worker), or for ``Accept: text/event-stream`` the metrics event stream."""
    if "text/event-stream" in request.headers.get("Accept", ""):
        hub = get_runtime().hub
        return sse_response(hub.subscribe(METRICS_CHANNEL, last_event_id=last_event_id()))
    require_admin(_secret())
    get_runtime().metrics.sync()
    body, content_type = exposition()
    return Response(body, content_type=content_type)


@ops.get("/admin/stream-stats")
def stream_stats() -> Any:
    """``streaming_stats()`` as JSON: active streams, bytes, throughput, errors, the hub's counters,
    subscribers per channel, members per room -- every worker together."""
    require_admin(_secret())
    return jsonify(streaming_stats().as_dict())


__all__ = ["ops", "require"]
