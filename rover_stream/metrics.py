"""Observability: Prometheus metrics (correct with several gunicorn workers) and ``streaming_stats()``.

The figures are kept with the official ``prometheus_client``. Under gunicorn, the server configuration
(:mod:`rover_stream.server.config`) points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any
worker starts: every worker then writes its values to memory-mapped files there, and whichever worker
answers ``GET /metrics`` or ``/admin/stream-stats`` reads them all (``MultiProcessCollector``): counters
summed over every worker that ever ran (a restarted worker's counts are kept), gauges over the live ones
(``mark_process_dead`` in ``child_exit``), open streams also per worker (``pid`` label).

Where the figures come from:

* streams: counted where they are admitted, refused and released (:mod:`.runtime`): opened, open (by kind),
  closed (by kind and reason), refused, errors, bytes sent and seconds open (at release; the bytes of
  streams still open are added at each sync). Admission and release only add to plain numbers; the sync
  moves them to Prometheus, as for the hub;
* the hub keeps plain per-process counters (published, delivered, slow subscribers dropped, events
  dropped, events replayed, resets sent); :func:`sync` adds what they gained since the last sync to the
  Prometheus counters, and sets the subscribers per channel and members per room. Every worker syncs
  every :data:`SYNC_INTERVAL` seconds, and the worker that answers a scrape syncs first;
* delivery latency (from publish to the write that carried the event; every event of a write is counted
  at the age of the oldest one in it): recorded in a local histogram on the hot path (a bisect and two
  additions per write) and added to the Prometheus histogram at each sync, so the writer never touches the
  shared files per event.
"""

from __future__ import annotations

import bisect
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from flask import Flask

from .hub.names import ROOM_PREFIX
from .runtime import StreamRuntime, get_runtime

