"""The streaming guide's and the SSE API pages' examples, as plain ``def`` views on the public API.

From the streaming guide: ``/live-metrics``, ``POST /process-stream``, ``/managed-stream``,
``/broadcast-stream`` + ``POST /broadcast``, ``/chat/<username>`` + ``POST /chat/send``,
``/analytics-stream``, ``/large-dataset``, ``/health-monitored-stream``. From the SSE API pages: ``/stream``
(the main stream); ``/metrics`` is the library's (Prometheus, or the metrics event stream). The rover's
telemetry: ``/stream/rover-telemetry`` and ``/api/rover/telemetry`` (recent readings, to fill a chart before
the live ones arrive).

Streams that many clients share (telemetry, metrics, broadcasts, chat) are hub channels fed once, not a
loop per client; the others are generators, one per client, as in the guide.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request

import rover_stream as rs

from . import live, telemetry

guide = Blueprint("guide", __name__)

MAX_TEXT = 4000
MAX_NAME = 64


def _now_iso() -> str:
    return datetime.now().isoformat()


def _number_arg(name: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise rs.ApiError(f"Query parameter {name!r} must be {kind} from {low:g} to {high:g}, not {raw!r}.",
                          code="invalid_parameter")
    return value


def _json_object(optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (the library's body policy: size, time, bounded JSON): 415 when it
    is not JSON, 400 when it is not an object; ``optional``: an empty body is ``{}``."""
    if optional and not request.content_length and "chunked" not in request.headers.get("Transfer-Encoding",
                                                                                            "").lower():
        return {}  # POST /process-stream without a body: the defaults
    body = rs.json_body()
    if not isinstance(body, dict):
        raise rs.ApiError("The body must be a JSON object.", code="invalid_body")
    return body


def _text_field(body: dict[str, Any], name: str, default: str | None, limit: int) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise rs.ApiError(f"{name!r} must be a non-empty string.", code="invalid_field")
    if len(value) > limit:
        raise rs.ApiError(f"{name!r} is longer than {limit} characters.", code="invalid_field")
    return value


# -- the rover ------------------------------------------------------------------------------------------------

@guide.get("/stream/rover-telemetry")
def rover_telemetry() -> Any:
    """The rover's telemetry, every 2 s (``data:`` JSON, with ids): ``curl -N .../stream/rover-telemetry``."""
    hub = rs.get_hub()
    return rs.sse_response(hub.subscribe(live.TELEMETRY_CHANNEL, last_event_id=rs.last_event_id()))


@guide.get("/api/rover/telemetry")
def rover_telemetry_recent() -> Any:
    """The last ``?last=N`` readings (at most 1,000), oldest first: the same rover the stream shows."""
    count = _number_arg("last", 150, 1, 1000, integer=True)
    return jsonify(telemetry=telemetry.recent(count), tick_seconds=telemetry.TICK)


# -- the streaming guide ------------------------------------------------------------------------------------

@guide.get("/live-metrics")
def live_metrics() -> Any:
    """``event: metrics`` every 2 s with the server's real CPU, memory, connections and request rate (one
    event per worker process)."""
    hub = rs.get_hub()
    return rs.sse_response(hub.subscribe(rs.METRICS_CHANNEL, last_event_id=rs.last_event_id()))


@guide.post("/process-stream")
def process_stream() -> Any:
    """Progress of a processing job, one event per item, then ``event: completed``. Optional JSON body:
    ``{"total_items": 1000, "delay": 0.01}``."""
    body = _json_object(optional=True)
    total = body.get("total_items", 1000)
    delay = body.get("delay", 0.01)
    if not isinstance(total, int) or isinstance(total, bool) or not 1 <= total <= 100_000:
        raise rs.ApiError("'total_items' must be an integer from 1 to 100000.", code="invalid_field")
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 1:
        raise rs.ApiError("'delay' must be a number of seconds from 0 to 1.", code="invalid_field")

    def generate() -> Any:
        for i in range(total):
            yield {"item_id": i, "processed_at": _now_iso(), "result": f"Processed item {i}",
                   "progress": round((i + 1) / total * 100, 2)}
            if delay:
                time.sleep(delay)
        yield rs.Event(event="completed", data={"event": "completed", "total_processed": total,
                                                "completed_at": _now_iso()})

    return rs.sse_response(generate())


