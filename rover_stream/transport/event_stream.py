"""Server-Sent Events for plain ``def`` views.

``sse_response(events)`` streams any iterable or generator of events with the right headers. The generator
runs in its own greenlet (a thread outside gevent) and hands events to the response through a bounded
:class:`~rover_stream.transport.pipe.Pipe`, which the response reads with a timeout: while the generator is blocked
waiting for its next event, the response still sends a ``: ping`` comment every heartbeat interval. That
keeps proxies from cutting the stream and makes a vanished client visible: the write after its departure
fails, the server closes the body, and the generator is stopped (its ``finally`` runs) within two heartbeat
intervals.

Lifecycle of one stream, as the client sees it::

    retry: 3000           <- sent at once, so headers and the reconnect delay arrive immediately
    ...events...          <- several events waiting are sent in one write
    : ping                <- after HEARTBEAT_INTERVAL seconds without an event
    retry: 1000           <- on server shutdown: a final event, then the body ends; EventSource
    event: shutdown          reconnects after the short retry delay, to another worker or the new server
    data: {...}
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Response, current_app, request

from ..concurrency import Task, spawn
from ..errors import ServiceUnavailable
from ..runtime import StreamRuntime, get_runtime
from ..wire.sse import HEARTBEAT, Event, encode, to_bytes
from ..wire.untrusted import parse_event_number
from .parked import PROBE_INTERVAL, PROBE_WRITES, can_park, parking_lot, response_head
from .pipe import Feed, FeedEnded, Pipe, PipeClosed
from .sockets import on_peer_close
from .streaming import StreamBody, StreamingResponse

log = logging.getLogger("rover_stream.transport.event_stream")

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

#: Events a generator may run ahead of a slow client before it blocks.
DEFAULT_EVENT_QUEUE = 64


def last_event_id() -> str | None:
    """The id of the last event the client saw: the ``Last-Event-ID`` header that EventSource sends when it
    reconnects, or a ``last_event_id`` query parameter (for a first connection that resumes). Read it in the
    view, before returning the response."""
    value = request.headers.get("Last-Event-ID")
    if value is None:
        value = request.args.get("last_event_id")
    return value


def last_event_number() -> int | None:
    """:func:`last_event_id` as a counter, for streams whose ids are 0, 1, 2...: ``Last-Event-ID: 41`` gives
    41; None when there is none, or it is not a decimal number below 2**63 (so the stream starts over
    rather than failing on ``Last-Event-ID: 99999...`` or ``-1``)."""
    return parse_event_number(last_event_id())


class GeneratorFeed(Pipe):
    """A feed filled by a producer task that runs the route author's iterable, encoding each event. The
    task runs in the app context of the view that made it (``current_app`` works; ``request`` does not:
    read what you need from it in the view)."""

    def __init__(self, events: Iterable[Any], limit: int) -> None:
        super().__init__(limit=limit)
        self._events = events
        self._app = current_app._get_current_object()  # type: ignore[attr-defined]
        self.task: Task | None = None

    def start(self) -> None:
        self.task = spawn(self._produce, name="rover-stream-sse-producer")

    def _produce(self) -> None:
        with self._app.app_context():
            iterator = iter(self._events)
            try:
                for item in iterator:
                    self.push(to_bytes(item))
            except PipeClosed:
                pass
            except Exception as exc:
                self.finish(exc)
            else:
                self.finish()
            finally:
                _close(iterator)

    def close(self) -> None:
        super().close()
        if self.task is not None:
            self.task.cancel()
        else:
            _close(self._events)  # never started (HEAD, 503, an error in the view): its finally runs now


def _close(iterable: Any) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class EventStreamBody(StreamBody):
    """The WSGI body of an SSE response: reads a feed, interleaving heartbeats and ending on shutdown."""

    kind = "sse"

    def __init__(self, runtime: StreamRuntime, feed: Feed, *, retry: int | None, heartbeat: float) -> None:
        super().__init__(runtime)
        self.feed = feed
        self.retry = retry
        self.heartbeat = heartbeat
        self._probes = 0
        self._stop_watch: Any = None
        self._parked: Any = None

    def chunks(self) -> Iterator[bytes]:
        start = getattr(self.feed, "start", None)
        if start is not None:
            start()
        runtime = self.runtime
        take = self.feed.take
        yield encode(retry=self.retry) if self.retry is not None else HEARTBEAT
        if self.client_socket is not None:
            self._watch_client(self.client_socket)
        while True:
            try:
                parts = take(PROBE_INTERVAL if self._probes else self.heartbeat)
            except FeedEnded:
                return
            if runtime.shutting_down:
                if parts:
                    yield b"".join(parts)
                yield shutdown_event(runtime.settings["SHUTDOWN_RETRY_MS"])
                self._close_after_response()
                return
            if self._probes and not parts:
                self._probes -= 1
            yield b"".join(parts) if parts else HEARTBEAT

    def _watch_client(self, sock: Any) -> None:
        self._tune_socket(sock)
        # Notice a client that closes while the stream is idle at once, not at the next heartbeat.
        self._stop_watch = on_peer_close(sock, self._on_peer_eof)

    def _tune_socket(self, sock: Any) -> None:
        try:
            # Events are batched by us already: an event must leave at once, not wait for the ACK of the
            # previous one (Nagle), which the client may delay by 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A silent peer (network gone, laptop asleep) never answers: give up on it after two heartbeats'
            # worth of unacknowledged data instead of TCP's default of about fifteen minutes.
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18),
                            int(self.heartbeat * 2000))
        except OSError:
            pass

    def _on_peer_eof(self) -> None:
        """The client socket reads end-of-file: the client closed, or only shut its sending side. Write at
        once, twice: the second write to a closed client fails and ends the stream."""
        self._probes = PROBE_WRITES
        self.feed.wake()

    def _close_after_response(self) -> None:
        """Make gunicorn close the connection once this body ends, instead of keeping it alive: its
        keep-alive loop would hold the stopping worker for ``keepalive`` seconds. With reading shut down,
        gunicorn's wait for the next request sees end-of-file at once."""
        if self.client_socket is not None:
            try:
                self.client_socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    # -- parking (see parked.py) ----------------------------------------------------------------------------

    def park(self, environ: dict[str, Any], response: Response) -> Any:
        """Hand this stream to the worker's parking lot, if it can be parked; returns gunicorn's
        ALREADY_HANDLED then, else None (the server iterates the body as usual)."""
        if not can_park(environ, self.feed):
            return None
        from gunicorn.workers.base_async import ALREADY_HANDLED

        head = response_head(response.status, list(response.get_wsgi_headers(environ).items()))
        head += encode(retry=self.retry) if self.retry is not None else HEARTBEAT
        self.started = True
        self._parked = parking_lot(self.runtime).park(self, self.client_socket, head)
        self._tune_socket(self.client_socket)
        return ALREADY_HANDLED

    def close_parked(self, reason: str) -> None:
        """The parked connection ended (called by the parking lot)."""
        self._end_reason = reason
        self.close()

    def wake(self) -> None:
        if self._parked is not None and self.runtime.shutting_down:
            self._parked.finish(shutdown_event(self.runtime.settings["SHUTDOWN_RETRY_MS"]))
        else:
            self.feed.wake()

    def force_close(self) -> None:
        if self._parked is not None:
            self._parked.close("shutdown")
        else:
            super().force_close()

    def cleanup(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch()
        self.feed.close()


def shutdown_event(retry_ms: int) -> bytes:
    return Event(
        event="shutdown", retry=retry_ms, data={"reason": "server shutting down", "reconnect_ms": retry_ms}
    ).encode()


def sse_response(
    events: Iterable[Any] | Feed,
    *,
    retry: int | None = None,
    heartbeat: float | None = None,
    headers: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    """Stream ``events`` as Server-Sent Events.

    ``events`` yields :class:`~rover_stream.wire.sse.Event` objects, dicts of event fields with a ``data``
    key (``{"event": "tick", "id": 3, "data": {...}}``), plain values (sent as the data of a message: ``str``
    as is, anything else -- other dicts too -- as JSON) or pre-encoded ``bytes``. It may block as long as it
    likes between events; heartbeats go on. It may also be a feed (a hub subscription), read directly
    without a producer task.

    ``retry`` (milliseconds) defaults to ``ROVER_RETRY_MS``, ``heartbeat`` (seconds) to
    ``ROVER_HEARTBEAT_INTERVAL``.
    """
    runtime = get_runtime()
    settings = runtime.settings
    response_headers = {
        # Caches and proxies must neither store nor buffer an event stream.
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    response_headers.update(headers or {})
    feed: Feed
    if hasattr(events, "take") and hasattr(events, "wake"):
        feed = events  # type: ignore[assignment]
    else:
        feed = GeneratorFeed(events, limit=settings["STREAM_QUEUE_SIZE"])
    if runtime.shutting_down:
        # A request on a connection kept alive across the shutdown, typically an EventSource reconnecting:
        # a 503 would stop it for good, so it gets what the open streams got, and reconnects elsewhere.
        feed.close()
        return Response(shutdown_event(settings["SHUTDOWN_RETRY_MS"]), headers=response_headers,
                        content_type=SSE_CONTENT_TYPE)
    try:
        body = EventStreamBody(
            runtime, feed,
            retry=settings["RETRY_MS"] if retry is None else retry,
            heartbeat=settings["HEARTBEAT_INTERVAL"] if heartbeat is None else heartbeat,
        )
    except ServiceUnavailable:
        feed.close()  # a generator that never runs has its finally run now; a subscription leaves the hub
        raise
    return StreamingResponse(body=body, status=status, headers=response_headers, content_type=SSE_CONTENT_TYPE)