#: Seconds between two syncs of a worker's counters into the shared metrics.
SYNC_INTERVAL = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Hub counters (hub attribute -> metric name without ``rover_`` and ``_total``).
HUB_COUNTERS = {
    "published": "events_published",
    "delivered": "events_queued",
    "handed_out": "events_delivered",
    "dropped_slow": "slow_clients_dropped",
    "lost_events": "events_dropped",
    "replayed_out": "events_replayed",
    "resets": "replay_resets",
    "subscriptions": "subscriptions",
}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Instruments:
    """The process's Prometheus metrics (one set per process: the registry is global)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.opened = Counter("rover_streams_opened", "Streams admitted (SSE, downloads, WebSocket members).",
                              ["kind"])
        self.closed = Counter("rover_streams_closed", "Streams ended, by kind and reason.", ["kind", "reason"])
        self.rejected = Counter("rover_streams_rejected", "Streams refused with 503 (cap, shutdown).",
                                ["reason"])
        self.open = Gauge("rover_streams_open", "Streams open now, per worker (pid).", ["kind"],
                          multiprocess_mode="liveall")
        self.bytes = Counter("rover_stream_bytes_sent", "Bytes written to streaming clients.")
        self.seconds = Counter("rover_stream_seconds", "Seconds streams were open (ended streams).")
        self.errors = Counter("rover_stream_errors", "Streams that ended in an error.")
        self.hub = {name: Counter(f"rover_{name}", f"Hub: {name.replace('_', ' ')}.")
                    for name in HUB_COUNTERS.values()}
        self.subscribers = Gauge("rover_channel_subscribers", "Subscribers per channel.", ["channel"],
                                 multiprocess_mode="livesum")
        self.members = Gauge("rover_room_members", "WebSocket members per room.", ["room"],
                             multiprocess_mode="livesum")
        self.workers = Gauge("rover_worker_up", "1 for each live worker process (pid).",
                             multiprocess_mode="liveall")
        self.latency = Histogram("rover_delivery_latency_seconds",
                                 "From publish to the write that carried the event to a subscriber.",
                                 buckets=LATENCY_BUCKETS)
        self.workers.set(1)


_instruments: Instruments | None = None
_lock = threading.Lock()


def instruments() -> Instruments:
    """Created on first use, in the worker (never at import: prometheus_client picks its storage then)."""
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


class LatencyRecorder:
    """A histogram kept in plain integers on the hot path; :func:`sync` moves it to Prometheus."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def record(self, seconds: float, events: int = 1) -> None:
        """``events`` delivered in one write, ``seconds`` after the oldest of them was published: each is
        counted at that age (an upper bound for the others, and one bisect per write, not per event)."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += events
        self.total += seconds * events

    def drain_into(self, histogram: Any) -> None:
        counts, total = self.counts, self.total
        self.counts, self.total = [0] * len(counts), 0.0
        if not any(counts):
            return
        buckets, sum_value = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
        if buckets is not None and sum_value is not None and len(buckets) == len(counts):
            for bucket, count in zip(buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
            sum_value.inc(total)
            return
        # A prometheus_client without those internals: observe one by one (slower, same result).
        bounds = (*LATENCY_BUCKETS, LATENCY_BUCKETS[-1] * 2)
        for bound, count in zip(bounds, counts, strict=True):
            for _ in range(count):
                histogram.observe(bound)


class ProcessMetrics:
    """One runtime's link to the process's instruments: what was synced last, the latency recorder."""

    def __init__(self, runtime: StreamRuntime) -> None:
        self.runtime = runtime
        self.latency = LatencyRecorder()
        self._synced_hub: dict[str, int] = {}
        self._channels: set[str] = set()
        self._rooms: set[str] = set()
        self._lock = threading.Lock()
        self._last_sync = 0.0
        self.requests = 0  # requests this process answered (for requests a second)
        # Per-stream counts since the last sync, as plain numbers: a Prometheus update in multiprocess mode
        # is a lock and an mmap write, and a stream's life would take six of them.
        self._open_delta: dict[str, int] = {}  # kind -> streams opened minus released
        self._opened: dict[str, int] = {}
        self._closed: dict[tuple[str, str], int] = {}  # (kind, reason) -> streams
        self._closed_bytes = 0
        self._closed_seconds = 0.0
        self._errors = 0

    def count_request(self) -> None:
        self.requests += 1

    # -- called by the runtime ---------------------------------------------------------------------------

    def opened(self, kind: str) -> None:
        with self._lock:
            self._opened[kind] = self._opened.get(kind, 0) + 1
            self._open_delta[kind] = self._open_delta.get(kind, 0) + 1

    def rejected(self, reason: str) -> None:
        instruments().rejected.labels(reason).inc()

    def released(self, body: Any, reason: str) -> None:
        kind = body.kind
        unsynced = body.bytes_sent - body.bytes_counted
        with self._lock:
            self._open_delta[kind] = self._open_delta.get(kind, 0) - 1
            self._closed[kind, reason] = self._closed.get((kind, reason), 0) + 1
            if reason == "error":
                self._errors += 1
            if unsynced > 0:
                self._closed_bytes += unsynced
            self._closed_seconds += max(0.0, body.duration)

    # -- sync --------------------------------------------------------------------------------------------

    def sync(self) -> None:
        """Move what this process counted since the last sync into the shared metrics."""
        with self._lock:
            m = instruments()
            runtime = self.runtime
            hub = runtime.hub
            for kind, count in self._opened.items():
                m.opened.labels(kind).inc(count)
            for kind, delta in self._open_delta.items():
                if delta:
                    m.open.labels(kind).inc(delta)
            for (kind, reason), count in self._closed.items():
                m.closed.labels(kind, reason).inc(count)
            if self._errors:
                m.errors.inc(self._errors)
            if self._closed_bytes:
                m.bytes.inc(self._closed_bytes)
            if self._closed_seconds:
                m.seconds.inc(self._closed_seconds)
            self._opened, self._open_delta, self._closed = {}, {}, {}
            self._errors, self._closed_bytes, self._closed_seconds = 0, 0, 0.0
            for attribute, name in HUB_COUNTERS.items():
                value = getattr(hub, attribute, 0)
                delta = value - self._synced_hub.get(attribute, 0)
                if delta > 0:
                    m.hub[name].inc(delta)
                self._synced_hub[attribute] = value
            for body in runtime.open_bodies():
                delta = body.bytes_sent - body.bytes_counted
                if delta > 0:
                    m.bytes.inc(delta)
                    body.bytes_counted = body.bytes_sent
            per_channel = hub.stats()["subscribers_per_channel"]
            rooms: dict[str, int] = {}
            channels: dict[str, int] = {}
            for name, count in per_channel.items():
                if name.startswith(ROOM_PREFIX):
                    rooms[name[len(ROOM_PREFIX):]] = count
                else:
                    channels[name] = count
            for name in self._channels - set(channels):
                m.subscribers.labels(name).set(0)
            for name, count in channels.items():
                m.subscribers.labels(name).set(count)
            for name in self._rooms - set(rooms):
                m.members.labels(name).set(0)
            for name, count in rooms.items():
                m.members.labels(name).set(count)
            self._channels, self._rooms = set(channels), set(rooms)
            self.latency.drain_into(m.latency)
            self._last_sync = time.monotonic()

    def run_sync(self, stop: threading.Event) -> None:
        """A producer (one per worker): sync every SYNC_INTERVAL seconds."""
        while not stop.wait(SYNC_INTERVAL):
            self.sync()


# -- reading --------------------------------------------------------------------------------------------------

def registry() -> Any:
    """The registry to expose: every worker's files in multiprocess mode, this process's metrics otherwise."""
    from prometheus_client import REGISTRY, CollectorRegistry

    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    from prometheus_client import multiprocess

    collector_registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(collector_registry, path=directory)  # type: ignore[no-untyped-call]
    return collector_registry


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of every worker's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    instruments()
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def read_samples() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the rover_ metrics, summed over workers: name -> [(labels, value)]."""
    instruments()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry().collect():
        for sample in family.samples:
            if sample.name.startswith("rover_"):
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for sample_labels, value in samples.get(name, ())
               if all(sample_labels.get(k) == v for k, v in labels.items()))


