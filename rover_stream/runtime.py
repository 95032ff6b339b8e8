"""Per-app bookkeeping of open streams: the stream cap, graceful shutdown and the stream counters.

One :class:`StreamRuntime` lives in ``app.extensions["rover_stream"]``. Every streaming body registers with
it when the view creates it (:meth:`StreamRuntime.admit`) and leaves when the server closes it. It holds no
lock: under gevent nothing preempts between two bytecodes of ours, and under real threads ``set.add`` and
``len`` are atomic, so admission can at worst refuse a stream too many, never let one too many in.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Protocol

from flask import Flask, current_app

from . import signals
from .auth import Keys
from .errors import ServiceUnavailable
from .hub import Hub
from .logs import stream_context
from .settings import Settings

log = logging.getLogger("rover_stream.runtime")


class Stream(Protocol):
    """What the runtime needs of a stream's body (:class:`rover_stream.transport.streaming.StreamBody`, a
    room member)."""

    kind: str
    bytes_sent: int
    bytes_counted: int
    log_context: dict[str, Any]

    @property
    def duration(self) -> float: ...

    def wake(self) -> None: ...

    def force_close(self) -> None: ...


class StreamCounters(Protocol):
    """What the runtime tells the metrics (:class:`rover_stream.metrics.ProcessMetrics`), and what the
    parts above read of them."""

    requests: int
    latency: Any

    def opened(self, kind: str) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def released(self, body: Any, reason: str) -> None: ...

    def count_request(self) -> None: ...

    def sync(self) -> None: ...

    def run_sync(self, stop: threading.Event) -> None: ...


class Background(Protocol):
    """A producer (:class:`rover_stream.producers.Producer`), as the runtime starts and stops it."""

    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def status(self) -> dict[str, Any]: ...


class _Uncounted:
    """The counters of a runtime that has none attached (a bare runtime in a unit test)."""

    requests = 0
    latency = None

    def opened(self, kind: str) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def released(self, body: Any, reason: str) -> None: ...

    def count_request(self) -> None:
        self.requests += 1

    def sync(self) -> None: ...

    def run_sync(self, stop: threading.Event) -> None: ...

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
        #: What access tokens are checked with (false when the server is open).
        self.keys = Keys.from_settings(settings)
        self.shutting_down = False
        self._open: set[Stream] = set()
        self.started_at = time.time()
        self.streams_opened = 0
        self.streams_rejected = 0
        self.bytes_sent = 0
        self.stream_errors = 0
        self.stream_seconds = 0.0  # summed durations of the streams that ended
        self.body_readers = 0  # requests reading their body now (rover_stream.body)
        self.producers: dict[str, Background] = {}
        self.producers_started = False
        #: The metrics this runtime reports to (attached with :meth:`count_with`).
        self.metrics: StreamCounters = _Uncounted()
        _RUNTIMES.add(self)

    def count_with(self, metrics: StreamCounters) -> None:
        self.metrics = metrics

    def start_producers(self) -> None:
        """Start the registered producers (once; in the worker, never before a fork)."""
        if not self.producers_started and not self.shutting_down:
            self.producers_started = True
            for producer in list(self.producers.values()):
                producer.start()

    def stop_producers(self) -> None:
        for producer in list(self.producers.values()):
            producer.stop()

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def open_bodies(self) -> list[Stream]:
        """The streams open now (a copy: they come and go while the caller looks)."""
        return list(self._open)

    def refusal(self, extra: int = 0) -> ServiceUnavailable | None:
        """The 503 a new stream gets now (shutting down, or the worker at its stream cap), or None. Also
        asked before a WebSocket upgrade, while an HTTP answer is still possible."""
        retry = max(1, self.settings["RETRY_MS"] // 1000)
        if self.shutting_down:
            return ServiceUnavailable("The server is shutting down; reconnect in a moment.", code="shutting_down",
                                      retry_after=retry)
        if len(self._open) >= self.max_streams + extra:
            return ServiceUnavailable(f"This worker is serving its maximum of {self.max_streams} streams; retry "
                                      "shortly.", code="too_many_streams", retry_after=retry)
        return None

    def admit(self, body: Stream) -> None:
        """Register a new stream, or refuse it with 503 (:meth:`refusal`)."""
        # Added first, then counted: two real threads admitting at once cannot both pass the cap.
        self._open.add(body)
        refused = self.refusal(extra=1)
        if refused is not None:
            self._open.discard(body)
            self.streams_rejected += 1
            self.metrics.rejected(refused.code)
            signals.emit(signals.stream_rejected, body, reason=refused.code)
            raise refused
        self.streams_opened += 1
        body.log_context = stream_context()
        self.metrics.opened(body.kind)
        signals.emit(signals.stream_opened, body, kind=body.kind)

    def release(self, body: Stream, reason: str) -> None:
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


def init_runtime(app: Flask, settings: Settings, hub: Hub) -> StreamRuntime:
    runtime = StreamRuntime(settings, hub)
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
            "rover_stream is not set up on this app: create it with rover_stream.create_app(), or add "
            "rover_stream.RoverStream(app)."
        ) from None


def token_keys(app: Flask | None = None) -> Keys:
    """What the app checks access tokens with (false when it runs open): pass it to
    :func:`rover_stream.require` and :func:`rover_stream.require_admin` in views of your own."""
    return get_runtime(app).keys


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
