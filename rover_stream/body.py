"""Request bodies: one policy for every route that reads one.

- **Size**: at most ``ROVER_MAX_BODY_BYTES`` (or the limit a route asks for). A ``Content-Length`` beyond
  it is answered 413 before a byte is read; a chunked body is cut at the limit.
- **Time**: the whole body within ``ROVER_BODY_TIMEOUT`` seconds, and after the first ``GRACE`` seconds at
  ``ROVER_BODY_MIN_RATE`` bytes a second or more; else 408. (Under gevent; elsewhere only the size holds.)
- **Number**: at most 5% of a worker's connections read a body at once; beyond, 503 at once. A flood of
  clients that send their bodies a byte at a time would otherwise hold every greenlet of the worker, and
  no new connection -- not even ``/health`` -- would be accepted until they gave up.
- **Malformed** chunked encoding, or a client that hangs up mid-body: 400.

A body the server refuses is never read to its end: the connection is closed after the answer, so that the
server does not wait for (or swallow) the rest of a body it will not use.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from flask import has_request_context, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .concurrency import gevent_active
from .errors import ApiError
from .runtime import get_runtime
from .wire.untrusted import Rejected, parse_json

#: Seconds a body may take before the minimum rate applies (a slow start: a mobile network, a TLS
#: renegotiation, a proxy that buffers).
GRACE = 5.0
#: Bytes asked for per read: the rate is checked between reads.
READ_SIZE = 16 * 1024
_READERS_LOCK = threading.Lock()


def json_body() -> Any:
    """The request's JSON body, read under the body policy above and parsed within bounds
    (:mod:`.wire.untrusted`): 415 when it is not ``application/json``, 413/408/400 from the policy, 400
    ``invalid_json`` when it is not acceptable JSON."""
    if request.mimetype != "application/json":
        raise ApiError(f"Send the body as application/json, not {request.mimetype or 'nothing'!r}.",
                       status=415, code="unsupported_media_type")
    try:
        return parse_json(read_body())
    except Rejected as exc:
        raise ApiError(f"The body is refused: {exc}.", code="invalid_json") from None


class BodyRefused(ApiError):
    """A body the server will not read further; the connection is closed after the answer (wherever the
    error is raised: the handler of ApiError is installed app-wide)."""

    def to_response(self) -> Any:
        response = super().to_response()
        sock = request.environ.get("gunicorn.socket") if has_request_context() else None
        if sock is not None:
            response.call_on_close(lambda: _shut_reading(sock))
        return response


def read_body(limit: int | None = None) -> bytes:
    """The current request's body under the policy above, or :class:`BodyRefused`: 413, 408, 400, or 503
    when the worker is reading as many bodies as it may."""
    runtime = get_runtime()
    settings = runtime.settings
    limit = settings["MAX_BODY_BYTES"] if limit is None else limit
    declared = request.content_length
    chunked = _is_chunked()
    if declared is not None and declared > limit:
        raise BodyRefused(f"The body has {declared} bytes; at most {limit} are accepted.", status=413,
                          code="request_entity_too_large")
    if not declared and not chunked:
        return b""
    with _READERS_LOCK:  # under real threads, += is not atomic: a count that drifts up would refuse forever
        if runtime.body_readers >= settings.max_body_readers:
            raise BodyRefused(f"This worker is reading its maximum of {settings.max_body_readers} request bodies "
                              "at once; retry shortly.", status=503, code="too_many_bodies",
                              headers={"Retry-After": "1"})
        runtime.body_readers += 1
    try:
        body = _read(limit, declared, settings["BODY_TIMEOUT"], settings["BODY_MIN_RATE"])
        request.environ[_BODY_READ] = True
        return body
    finally:
        with _READERS_LOCK:
            runtime.body_readers -= 1


def _read(limit: int, declared: int | None, timeout: float, min_rate: float) -> bytes:
    stream = request.stream
    chunks: list[bytes] = []
    received = 0
    start = time.monotonic()
    deadline_rule = _Deadline() if gevent_active() else None
    while True:
        # The latest moment this read may end: the whole body's deadline, or when the bytes it asks for
        # would have come at the minimum rate (a read returns only once it has them all, or the body ended).
        asked = READ_SIZE if declared is None else min(READ_SIZE, declared - received)
        allowed = min(timeout, max(GRACE, (received + asked) / min_rate)) - (time.monotonic() - start)
        try:
            chunk = deadline_rule.read(stream, READ_SIZE, allowed) if deadline_rule else stream.read(READ_SIZE)
        except _TooSlow:
            elapsed = time.monotonic() - start
            raise BodyRefused(f"The body came too slowly: {received} bytes in {elapsed:.1f} s (the whole body is "
                              f"due within {timeout:g} s, at {min_rate:g} bytes a second or more).", status=408,
                              code="request_timeout") from None
        except RequestEntityTooLarge:
            raise BodyRefused(f"The body is larger than {limit} bytes.", status=413,
                              code="request_entity_too_large") from None
        except (ParseException, ClientDisconnected, OSError, ValueError) as exc:
            raise BodyRefused(f"The body could not be read: {type(exc).__name__}.", status=400,
                              code="malformed_body") from None
        if not chunk:
            if declared is not None and received < declared:  # the client hung up mid-body
                raise BodyRefused(f"The body ended after {received} of its {declared} bytes.", status=400,
                                  code="malformed_body")
            return b"".join(chunks)
        received += len(chunk)
        if received > limit:
            raise BodyRefused(f"The body is larger than {limit} bytes.", status=413, code="request_entity_too_large")
        chunks.append(chunk)


def _is_chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


class _TooSlow(Exception):
    pass


class _Deadline:
    """Under gevent: a read that raises :class:`_TooSlow` when it has not returned within its time."""

    def __init__(self) -> None:
        import gevent

        self._timeout = gevent.Timeout

    def read(self, stream: Any, size: int, seconds: float) -> bytes:
        if seconds <= 0:
            raise _TooSlow()
        timer = self._timeout(seconds, _TooSlow)
        timer.start()
        try:
            return stream.read(size)  # type: ignore[no-any-return]
        finally:
            timer.close()


_BODY_READ = "rover_stream.body_read"


def close_unread_bodies(response: Any) -> Any:
    """``after_request``: the connection of a request whose body an error answer left unread (a 401 or a
    415 before the body, say) is shut once the answer is sent. gunicorn would otherwise read the rest of
    that body and throw it away before the next request on the connection -- for as long as the client
    takes to send it."""
    environ = request.environ
    sock = environ.get("gunicorn.socket")
    if sock is None or environ.get(_BODY_READ) or response.status_code < 400:
        return response
    if request.content_length or _is_chunked():
        response.call_on_close(lambda: _shut_reading(sock))
    return response


def _shut_reading(sock: Any) -> None:
    """Shut the reading side through a duplicate of the descriptor: on a TLS socket, shutting the
    SSLSocket itself would drop its TLS state, and gunicorn could then write in clear."""
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RD)
    except OSError:
        pass