def reset_for_tests() -> None:
    """Forget the process's instruments (unit tests create many apps in one process)."""
    global _instruments
    if _instruments is not None:
        from prometheus_client import REGISTRY

        for collector in list(REGISTRY._collector_to_names):
            if any(name.startswith("rover_") for name in REGISTRY._collector_to_names[collector]):
                REGISTRY.unregister(collector)
        _instruments = None


# -- the process's own figures, published on METRICS_CHANNEL ---------------------------------------------------

#: The hub channel of the ``server-metrics`` producer (one per worker): ``GET /metrics`` for event-stream
#: clients, the demo's ``/live-metrics`` and its dashboard read it.
METRICS_CHANNEL = "server.metrics"


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


@dataclass(frozen=True)
class StreamingStats:
    """What :func:`streaming_stats` returns: every worker's streams together (see :mod:`.metrics`)."""

    active_streams: int
    active_websockets: int
    total_bytes_streamed: int
    avg_throughput_mbps: float
    connection_errors: int
    streams_opened: int
    streams_rejected: int
    events_published: int
    events_delivered: int
    slow_clients_dropped: int
    events_replayed: int
    replay_resets: int
    subscribers_per_channel: dict[str, int]
    members_per_room: dict[str, int]
    open_streams_per_worker: dict[str, int]
    workers: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def streaming_stats(app: Flask | None = None) -> StreamingStats:
    """See :func:`streaming_stats_of` (for the current app, or ``app``)."""
    return streaming_stats_of(get_runtime(app))