class ConnectionRegistry:
    """The guide's ConnectionManager: the open ``/managed-stream`` connections and their metadata."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections: dict[str, dict[str, Any]] = {}

    def add(self, connection_id: str, metadata: dict[str, Any]) -> None:
        with self._lock:
            self.connections[connection_id] = {"connected_at": _now_iso(), "metadata": metadata}

    def remove(self, connection_id: str) -> None:
        with self._lock:
            self.connections.pop(connection_id, None)

    def count(self) -> int:
        return len(self.connections)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"connection_id": key, **value} for key, value in self.connections.items()]


def _registry() -> ConnectionRegistry:
    return current_app.extensions["rover_demo_connections"]  # type: ignore[no-any-return]


@guide.get("/managed-stream")
def managed_stream() -> Any:
    """A message a second naming this connection and how many managed connections are open; the connection
    is registered (with its client address, user agent and endpoint) for as long as it is open."""
    registry = _registry()
    interval = _number_arg("interval", 1.0, 0.05, 60)
    connection_id = str(uuid.uuid4())
    metadata = {"client_ip": request.remote_addr, "user_agent": request.headers.get("User-Agent", ""),
                "endpoint": "/managed-stream"}

    def generate() -> Any:
        registry.add(connection_id, metadata)
        try:
            for counter in itertools.count():
                yield {"connection_id": connection_id, "message": f"Managed message {counter}",
                       "active_connections": registry.count(), "timestamp": _now_iso()}
                time.sleep(interval)
        finally:
            registry.remove(connection_id)

    return rs.sse_response(generate())


@guide.get("/managed-stream/connections")
def managed_connections() -> Any:
    """The open ``/managed-stream`` connections of this worker, with their metadata (client addresses:
    an admin token is needed when auth is on)."""
    rs.require_admin(rs.token_keys())
    connections = _registry().snapshot()
    return jsonify(active_connections=len(connections), connections=connections)


@guide.get("/broadcast-stream")
def broadcast_stream() -> Any:
    """Every broadcast (``POST /broadcast`` or ``POST /api/broadcast``), live; resumes with Last-Event-ID."""
    channel = rs.get_runtime().settings["DEFAULT_CHANNEL"]
    return rs.sse_response(rs.get_hub().subscribe(channel, last_event_id=rs.last_event_id()))


@guide.post("/broadcast")
def send_broadcast() -> Any:
    """``{"message": "...", "sender": "..."}`` to everyone on ``/broadcast-stream`` (and the dashboard)."""
    channel = rs.get_runtime().settings["DEFAULT_CHANNEL"]
    rs.check_publish_rate(rs.require(rs.token_keys(), "publish", [channel]))
    body = _json_object()
    message = {"type": "broadcast", "message": _text_field(body, "message", None, MAX_TEXT),
               "sender": _text_field(body, "sender", "server", MAX_NAME), "timestamp": _now_iso()}
    result = rs.publish(channel, message)
    return jsonify(status="broadcast_sent", message=message, recipients=result.subscribers)


@guide.get("/chat/<username>")
def join_chat(username: str) -> Any:
    """The chat room over SSE: the last 10 messages first, then live ones; everyone sees this user join
    and, when the stream ends, leave. Joining announces the user, which is publishing: with a secret it
    needs the same token as ``POST /chat/send``."""
    if not username.strip() or len(username) > MAX_NAME or any(ord(c) < 32 or c == "\x7f" for c in username):
        raise rs.ApiError(f"A user name is 1 to {MAX_NAME} printable characters.", code="invalid_user")
    rs.check_publish_rate(rs.require(rs.token_keys(), "publish", [live.CHAT_CHANNEL]))
    hub = rs.get_hub()
    keepalive = _number_arg("keepalive", 30.0, 0.1, 300)
    history = hub.history(live.CHAT_CHANNEL)[-10:]
    # Replaying after the first of the last ten (sent by hand) gives the other nine and then live messages,
    # with nothing lost or doubled in between.
    subscription = hub.subscribe(live.CHAT_CHANNEL, last_event_id=history[0].id if history else None)

    def generate() -> Any:
        if history:
            yield rs.Event(id=history[0].id, data=history[0].data)
        joined = hub.publish(live.CHAT_CHANNEL, {"type": "user_joined", "user": username,
                                                 "timestamp": _now_iso()})
        clients = joined.subscribers
        try:
            while True:
                try:
                    parts = subscription.take(keepalive)
                except rs.FeedEnded:  # the hub let go of it (too slow) or it was closed: the client reconnects
                    return
                if parts is None:
                    yield rs.Event(event="keepalive", data={"type": "keepalive", "timestamp": _now_iso()})
                else:
                    yield from parts
        finally:
            subscription.close()
            hub.publish(live.CHAT_CHANNEL, {"type": "user_left", "user": username, "timestamp": _now_iso(),
                                            "clients_count": max(0, clients - 1)})

    return rs.sse_response(generate())


@guide.post("/chat/send")
def send_chat_message() -> Any:
    """``{"user": "...", "message": "..."}`` to everyone on ``/chat/<username>``."""
    rs.check_publish_rate(rs.require(rs.token_keys(), "publish", [live.CHAT_CHANNEL]))
    body = _json_object()
    message = {"type": "message", "user": _text_field(body, "user", "Anonymous", MAX_NAME),
               "text": _text_field(body, "message", None, MAX_TEXT), "timestamp": _now_iso()}
    rs.publish(live.CHAT_CHANNEL, message)
    return jsonify(status="message_sent")


@guide.get("/analytics-stream")
def analytics_stream() -> Any:
    """Page views, unique visitors, API calls and errors of this server (every worker and host with Redis;
    this worker process without): an event
    when they change (checked every ``?interval=``, 1 s), the current state as ``event: keepalive`` after
    5 s without change."""
    counters: live.Counters = current_app.extensions["rover_demo_counters"]
    interval = _number_arg("interval", 1.0, 0.05, 60)
    keepalive = _number_arg("keepalive", 5.0, 0.1, 300)

    def generate() -> Any:
        last = counters.snapshot()
        yield last
        quiet_since = time.monotonic()
        while True:
            time.sleep(interval)
            state = counters.snapshot()
            if {k: v for k, v in state.items() if k != "timestamp"} != \
                    {k: v for k, v in last.items() if k != "timestamp"}:
                last, quiet_since = state, time.monotonic()
                yield state
            elif time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield rs.Event(event="keepalive", data=state)

    return rs.sse_response(generate())


@guide.get("/large-dataset")
def large_dataset() -> Any:
    """100,000 records in batches of 100, one event per batch (``?total=``, ``?batch_size=``, ``?delay=``)."""
    total = _number_arg("total", 100_000, 0, 10_000_000, integer=True)
    batch_size = _number_arg("batch_size", 100, 1, 10_000, integer=True)
    delay = _number_arg("delay", 0.01, 0, 1)

    def generate() -> Any:
        for start in range(0, total, batch_size):
            stamp = _now_iso()
            batch = [{"id": i, "data": f"Record {i}", "timestamp": stamp}
                     for i in range(start, min(start + batch_size, total))]
            yield {"batch": batch, "batch_start": start, "batch_size": len(batch), "total_records": total}
            if delay:
                time.sleep(delay)

    return rs.sse_response(generate())


@guide.get("/health-monitored-stream")
def health_monitored_stream() -> Any:
    """Data every second and ``event: ping`` every 10 s (``?interval=``, ``?ping_interval=``), with the
    guide's ``X-Health-Monitoring`` and ``X-Ping-Interval`` headers."""
    interval = _number_arg("interval", 1.0, 0.05, 60)
    ping_interval = _number_arg("ping_interval", 10.0, 0.1, 3600)

    def generate() -> Any:
        started = last_ping = time.time()
        for counter in itertools.count():
            now = time.time()
            if now - last_ping >= ping_interval:
                yield rs.Event(event="ping", data={"type": "ping", "server_time": now,
                                                   "connection_duration": round(now - started, 3)})
                last_ping = now
            yield {"type": "data", "counter": counter, "timestamp": _now_iso()}
            time.sleep(interval)

    return rs.sse_response(generate(), headers={"X-Health-Monitoring": "enabled",
                                                "X-Ping-Interval": f"{ping_interval:g}"})


