"""What the demo measures and produces: the rover's telemetry, the server's own metrics, request counts.

* The **telemetry producer** (one per deployment: see :func:`rover_stream.add_producer`) publishes every
  tick of :mod:`.telemetry` on ``rover.telemetry``. When it starts it first publishes the ticks the channel's
  history lacks (after a restart, or when it takes over from a producer on another host), at most
  :data:`BACKFILL` of them, so a client that resumes with its Last-Event-ID sees no gap.
* :class:`Counters` counts requests, page views, unique visitors (a cookie), API calls and errors of this
  worker process, for ``/analytics-stream`` and the metrics.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, request

import rover_stream as rs

from . import telemetry

TELEMETRY_CHANNEL = "rover.telemetry"
CHAT_CHANNEL = "chat"
BACKFILL = 90  # ticks: three minutes
VISITOR_COOKIE = "rover_visitor"
MAX_VISITORS = 100_000  # distinct visitors remembered (beyond that, new ones are not counted)


class Counters:
    """Request counts of this worker process (thread-safe: requests may run in threads outside gunicorn)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.page_views = 0
        self.api_calls = 0
        self.errors = 0
        self.visitors: set[str] = set()
        self.changed = threading.Event()
        self._rate_from = (time.monotonic(), 0)

    def requests_per_second(self) -> float:
        """Requests a second since the previous call (at least the last second)."""
        now, count = time.monotonic(), self.requests
        at, before = self._rate_from
        if now - at < 1.0:
            return round((count - before) / max(now - at, 1e-6), 2) if now > at else 0.0
        self._rate_from = (now, count)
        return round((count - before) / (now - at), 2)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"page_views": self.page_views, "unique_visitors": len(self.visitors),
                    "api_calls": self.api_calls, "errors": self.errors, "timestamp": time.time()}

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1
            path = request.path
            if path.startswith("/api/") or request.method == "POST":
                self.api_calls += 1
                self.changed.set()

    def count_page_view(self, visitor: str) -> None:
        with self._lock:
            self.page_views += 1
            if len(self.visitors) < MAX_VISITORS:
                self.visitors.add(visitor)
            self.changed.set()

    def count_response(self, response: Response) -> Response:
        if response.status_code >= 400:
            with self._lock:
                self.errors += 1
            self.changed.set()
        return response


def visitor_id() -> tuple[str, bool]:
    """The visitor's id from its cookie, or a new one (and whether it is new)."""
    value = request.cookies.get(VISITOR_COOKIE, "")
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value, False
    return uuid.uuid4().hex, True


# -- producers ----------------------------------------------------------------------------------------------

def telemetry_producer(app: Flask) -> Any:
    def run(stop: threading.Event) -> None:
        hub = rs.get_hub(app)
        now = telemetry.current_tick()
        last = None
        for message in reversed(hub.history(TELEMETRY_CHANNEL)):
            if isinstance(message.data, dict) and isinstance(message.data.get("tick"), int):
                last = message.data["tick"]
                break
        first = now - BACKFILL + 1 if last is None else max(last + 1, now - BACKFILL + 1)
        for tick in range(first, now + 1):
            hub.publish(TELEMETRY_CHANNEL, telemetry.reading(tick))
        following = now + 1
        while not stop.wait(max(0.0, following * telemetry.TICK - time.time())):
            now = telemetry.current_tick()
            for tick in range(following, now + 1):  # a late wake-up publishes the ticks it overslept
                hub.publish(TELEMETRY_CHANNEL, telemetry.reading(tick))
            following = max(following, now + 1)

    return run
