"""Parked streams: hub subscriptions served without a greenlet per connection.

An SSE response that reads a hub subscription is idle almost all the time, yet in the plain design its
connection keeps a greenlet blocked in ``queue.get`` (its stack saved on the heap), gunicorn's request
objects and a timeout: about 20 KB per idle client, and a greenlet switch per client per event. Under
gunicorn's gevent worker such a response is *parked* instead:

1. The view's response writes its own status line and headers (``Connection: close``: the body ends when
   the connection does, so no chunked framing), on a duplicate of the client's socket descriptor, and
   tells gunicorn the request is already handled. gunicorn's greenlet soon lets go of its copy.
2. The subscription's bounded ``queue.Queue`` stays what the hub fills. When it goes from idle to busy it
   tells the worker's :class:`ParkingLot`, whose one writer greenlet drains every busy queue into its
   socket with non-blocking writes: several waiting events in one write, no switch per client.
3. A socket that cannot take more is watched for writability; meanwhile its queue fills and the hub's
   slow-client policy applies, as for any subscriber. ``SEND_TIMEOUT`` without progress closes it.
4. The writer also sends heartbeats to streams idle for ``HEARTBEAT_INTERVAL``, probes sockets that read
   end-of-file (two quick heartbeats: a closed client fails the second, a half-closed one keeps its
   stream), and on shutdown writes every stream's final event and closes it.

What a client receives is byte for byte what the unparked response sends, without chunked framing.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
import weakref
from typing import Any, Protocol

from werkzeug.http import http_date

from ..concurrency import cooperate, gevent_active
from ..runtime import StreamRuntime
from ..wire.sse import HEARTBEAT
from .pipe import FeedEnded
from .sockets import MIN_PROGRESS, bytes_taken, on_peer_close, unacknowledged


class ParkableBody(Protocol):
    """What the lot needs of a parked stream's body (an
    :class:`~rover_stream.transport.event_stream.EventStreamBody`, a room member): its feed, its byte count,
    and being told when the connection ended."""

    feed: Any
    bytes_sent: int

    def close_parked(self, reason: str) -> None: ...

log = logging.getLogger("rover_stream.transport.parked")

#: How many heartbeats, this far apart, test a client whose socket reported end-of-file: a client that
#: closed makes the second write fail; one that only half-closed (still reading) keeps its stream. Used by
#: parked streams and by the greenlet-per-stream SSE body alike.
PROBE_WRITES = 2
PROBE_INTERVAL = 0.05
#: Streams the writer serves before it lets the worker's other greenlets run (accepting, answering
#: requests, the Redis reader, gunicorn's heartbeat): a pass over tens of thousands of streams must not
#: hold the worker for seconds.
WRITER_TURN = 256
#: Longest sleep of the writer between heartbeat rounds.
MAX_TICK = 1.0
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ETIMEDOUT, errno.EBADF)


def can_park(environ: dict[str, Any], feed: Any) -> bool:
    """Whether this response may be parked: a hub subscription, under gunicorn's gevent worker, plain
    HTTP/1.x (TLS and HTTP/2 need the server's own framing)."""
    import ssl

    sock = environ.get("gunicorn.socket")
    return (sock is not None and gevent_active() and hasattr(feed, "notify")
            and not isinstance(sock, ssl.SSLSocket)
            and str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1"))


def response_head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}\r\n", f"Date: {http_date()}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers
              if name.lower() not in ("connection", "transfer-encoding", "content-length", "date")]
    lines.append("Connection: close\r\n\r\n")
    return "".join(lines).encode("latin-1")