# -- the SSE API pages --------------------------------------------------------------------------------------

class MainStreamClients:
    def __init__(self) -> None:
        self.ids: set[str] = set()


@guide.get("/stream")
def main_stream() -> Any:
    """The main stream: a ``connected`` event, then ``message`` every 2 s, ``sensor`` every 4 s,
    ``heartbeat`` every 5 s and ``notification`` every 8 s; numbered ids (it resumes after Last-Event-ID)
    and ``retry: 5000``. ``?tick=`` shortens the second these rhythms count in (for tests)."""
    clients: MainStreamClients = current_app.extensions["rover_demo_main_stream"]
    unit = _number_arg("tick", 1.0, 0.01, 10)
    last = rs.last_event_number()
    first_id = last + 1 if last is not None else 0
    client_id = str(uuid.uuid4())

    def generate() -> Any:
        ids = itertools.count(first_id)
        clients.ids.add(client_id)
        try:
            yield rs.Event(event="connected", id=next(ids), data={
                "type": "connected", "client_id": client_id, "message": "Connected to the main stream",
                "rhythms": {"message": 2, "sensor": 4, "heartbeat": 5, "notification": 8},
                "timestamp": _now_iso()})
            for second in itertools.count(1):
                time.sleep(unit)
                if second % 2 == 0:
                    yield rs.Event(event="message", id=next(ids), data={
                        "type": "message", "message": f"Update #{second // 2} from Mission Control",
                        "timestamp": _now_iso()})
                if second % 4 == 0:
                    reading = telemetry.reading(telemetry.current_tick())
                    yield rs.Event(event="sensor", id=next(ids), data={
                        "type": "sensor", "sensor": "rover-environment",
                        "temperature_c": reading["temperature_c"], "sun_elevation_deg":
                        reading["sun_elevation_deg"], "battery_level": reading["battery_level"],
                        "timestamp": _now_iso()})
                if second % 5 == 0:
                    yield rs.Event(event="heartbeat", id=next(ids), data={
                        "timestamp": _now_iso(), "clients": len(clients.ids)})
                if second % 8 == 0:
                    reading = telemetry.reading(telemetry.current_tick())
                    yield rs.Event(event="notification", id=next(ids), data={
                        "type": "notification", "level": "info",
                        "message": f"Rover is {reading['status']} on sol {reading['sol']} "
                                   f"({reading['local_solar_time']} local solar time)",
                        "timestamp": _now_iso()})
        finally:
            clients.ids.discard(client_id)

    return rs.sse_response(generate(), retry=5000)
