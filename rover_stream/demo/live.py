"""What the demo measures and produces: the rover's telemetry, the server's own metrics, request counts.

* The **telemetry producer** (one per deployment: see :func:`rover_stream.add_producer`) publishes every
  tick of :mod:`.telemetry` on ``rover.telemetry``. When it starts it first publishes the ticks the channel's
  history lacks (after a restart, or when it takes over from a producer on another host), at most
  :data:`BACKFILL` of them, so a client that resumes with its Last-Event-ID sees no gap.
* The **metrics producer** (one per worker process) publishes this process's real figures on
  ``server.metrics`` every :data:`METRICS_INTERVAL` seconds: CPU (from ``os.times``), memory (``/proc``),
  open sockets, requests a second, and the stream statistics of :func:`rover_stream.streaming_stats`.
* :class:`Counters` counts requests, page views, unique visitors (a cookie), API calls and errors of this
  worker process, for ``/analytics-stream`` and the metrics.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, request

import rover_stream as rs

from . import telemetry

TELEMETRY_CHANNEL = "rover.telemetry"
METRICS_CHANNEL = "server.metrics"
CHAT_CHANNEL = "chat"
BACKFILL = 90  # ticks: three minutes
METRICS_INTERVAL = 2.0
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


class ProcessSampler:
    """This process's CPU use between two samples, its memory, its sockets."""

    def __init__(self) -> None:
        self._cpu = self._cpu_seconds()
        self._at = time.monotonic()
        self._page = os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def cpu_percent(self) -> float:
        cpu, at = self._cpu_seconds(), time.monotonic()
        percent = (cpu - self._cpu) / max(at - self._at, 1e-6) * 100
        self._cpu, self._at = cpu, at
        return round(percent, 1)

    def rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return round(int(f.read().split()[1]) * self._page / 1024 / 1024, 1)
        except (OSError, IndexError, ValueError):
            import resource

            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    @staticmethod
    def memory_percent() -> float | None:
        """The machine's memory in use, in percent."""
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) for line in f if ":" in line}
            return round((info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"] * 100, 1)
        except (OSError, KeyError, ValueError, ZeroDivisionError):
            return None

    @staticmethod
    def open_sockets() -> int | None:
        """Sockets this process has open: client connections (and the listener, Redis connections)."""
        try:
            count = 0
            for name in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                        count += 1
                except OSError:
                    pass
            return count
        except OSError:
            return None


def metrics_producer(app: Flask, counters: Counters) -> Any:
    def run(stop: threading.Event) -> None:
        hub = rs.get_hub(app)
        sampler = ProcessSampler()
        host, pid = socket.gethostname(), os.getpid()
        requests, at = counters.requests, time.monotonic()
        while not stop.wait(METRICS_INTERVAL):
            now = time.monotonic()
            rate = (counters.requests - requests) / max(now - at, 1e-6)
            requests, at = counters.requests, now
            with app.app_context():
                figures = sample(app, sampler, host, pid, rate)
            hub.publish(METRICS_CHANNEL, figures, event="metrics")

    return run


def sample(app: Flask, sampler: ProcessSampler, host: str, pid: int, rate: float) -> dict[str, Any]:
    stats = rs.streaming_stats(app)
    cpu = sampler.cpu_percent()
    memory = sampler.memory_percent()
    return {
        "host": host,
        "pid": pid,
        # the seed's names
        "cpu_usage": cpu,
        "memory_usage": memory,
        "active_connections": sampler.open_sockets(),
        "requests_per_second": round(rate, 2),
        # and more precise ones
        "cpu_percent": cpu,
        "memory_mb": sampler.rss_mb(),
        "open_connections": sampler.open_sockets(),
        "open_streams": stats.active_streams,
        "websocket_members": stats.active_websockets,
        "active_streams": stats.active_streams,
        "total_bytes_streamed": stats.total_bytes_streamed,
        "avg_throughput_mbps": stats.avg_throughput_mbps,
        "connection_errors": stats.connection_errors,
        "timestamp": time.time(),
    }