class ParkedStream:
    """One parked connection: its descriptor, what is waiting to be written, and its subscription."""

    __slots__ = ("lot", "body", "subscription", "fd", "unsent", "dirty", "probes", "last_write", "interval",
                 "blocked_since", "queued", "progressed", "write_watcher", "stop_read_watch", "closed",
                 "__weakref__")

    def __init__(self, lot: ParkingLot, body: Any, sock: Any, head: bytes, watch_eof: bool = True) -> None:
        self.lot = lot
        self.body = body
        self.subscription = body.feed
        #: Seconds of silence before a heartbeat: the response's own (sse_response(heartbeat=...)), else the lot's.
        self.interval: float = getattr(body, "heartbeat", 0.0) or lot.interval
        self.fd = os.dup(sock.fileno())
        os.set_blocking(self.fd, False)
        self.unsent = head
        self.dirty = False
        self.probes = 0
        self.last_write = time.monotonic()
        self.blocked_since = 0.0
        self.queued = -1  # bytes the client had not acknowledged at blocked_since
        self.progressed = 0  # bytes the socket took since blocked_since
        self.write_watcher: Any = None
        self.closed = False
        # Watch our own descriptor: gunicorn closes its socket (and that fd number is soon reused).
        self.stop_read_watch = on_peer_close(self.fd, self._on_peer_eof) if watch_eof else None
        self.subscription.notify = functools.partial(lot.mark, self)

    # -- called from the hub or the event loop: never block ----------------------------------------------------

    def _on_peer_eof(self) -> None:
        self.probes = PROBE_WRITES
        self.lot.mark(self)

    def _on_writable(self) -> None:
        if self.write_watcher is not None:
            self.write_watcher.stop()
        self.lot.mark(self)

    # -- called by the writer greenlet ---------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Write what is unsent, then whatever the subscription has ready."""
        if self.closed:
            return
        if self.unsent and not self._write(self.unsent, now):
            return
        if self.probes:
            self.probes -= 1
            if not self._write(HEARTBEAT, now):
                return
            if self.probes:
                self.lot.probe_later(self)
        try:
            parts = self.subscription.take_nowait()
        except FeedEnded:
            self.close(self.subscription.dropped or "complete")
            return
        if parts:
            self._write(parts[0] if len(parts) == 1 else b"".join(parts), now)
            subscription: Any = self.subscription
            if subscription.taken_time:  # delivery latency of the events just written (see rover_stream.metrics)
                self.lot.latency.record(time.time() - subscription.taken_time, len(parts))
                subscription.taken_time = 0.0
            if not self.unsent and (subscription.backlog or subscription.preamble or subscription.queue.qsize()):
                self.lot.mark(self)  # more to write (replay, queued events): after the others had their turn

    def heartbeat(self, now: float, interval: float, send_timeout: float) -> None:
        if self.unsent:
            if now - self.blocked_since > send_timeout:
                # Behind for that long: a client that still took MIN_PROGRESS bytes (acknowledged, which
                # a big send buffer hides from the writer) is reading, slowly; one that took less is not.
                taken, waiting = bytes_taken(self.fd, self.queued, self.progressed)
                if taken >= MIN_PROGRESS:
                    self.blocked_since, self.queued, self.progressed = now, waiting, 0
                    return
                log.info("parked stream made no progress for %g s; closing it", send_timeout)
                self.close("slow_client")
        elif now - self.last_write >= interval:
            self._write(HEARTBEAT, now)

    def _write(self, data: bytes, now: float) -> bool:
        """Write ``data``; keep what the socket does not take. True if everything went out."""
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.close("disconnect" if exc.errno in _GONE else "error")
            return False
        self.body.bytes_sent += written
        self.last_write = now
        if written == len(data):
            self.unsent = b""
            return True
        if not self.unsent:  # just fell behind: SEND_TIMEOUT counts from here (see heartbeat)
            self.blocked_since, self.queued, self.progressed = now, unacknowledged(self.fd), 0
        else:
            self.progressed += written
        self.unsent = data[written:]
        self._watch_writable()
        return False

    def _watch_writable(self) -> None:
        if self.write_watcher is None:
            from gevent import get_hub

            self.write_watcher = get_hub().loop.io(self.fd, 2)  # 2: writable
        self.write_watcher.start(self._on_writable)

    def finish(self, final: bytes) -> None:
        """Shutdown: the final event (if the socket takes it), then close."""
        if not self.closed:
            if not self.unsent:
                try:
                    os.write(self.fd, final)
                except OSError:
                    pass
            self.close("shutdown")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.lot.streams.discard(self)
        if self.stop_read_watch is not None:
            self.stop_read_watch()
        if self.write_watcher is not None:
            self.write_watcher.stop()
            self.write_watcher.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.unsent = b""
        self.body.close_parked(reason)