def streaming_stats_of(runtime: StreamRuntime) -> StreamingStats:
    """``streaming_stats()`` (as the streaming guide names it), over every worker of this server: active streams (SSE,
    downloads, WebSocket members), bytes streamed, the average throughput of a stream while it is open (megabits a
    second), streams that ended in an error, the hub's counters, subscribers per channel, members per room. Counters
    of other workers are at most ``metrics.SYNC_INTERVAL`` seconds old."""
    runtime.metrics.sync()
    samples = read_samples()
    seconds = total(samples, "rover_stream_seconds_total") + sum(b.duration for b in runtime.open_bodies())
    streamed = int(total(samples, "rover_stream_bytes_sent_total"))
    per_worker: dict[str, int] = {}
    for labels, value in samples.get("rover_streams_open", ()):
        pid = labels.get("pid", str(os.getpid()))
        per_worker[pid] = per_worker.get(pid, 0) + int(value)

    def by(name: str, label: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for labels, value in samples.get(name, ()):
            if value:
                counts[labels[label]] = counts.get(labels[label], 0) + int(value)
        return counts

    hub = {name: int(total(samples, f"rover_{name}_total")) for name in
           ("events_published", "events_delivered", "slow_clients_dropped", "events_replayed", "replay_resets")}
    return StreamingStats(
        active_streams=int(total(samples, "rover_streams_open")),
        active_websockets=int(total(samples, "rover_streams_open", kind="websocket")),
        total_bytes_streamed=streamed,
        avg_throughput_mbps=round(streamed * 8 / 1e6 / seconds, 3) if seconds > 0 else 0.0,
        connection_errors=int(total(samples, "rover_stream_errors_total")),
        streams_opened=int(total(samples, "rover_streams_opened_total")),
        streams_rejected=int(total(samples, "rover_streams_rejected_total")),
        subscribers_per_channel=by("rover_channel_subscribers", "channel"),
        members_per_room=by("rover_room_members", "room"),
        open_streams_per_worker=per_worker,
        workers=max(1, len({labels.get("pid") for labels, _ in samples.get("rover_worker_up", ())})),
        **hub,
    )


def sample(runtime: StreamRuntime, sampler: ProcessSampler, requests_per_second: float) -> dict[str, Any]:
    """This worker's figures, and the server's stream statistics (every worker)."""
    stats = streaming_stats_of(runtime)
    cpu = sampler.cpu_percent()
    sockets = sampler.open_sockets()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # the names of the Cosmic Rover tutorial's metrics endpoint, which clients already read
        "cpu_usage": cpu,
        "memory_usage": sampler.memory_percent(),
        "active_connections": sockets,
        "requests_per_second": round(requests_per_second, 2),
        # and more precise ones
        "cpu_percent": cpu,
        "memory_mb": sampler.rss_mb(),
        "open_connections": sockets,
        "open_streams": runtime.open_streams,
        "websocket_members": sum(1 for b in runtime.open_bodies() if b.kind == "websocket"),
        "active_streams": stats.active_streams,
        "total_bytes_streamed": stats.total_bytes_streamed,
        "avg_throughput_mbps": stats.avg_throughput_mbps,
        "connection_errors": stats.connection_errors,
        "timestamp": time.time(),
    }


def publish_process_metrics(runtime: StreamRuntime) -> Any:
    """The ``server-metrics`` producer: this worker's figures every ``ROVER_METRICS_INTERVAL`` seconds."""

    def run(stop: threading.Event) -> None:
        interval: float = runtime.settings["METRICS_INTERVAL"]
        if not interval:
            stop.wait()  # turned off (ROVER_METRICS_INTERVAL=0)
            return
        sampler = ProcessSampler()
        requests, at = runtime.metrics.requests, time.monotonic()
        while not stop.wait(interval):
            now = time.monotonic()
            rate = (runtime.metrics.requests - requests) / max(now - at, 1e-6)
            requests, at = runtime.metrics.requests, now
            runtime.hub.publish(METRICS_CHANNEL, sample(runtime, sampler, rate), event="metrics")

    return run
