"""What the demo measures and produces: the rover's telemetry, the server's own metrics, request counts.

* The **telemetry producer** (one per deployment: see :func:`rover_stream.add_producer`) publishes every
  tick of :mod:`.telemetry` on ``rover.telemetry``. When it starts it first publishes the ticks the channel's
  history lacks (after a restart, or when it takes over from a producer on another host), at most
  :data:`BACKFILL` of them, so a client that resumes with its Last-Event-ID sees no gap.
* :class:`Counters` counts requests, page views, unique visitors (a cookie), API calls and errors, for
  ``/analytics-stream`` and the metrics. With Redis, every worker of every host adds what it counted to
  shared totals once a second (``INCRBY``, and ``PFADD`` into a HyperLogLog for the visitors), so the
  figures are the deployment's; with the in-process hub they are this process's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, request

import rover_stream as rs

from . import telemetry

log = logging.getLogger("rover_stream.demo")

TELEMETRY_CHANNEL = "rover.telemetry"
CHAT_CHANNEL = "chat"
BACKFILL = 90  # ticks: three minutes
VISITOR_COOKIE = "rover_visitor"
MAX_VISITORS = 100_000  # distinct visitors remembered (beyond that, new ones are not counted)
#: The counts that are summed over the deployment when Redis is configured.
SHARED = ("page_views", "api_calls", "errors")


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
        #: The deployment's totals as last read from Redis (None: no Redis, the figures are this process's).
        self.shared: dict[str, int] | None = None
        self._flushed = dict.fromkeys(SHARED, 0)  # what of this process's counts the shared totals hold
        self._new_visitors: list[str] = []  # seen here, not yet added to the shared HyperLogLog
        self._sharing_visitors = 0  # of those, being added right now

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
            mine = {"page_views": self.page_views, "api_calls": self.api_calls, "errors": self.errors}
            shared = self.shared
            if shared is None:
                return {**mine, "unique_visitors": len(self.visitors), "timestamp": time.time()}
            # The deployment's totals, plus what this process counted since it last added to them.
            totals = {name: shared[name] + mine[name] - self._flushed[name] for name in SHARED}
            unique = shared["unique_visitors"] + len(self._new_visitors) + self._sharing_visitors
            return {**totals, "unique_visitors": unique, "timestamp": time.time()}

    def share(self, redis: Any, prefix: str) -> None:
        """Add this process's counts since the last call to the deployment's totals in Redis, and read
        those back. Nothing is lost when Redis fails: the counts wait for the next call."""
        with self._lock:
            deltas = {name: getattr(self, name) - self._flushed[name] for name in SHARED}
            visitors, self._new_visitors = self._new_visitors, []
            self._sharing_visitors = len(visitors)
        try:
            with redis.pipeline(transaction=False) as pipe:
                for name, delta in deltas.items():
                    if delta:
                        pipe.incrby(prefix + name, delta)
                if visitors:
                    pipe.pfadd(prefix + "visitors", *visitors)
                pipe.mget([prefix + name for name in SHARED])
                pipe.pfcount(prefix + "visitors")
                *_, totals, unique = pipe.execute()
        except Exception:
            with self._lock:
                self._new_visitors[:0] = visitors
                self._sharing_visitors = 0
            raise
        with self._lock:
            self._sharing_visitors = 0
            for name, delta in deltas.items():
                self._flushed[name] += delta
            before = self.shared
            self.shared = {**{name: int(value or 0) for name, value in zip(SHARED, totals, strict=True)},
                           "unique_visitors": int(unique)}
        if self.shared != before:
            self.changed.set()

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
            if len(self.visitors) < MAX_VISITORS and visitor not in self.visitors:
                self.visitors.add(visitor)
                self._new_visitors.append(visitor)
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

def analytics_sharing(app: Flask, counters: Counters) -> Any:
    """A producer (one per worker, only with Redis): every second, :meth:`Counters.share`."""
    def run(stop: threading.Event) -> None:
        engine: Any = rs.get_hub(app).engine  # a Redis engine: the producer runs only on one
        redis, prefix = engine.client(), f"{engine.prefix}{{demo-analytics}}:"  # one slot in a cluster
        while not stop.wait(1.0):
            try:
                counters.share(redis, prefix)
            except Exception as exc:  # noqa: BLE001 (Redis away: the counts wait)
                log.debug("analytics not shared this time: %s", exc)

    return run


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