class ParkingLot:
    """The parked streams of one app in one worker, and the greenlet that writes to all of them."""

    def __init__(self, runtime: StreamRuntime) -> None:
        self.runtime = runtime
        self.streams: set[ParkedStream] = set()
        self._dirty: list[ParkedStream] = []
        self._probing: list[ParkedStream] = []
        self._ready = threading.Event()
        self._writer: Any = None
        self.latency = runtime.metrics.latency
        self.interval: float = runtime.settings["HEARTBEAT_INTERVAL"]
        self.send_timeout: float = runtime.settings["SEND_TIMEOUT"]
        self._tick = min(MAX_TICK, self.interval / 4)  # how often the writer looks for streams to ping
        self._readable: list[Any] = []
        self._read_ready = threading.Event()
        self._reader: Any = None

    def park(self, body: ParkableBody, sock: Any, head: bytes) -> ParkedStream:
        return self.add(ParkedStream(self, body, sock, head))

    def add(self, stream: ParkedStream) -> ParkedStream:
        self.streams.add(stream)
        self._tick = min(self._tick, stream.interval / 4)
        if self._writer is None or self._writer.dead:
            import gevent

            self._writer = gevent.spawn(self._run)
        self.mark(stream)
        return stream

    def mark(self, stream: ParkedStream) -> None:
        if not stream.dirty:
            stream.dirty = True
            self._dirty.append(stream)
            if not self._ready.is_set():
                self._ready.set()

    def probe_later(self, stream: ParkedStream) -> None:
        self._probing.append(stream)

    # -- parked reading (WebSocket members): one reader greenlet for every connection that sends -----------

    def watch_reads(self, stream: Any) -> Any:
        """Watch ``stream.fd`` for input; :meth:`read_ready` of ``stream`` then runs in the lot's reader
        greenlet (it may block, e.g. publishing to Redis). Returns the watcher, stopped after each event
        until the stream re-arms it with ``watcher.start(...)`` (:meth:`rearm`)."""
        from gevent import get_hub

        watcher = get_hub().loop.io(stream.fd, 1)  # 1: readable
        watcher.start(functools.partial(self._on_readable, stream))
        return watcher

    def rearm(self, stream: Any) -> None:
        stream.read_watcher.start(functools.partial(self._on_readable, stream))

    def read_again(self, stream: Any) -> None:
        """The stream has more input than one turn reads: its next turn comes after the others'."""
        self._readable.append(stream)
        self._read_ready.set()

    def _on_readable(self, stream: Any) -> None:  # in the event loop: never block
        stream.read_watcher.stop()
        self._readable.append(stream)
        if self._reader is None or self._reader.dead:
            import gevent

            self._reader = gevent.spawn(self._read)
        self._read_ready.set()

    def _read(self) -> None:
        while True:
            if not self._readable:
                self._read_ready.clear()
                if not self._read_ready.wait(MAX_TICK * 10) and not self._readable:
                    break
            ready, self._readable = self._readable, []
            for stream in ready:
                try:
                    stream.read_ready()
                except Exception:
                    log.exception("parked connection failed while reading")
                    stream.close("error")
        self._reader = None

    def _run(self) -> None:
        send_timeout = self.send_timeout
        next_round = time.monotonic() + self._tick
        while self.streams or self._dirty:
            now = time.monotonic()
            wait = PROBE_INTERVAL if self._probing else max(0.0, next_round - now)
            if not self._dirty:
                self._ready.wait(wait)
            self._ready.clear()
            if self._probing:
                probing, self._probing = self._probing, []
                for stream in probing:
                    self.mark(stream)
            dirty, self._dirty = self._dirty, []
            now = time.monotonic()
            for done, stream in enumerate(dirty, 1):
                stream.dirty = False
                try:
                    stream.flush(now)
                except Exception:
                    log.exception("parked stream failed")
                    stream.close("error")
                if done % WRITER_TURN == 0:
                    cooperate()  # thousands of streams to write: let requests and the reader have a turn
            if now >= next_round:
                for done, stream in enumerate(list(self.streams), 1):
                    stream.heartbeat(now, stream.interval, send_timeout)
                    if done % WRITER_TURN == 0:
                        cooperate()
                next_round = now + self._tick
        self._writer = None

    def shutdown(self, final: bytes) -> None:
        for stream in list(self.streams):
            stream.finish(final)


_LOTS: weakref.WeakKeyDictionary[StreamRuntime, ParkingLot] = weakref.WeakKeyDictionary()


def parking_lot(runtime: StreamRuntime) -> ParkingLot:
    """The parked streams of ``runtime``'s app in this worker (made on first use, in the worker: never
    before a fork)."""
    lot = _LOTS.get(runtime)
    if lot is None:
        lot = _LOTS[runtime] = ParkingLot(runtime)
    return lot
