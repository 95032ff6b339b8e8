"""Server-Sent Events for plain ``def`` views.

``sse_response(events)`` streams any iterable or generator of events with the right headers. The generator
runs in its own greenlet (a thread outside gevent) and hands events to the response through a bounded
:class:`~rover_stream.pipe.Pipe`, which the response reads with a timeout: while the generator is blocked
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

from flask import request

from .concurrency import Task, on_peer_close, spawn
from .errors import ServiceUnavailable
from .pipe import Feed, FeedEnded, Pipe, PipeClosed
from .runtime import StreamRuntime, get_runtime
from .streaming import StreamBody, StreamingResponse
from .wire.sse import HEARTBEAT, Event, encode, to_bytes

log = logging.getLogger("rover_stream.sse")

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


class GeneratorFeed(Pipe):
    """A feed filled by a producer task that runs the route author's iterable, encoding each event."""

    def __init__(self, events: Iterable[Any], limit: int) -> None:
        super().__init__(limit=limit)
        self._events = events
        self.task: Task | None = None

    def start(self) -> None:
        self.task = spawn(self._produce, name="rover-stream-sse-producer")

    def _produce(self) -> None:
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
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        super().close()
        if self.task is not None:
            self.task.cancel()


class EventStreamBody(StreamBody):
    """The WSGI body of an SSE response: reads a feed, interleaving heartbeats and ending on shutdown."""

    kind = "sse"

    def __init__(self, runtime: StreamRuntime, feed: Feed, *, retry: int | None, heartbeat: float,
                 client_socket: Any = None) -> None:
        super().__init__(runtime)
        self.feed = feed
        self.retry = retry
        self.heartbeat = heartbeat
        self._client_socket = client_socket
        self._client_gone = False
        self._stop_watch: Any = None

    def chunks(self) -> Iterator[bytes]:
        start = getattr(self.feed, "start", None)
        if start is not None:
            start()
        runtime = self.runtime
        take = self.feed.take
        yield encode(retry=self.retry) if self.retry is not None else HEARTBEAT
        if self._client_socket is not None:
            # Notice a client that leaves while the stream is idle at once, not at the next heartbeat.
            self._stop_watch = on_peer_close(self._client_socket, self._on_client_gone)
        while True:
            try:
                parts = take(self.heartbeat)
            except FeedEnded:
                return
            if self._client_gone:
                return
            if runtime.shutting_down:
                if parts:
                    yield b"".join(parts)
                self._end_reason = "shutdown"
                yield shutdown_event(runtime.settings["SHUTDOWN_RETRY_MS"])
                self._close_after_response()
                return
            yield b"".join(parts) if parts else HEARTBEAT

    def _close_after_response(self) -> None:
        """Make gunicorn close the connection once this body ends, instead of keeping it alive: its
        keep-alive loop would hold the stopping worker for ``keepalive`` seconds, and an EventSource that
        reconnected on this connection would reach a worker that refuses new streams. With reading shut
        down, gunicorn's wait for the next request sees end-of-file at once."""
        if self._client_socket is not None:
            try:
                self._client_socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def _on_client_gone(self) -> None:
        self._client_gone = True
        self._end_reason = "disconnect"
        self.feed.wake()

    def wake(self) -> None:
        self.feed.wake()

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
) -> StreamingResponse:
    """Stream ``events`` as Server-Sent Events.

    ``events`` yields :class:`~rover_stream.wire.sse.Event` objects, dicts of event fields
    (``{"event": "tick", "id": 3, "data": {...}}``), plain values (sent as the data of a message: ``str`` as
    is, anything else as JSON) or pre-encoded ``bytes``. It may block as long as it likes between events;
    heartbeats go on. It may also be a feed (a hub subscription), read directly without a producer task.

    ``retry`` (milliseconds) defaults to ``ROVER_RETRY_MS``, ``heartbeat`` (seconds) to
    ``ROVER_HEARTBEAT_INTERVAL``.
    """
    runtime = get_runtime()
    settings = runtime.settings
    feed: Feed
    if hasattr(events, "take") and hasattr(events, "wake"):
        feed = events  # type: ignore[assignment]
    else:
        feed = GeneratorFeed(events, limit=settings["STREAM_QUEUE_SIZE"])  # type: ignore[arg-type]
    try:
        body = EventStreamBody(
            runtime, feed,
            retry=settings["RETRY_MS"] if retry is None else retry,
            heartbeat=settings["HEARTBEAT_INTERVAL"] if heartbeat is None else heartbeat,
            client_socket=request.environ.get("gunicorn.socket"),
        )
    except ServiceUnavailable:
        close = getattr(events, "close", None)  # the generator never runs: let its finally blocks run now
        if close is not None:
            close()
        raise
    response_headers = {
        # Caches and proxies must neither store nor buffer an event stream.
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    response_headers.update(headers or {})
    return StreamingResponse(body=body, status=status, headers=response_headers, content_type=SSE_CONTENT_TYPE)
