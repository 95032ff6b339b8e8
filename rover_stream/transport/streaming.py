"""Streaming responses for plain ``def`` views: any iterable, a writer, CSV and NDJSON.

Every streaming response has a :class:`StreamBody` as its WSGI body. The body is admitted by the app's
:class:`~rover_stream.runtime.StreamRuntime` when the view creates it (503 beyond the stream cap), counts
the bytes it sends, and on ``close()`` -- which the WSGI server calls when the response ends, the client
disconnects or the worker stops -- closes its producer and leaves the runtime.

If the producer raises mid-stream, the body raises :class:`~rover_stream.errors.StreamAborted`. The server
then closes the connection without the terminating chunk (or short of ``Content-Length``), so curl and
browsers report a failed transfer instead of saving a truncated file as if it were complete.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from flask import Response, current_app, g, has_request_context, request

from ..concurrency import Task, gevent_active, spawn
from ..errors import RoverStreamError, StreamAborted
from ..runtime import StreamRuntime, get_runtime
from ..wire.tabular import csv_chunks, ndjson_chunks
from .pipe import FeedEnded, Pipe, PipeClosed

log = logging.getLogger("rover_stream.stream")

#: Where the bodies created during a request wait to be handed to the server (in ``flask.g``).
PENDING_KEY = "_rover_stream_bodies"

def close_unsent_bodies(exc: BaseException | None) -> None:
    """``teardown_request``: close the bodies a view created but did not return (an exception after
    ``sse_response()``, say), so that they leave the runtime."""
    for body in g.pop(PENDING_KEY, ()):
        if not body.handed_over:
            body.close()


#: Items the pipe holds per batch size before a writer blocks: how far a writer may run ahead of the socket.
PIPE_BATCHES = 4


class ClientDisconnected(Exception):
    """Raised (from the socket error) when a body writing to the socket itself finds the client gone."""


class ShuttingDown(StreamAborted):
    """The server is stopping: a stream without a natural end is cut short (no terminating chunk)."""


class StreamBody:
    """Base WSGI body: admission, byte counting, abort-on-error, idempotent close.

    Why a stream ended is decided in one place, :meth:`__next__`: ``complete`` when the body ran out,
    ``shutdown`` for :class:`ShuttingDown`, ``error`` for any other exception; a body that is closed while
    it could still send is a ``disconnect``.
    """

    kind = "stream"

    def __init__(self, runtime: StreamRuntime) -> None:
        self.runtime = runtime
        self.bytes_sent = 0
        self.bytes_counted = 0  # of bytes_sent, what the metrics have counted (rover_stream.metrics)
        self.log_context: dict[str, Any] = {}  # what its log lines say of its request (set on admission)
        self.started = False
        self.handed_over = False  # set when the WSGI server received the body; see close_unsent_bodies
        self._opened_at = time.monotonic()
        self._closed = False
        self._end_reason = "disconnect"
        self._chunks: Iterator[bytes] | None = None
        self._greenlet: Any = None
        environ = request.environ if has_request_context() else {}
        self.client_socket: Any = environ.get("gunicorn.socket")
        runtime.admit(self)
        if has_request_context():
            # Closed at the end of the request unless the WSGI server receives it (StreamingResponse.__call__):
            # a view that fails after creating a stream must not leak the stream's slot or its file.
            g.setdefault(PENDING_KEY, []).append(self)

    @property
    def duration(self) -> float:
        return time.monotonic() - self._opened_at

    def __iter__(self) -> StreamBody:
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            self._start()
        try:
            chunk = next(self._chunks)  # type: ignore[arg-type]
        except StopIteration:
            self._end_reason = "complete"
            raise
        except ShuttingDown:
            self._end_reason = "shutdown"
            raise
        except ClientDisconnected as exc:
            raise exc.__cause__ from None  # type: ignore[misc]  # the server handles EPIPE quietly
        except Exception as exc:
            self._end_reason = "error"
            if isinstance(exc, StreamAborted):
                log.warning("%s stream aborted: %s", self.kind, exc)
                raise
            log.error("%s stream failed mid-response; aborting the connection", self.kind, exc_info=exc)
            raise StreamAborted(f"{type(exc).__name__}: {exc}") from exc
        self.bytes_sent += len(chunk)
        return chunk

    def _start(self) -> None:
        self.started = True
        if gevent_active():
            import gevent

            self._greenlet = gevent.getcurrent()  # the connection's greenlet, killed if shutdown must force
        if self.client_socket is not None:
            # A client that stops reading must not hold this connection forever: a write that makes no
            # progress for SEND_TIMEOUT seconds fails.
            self.client_socket.settimeout(self.runtime.settings["SEND_TIMEOUT"])
        self._chunks = self.chunks()

    def check_shutdown(self) -> None:
        """Raise :class:`ShuttingDown` if the server is stopping (for bodies that have no final event)."""
        if self.runtime.shutting_down:
            raise ShuttingDown("the server is shutting down")

    def chunks(self) -> Iterator[bytes]:
        """The bytes to send; subclasses implement it."""
        raise NotImplementedError

    def wake(self) -> None:
        """Called on shutdown: make a body that is waiting notice ``runtime.shutting_down`` now."""

    def force_close(self) -> None:
        """Shutdown's last resort, for a body still open a moment after it was woken: its client is not
        reading, or its producer blocks in the connection's own greenlet. Cut the socket and stop the
        greenlet (which runs the generator's ``finally``)."""
        if self.client_socket is not None:
            try:
                self.client_socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._greenlet is not None and not self._greenlet.dead:
            self._greenlet.kill(block=False)

    def cleanup(self) -> None:
        """Release what the body holds (producer task, file); called once, from :meth:`close`."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._chunks is not None:
                self._chunks.close()  # type: ignore[attr-defined]
            self.cleanup()
        finally:
            self.runtime.release(self, self._end_reason)


class IterableBody(StreamBody):
    """Sends whatever the route author's iterable yields, as it yields it (``str`` as UTF-8)."""

    def __init__(self, runtime: StreamRuntime, content: Iterable[bytes | str]) -> None:
        super().__init__(runtime)
        self._content = content

    def chunks(self) -> Iterator[bytes]:
        for item in self._content:
            if isinstance(item, str):
                item = item.encode("utf-8")
            if item:  # gunicorn ends a chunked body at an empty chunk; never emit one mid-stream
                yield item
            self.check_shutdown()

    def cleanup(self) -> None:
        close = getattr(self._content, "close", None)
        if close is not None:
            close()


class WriterBody(StreamBody):
    """The socket side of a :class:`StreamingWriter`: takes what the writer pushed into a bounded pipe."""

    def __init__(self, runtime: StreamRuntime) -> None:
        super().__init__(runtime)
        settings = runtime.settings
        self.batch_bytes: int = settings["WRITE_BATCH_BYTES"]
        self.flush_interval: float = settings["FLUSH_INTERVAL"]
        self.pipe = Pipe(limit=self.batch_bytes * PIPE_BATCHES, wake_at=self.batch_bytes, count_bytes=True)
        self.task: Task | None = None
        self._function: Callable[[StreamingWriter], Any] | None = None
        self._app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run_in_task(self, function: Callable[[StreamingWriter], Any]) -> None:
        self._function = function

    def chunks(self) -> Iterator[bytes]:
        if self._function is not None:
            self.task = spawn(self._produce, name="rover-stream-writer")
        take = self.pipe.take
        while True:
            try:
                parts = take(self.flush_interval)
            except FeedEnded:
                return
            if parts:
                yield b"".join(parts)
            self.check_shutdown()

    def _produce(self) -> None:
        assert self._function is not None
        writer = StreamingWriter(body=self)
        try:
            with self._app.app_context():  # current_app works in the writer; the request is over
                self._function(writer)
        except PipeClosed:
            writer.closed = True
        except Exception as exc:
            self.pipe.finish(exc)
            return
        writer.close()

    def wake(self) -> None:
        self.pipe.wake()

    def cleanup(self) -> None:
        self.pipe.close()
        if self.task is not None:
            self.task.cancel()


class StreamingWriter:
    """A file-like writer whose bytes reach the client while it is still writing.

    Used as ``with response.writer() as w:`` or passed to a function registered with ``@response.writer``.
    ``write`` blocks while the client is behind by more than a few batches (backpressure), and raises
    :class:`~rover_stream.transport.pipe.PipeClosed` once the client has gone, which ends the writer. Leaving the
    ``with`` block with an exception aborts the response (the client sees a failed transfer).
    """

    def __init__(self, response: StreamingResponse | None = None, *, body: WriterBody | None = None) -> None:
        if body is None:
            if response is None or not isinstance(response.body, WriterBody):
                raise RoverStreamError(
                    "StreamingWriter needs a StreamingResponse created without content, e.g. "
                    "StreamingResponse(content_type='text/csv')."
                )
            body = response.body
        self._body = body
        self._pipe = body.pipe
        self.closed = False

    def write(self, data: bytes | str) -> int:
        if self.closed:
            raise ValueError("write to a closed StreamingWriter")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if data:
            if not self._body.started and self._pipe.would_block(len(data)):
                raise RoverStreamError(
                    "This StreamingWriter wrote more than "
                    f"{self._body.batch_bytes * PIPE_BATCHES} bytes before the view returned its response, "
                    "so nothing could be sent yet. To stream while writing, register the writing function "
                    "with @response.writer instead of writing inside the view."
                )
            self._pipe.push(data)
        return len(data)

    def flush(self) -> None:
        self._pipe.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pipe.finish()

    def abort(self, error: BaseException) -> None:
        self.closed = True
        self._pipe.finish(error)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()


class StreamingResponse(Response):
    """A response whose body is streamed as it is produced.

    ``StreamingResponse(generator, content_type="text/plain")`` sends each chunk the generator yields.
    ``StreamingResponse(content_type="text/csv")`` without content is written to with :meth:`writer`.
    """

    def __init__(
        self,
        content: Iterable[bytes | str] | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        *,
        media_type: str | None = None,
        body: StreamBody | None = None,
    ) -> None:
        runtime = get_runtime()
        if body is None:
            body = IterableBody(runtime, content) if content is not None else WriterBody(runtime)
        self.body: StreamBody = body
        super().__init__(
            body, status=status, headers=dict(headers or {}),
            content_type=content_type or media_type or "application/octet-stream", direct_passthrough=True,
        )
        # A long response must reach the client as it is produced: tell nginx not to buffer it.
        self.headers.setdefault("X-Accel-Buffering", "no")

    def __call__(self, environ: Any, start_response: Any) -> Any:
        self.body.handed_over = True
        park = getattr(self.body, "park", None)
        if park is not None and environ["REQUEST_METHOD"] != "HEAD":
            handled = park(environ, self)
            if handled is not None:
                return handled
        return super().__call__(environ, start_response)

    def writer(self, function: Callable[[StreamingWriter], Any] | None = None) -> Any:
        """``with response.writer() as w: w.write(...)`` inside the view (a small body, written before the
        response is returned), or ``@response.writer`` on a function taking the writer, which runs in its
        own greenlet once the client is connected: it streams as it writes, with backpressure."""
        if not isinstance(self.body, WriterBody):
            raise RoverStreamError("writer() is for a StreamingResponse created without content.")
        if function is None:
            return StreamingWriter(self)
        self.body.run_in_task(function)
        return function


def _download_headers(filename: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(headers or {})
    if filename:
        from werkzeug.http import dump_options_header

        result.setdefault("Content-Disposition", dump_options_header("attachment", {"filename": filename}))
    return result


def csv_response(
    rows: Iterable[Sequence[Any] | Mapping[str, Any] | Any],
    header: Sequence[str] | None = None,
    *,
    filename: str | None = "data.csv",
    headers: Mapping[str, str] | None = None,
    **fmtparams: Any,
) -> StreamingResponse:
    """Stream ``rows`` as a CSV download (``text/csv; charset=utf-8``), batched into large chunks."""
    settings = get_runtime().settings
    chunks = csv_chunks(rows, header, batch_bytes=settings["WRITE_BATCH_BYTES"],
                        flush_interval=settings["FLUSH_INTERVAL"], **fmtparams)
    return StreamingResponse(chunks, headers=_download_headers(filename, headers),
                             content_type="text/csv; charset=utf-8")


def ndjson_response(
    records: Iterable[Any],
    *,
    filename: str | None = None,
    headers: Mapping[str, str] | None = None,
    default: Callable[[Any], Any] | None = None,
) -> StreamingResponse:
    """Stream ``records`` as newline-delimited JSON (``application/x-ndjson``), batched into large chunks."""
    settings = get_runtime().settings
    chunks = ndjson_chunks(records, batch_bytes=settings["WRITE_BATCH_BYTES"],
                           flush_interval=settings["FLUSH_INTERVAL"], default=default)
    return StreamingResponse(chunks, headers=_download_headers(filename, headers),
                             content_type="application/x-ndjson")
