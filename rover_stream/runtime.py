"""Per-app bookkeeping of open streams: the stream cap, graceful shutdown and the stream counters.

One :class:`StreamRuntime` lives in ``app.extensions["rover_stream"]``. Every streaming body registers with
it when the view creates it (:meth:`StreamRuntime.admit`) and leaves when the server closes it. It holds no
lock: under gevent nothing preempts between two bytecodes of ours, and under real threads ``set.add`` and
``len`` are atomic, so admission can at worst refuse a stream too many, never let one too many in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g

from . import signals
from .errors import ServiceUnavailable
from .hub import Hub, MemoryEngine
from .hub.names import ROOM_PREFIX
from .logs import stream_context
from .metrics import ProcessMetrics
from .parked import ParkingLot
from .producers import Producer
from .settings import Settings

log = logging.getLogger("rover_stream.runtime")

if TYPE_CHECKING:
    from .streaming import StreamBody

EXTENSION_KEY = "rover_stream"

#: Seconds between asking streams to end on shutdown and cutting those that have not.
FORCE_CLOSE_AFTER = 1.0
#: Every runtime of this process (one per app), for :func:`drain_streams`.
_RUNTIMES: weakref.WeakSet[StreamRuntime] = weakref.WeakSet()


class StreamRuntime:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.max_streams = settings.max_streams
        self.shutting_down = False
        self._open: set[StreamBody] = set()
        self._parking_lot: ParkingLot | None = None
        self.started_at = time.time()
        self.streams_opened = 0
        self.streams_rejected = 0
        self.bytes_sent = 0
        self.stream_errors = 0
        self.stream_seconds = 0.0  # summed durations of the streams that ended
        self.body_readers = 0  # requests reading their body now (rover_stream.body)
        self.producers: dict[str, Producer] = {}
        self.producers_started = False
        self.metrics = ProcessMetrics(self)
        _RUNTIMES.add(self)

    def start_producers(self) -> None:
        """Start the registered producers (once; in the worker, never before a fork)."""
        if not self.producers_started and not self.shutting_down:
            self.producers_started = True
            for producer in list(self.producers.values()):
                producer.start()

    def stop_producers(self) -> None:
        for producer in list(self.producers.values()):
            producer.stop()

    def parking_lot(self) -> ParkingLot:
        """The worker's parked streams (created on first use, in the worker: never before a fork)."""
        if self._parking_lot is None:
            self._parking_lot = ParkingLot(self)
        return self._parking_lot

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def admit(self, body: StreamBody) -> None:
        """Register a new stream, or refuse it with 503 (cap reached or shutting down)."""
        if self.shutting_down:
            self._reject(body, "The server is shutting down; reconnect in a moment.", "shutting_down")
        self._open.add(body)
        if len(self._open) > self.max_streams:
            self._open.discard(body)
            self._reject(
                body,
                f"This worker is serving its maximum of {self.max_streams} streams; retry shortly.",
                "too_many_streams",
            )
        self.streams_opened += 1
        body.log_context = stream_context()
        self.metrics.opened(body.kind)
        signals.emit(signals.stream_opened, body, kind=body.kind)

    def _reject(self, body: StreamBody, message: str, code: str) -> None:
        self.streams_rejected += 1
        self.metrics.rejected(code)
        signals.emit(signals.stream_rejected, body, reason=code)
        raise ServiceUnavailable(message, code=code, retry_after=max(1, self.settings["RETRY_MS"] // 1000))

    def release(self, body: StreamBody, reason: str) -> None:
        if body not in self._open:
            return  # released once only
        self._open.discard(body)
        self.metrics.released(body, reason)
        self.bytes_sent += body.bytes_sent
        self.stream_seconds += body.duration
        if reason == "error":
            self.stream_errors += 1
        signals.emit(signals.stream_closed, body, reason=reason, bytes_sent=body.bytes_sent, duration=body.duration)

    def begin_shutdown(self, sender: Any = None, **_: Any) -> None:
        """Stop admitting streams and wake every open one so that it ends now (SSE with its final event).
        Streams still open ``FORCE_CLOSE_AFTER`` seconds later are cut: their client is not reading, or
        their generator blocks in the connection's greenlet."""
        self.shutting_down = True
        for producer in list(self.producers.values()):
            producer.stop(timeout=0)
        for body in list(self._open):
            body.wake()
        timer = threading.Timer(FORCE_CLOSE_AFTER, self._force_close)
        timer.daemon = True
        timer.start()

    def _force_close(self) -> None:
        for body in list(self._open):
            body.force_close()

    def stats(self) -> dict[str, Any]:
        return {
            "open_streams": self.open_streams,
            "max_streams": self.max_streams,
            "streams_opened": self.streams_opened,
            "streams_rejected": self.streams_rejected,
            "bytes_sent": self.bytes_sent + sum(body.bytes_sent for body in list(self._open)),
            "stream_errors": self.stream_errors,
            "shutting_down": self.shutting_down,
        }


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
    from .metrics import read_samples, total

    runtime.metrics.sync()
    samples = read_samples()
    seconds = total(samples, "rover_stream_seconds_total") + sum(b.duration for b in list(runtime._open))
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


def make_hub(settings: Settings) -> Hub:
    """The hub the settings ask for: on Redis with ``ROVER_REDIS_URL``, else in this process."""
    # A room keeps the messages it sends to members that join; every other channel HISTORY_SIZE events.
    sizes = {ROOM_PREFIX: settings["ROOM_HISTORY"]}
    engine: Any
    if settings["REDIS_URL"]:
        from .hub.redis_engine import RedisEngine

        engine = RedisEngine(settings["REDIS_URL"], history_size=settings["HISTORY_SIZE"],
                             history_ttl=settings["HISTORY_TTL"], prefix=settings["REDIS_PREFIX"],
                             timeout=settings["REDIS_TIMEOUT"], history_sizes=sizes)
    else:
        engine = MemoryEngine(settings["HISTORY_SIZE"], settings["HISTORY_TTL"], sizes)
    return Hub(engine, queue_size=settings["SUBSCRIBER_QUEUE_SIZE"], policy=settings["SLOW_CLIENT_POLICY"],
               max_channels=settings["MAX_CHANNELS"], max_channels_per_stream=settings["MAX_CHANNELS_PER_STREAM"])


def _close_unsent_bodies(exc: BaseException | None) -> None:
    from .streaming import PENDING_KEY

    for body in g.pop(PENDING_KEY, ()):
        if not body.handed_over:
            body.close()


def init_runtime(app: Flask, settings: Settings) -> StreamRuntime:
    runtime = StreamRuntime(settings, make_hub(settings))
    app.teardown_request(_close_unsent_bodies)
    app.before_request(runtime.start_producers)  # outside gunicorn: on the first request
    app.extensions[EXTENSION_KEY] = runtime
    # A bound method is held weakly; the app keeps the runtime alive for as long as the app lives.
    signals.shutdown_requested.connect(runtime.begin_shutdown)
    return runtime


def get_runtime(app: Flask | None = None) -> StreamRuntime:
    app = app or current_app
    try:
        return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "rover_stream is not set up on this app: create it with rover_stream.create_app() or call "
            "rover_stream.init_app(app)."
        ) from None


def get_hub(app: Flask | None = None) -> Hub:
    """The app's pub/sub hub (the current app's by default)."""
    return get_runtime(app).hub


def publish(channel: str, data: Any, event: str | None = None) -> Any:
    """Publish on the current app's hub: ``rs.publish("telemetry", {"battery": 87})``."""
    return get_runtime().hub.publish(channel, data, event=event)


def drain_streams(timeout: float) -> int:
    """Shutdown: end every open stream of this process and wait, at most ``timeout`` seconds, for them to be
    gone. Parked connections hold no request of the server's, so a worker that waits for its requests only
    would exit before their final frames are out. Returns how many streams were still open."""
    if any(not runtime.shutting_down for runtime in list(_RUNTIMES)):
        request_shutdown()
    deadline = time.monotonic() + timeout
    while True:
        left = sum(runtime.open_streams for runtime in list(_RUNTIMES))
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for runtime in list(_RUNTIMES):  # the streams that just ended are counted (the sync producer has stopped)
        try:
            runtime.metrics.sync()
        except Exception:  # noqa: BLE001 (an exiting worker does not fail over its metrics)
            log.exception("could not sync the metrics at exit")
    return left


def start_all_producers() -> None:
    """Start the producers of every app of this process (gunicorn's ``post_worker_init``)."""
    for runtime in list(_RUNTIMES):
        runtime.start_producers()


def request_shutdown() -> None:
    """Ask every app in this process to end its streams (called by the gunicorn hooks on SIGTERM)."""
    signals.emit(signals.shutdown_requested, None)
