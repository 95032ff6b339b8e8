"""Files and images from disk, never read into memory: conditional requests, byte ranges, fast sendfile.

:func:`send_from_directory` confines a client-supplied name to one folder (``..``, encoded traversal and
absolute paths give 404) and :func:`send_file` answers with ``Content-Length``, ``ETag``,
``Last-Modified`` and ``Accept-Ranges``; ``If-None-Match``/``If-Modified-Since`` give 304, one ``Range``
gives 206, an unsatisfiable one 416 (several ranges are answered with the whole file, which HTTP allows).

Under gunicorn, the body writes the file with ``os.sendfile`` straight to the client socket. gevent's own
``socket.sendfile`` is an 8 KiB ``send`` loop in Python; ours asks the kernel for the whole remainder per
call and, when the socket's buffer is full, waits cooperatively for it to drain. The first bytes go through
the server's normal write, which sends the headers first. Elsewhere (the development server, TLS) the body
reads and yields ``FILE_CHUNK_SIZE`` chunks.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Response, request
from werkzeug.http import dump_options_header, http_date, is_resource_modified
from werkzeug.security import safe_join

from .concurrency import wait_writable
from .errors import ApiError, StreamAborted
from .runtime import StreamRuntime, get_runtime
from .streaming import StreamBody, StreamingResponse

#: Bytes sent through the server's own write before sendfile takes over; they carry the headers out.
FIRST_WRITE = 64 * 1024
#: Most bytes asked of one sendfile call; the kernel sends what the socket buffer takes.
SENDFILE_MAX = 16 * 1024 * 1024
#: Longest wait for a slow client's socket before looking at the shutdown flag again.
SHUTDOWN_CHECK_INTERVAL = 0.25


class FileBody(StreamBody):
    kind = "file"

    def __init__(self, runtime: StreamRuntime, fd: int, start: int, length: int, *, chunk_size: int,
                 use_sendfile: bool, environ: Mapping[str, Any]) -> None:
        self._fd = fd
        super().__init__(runtime)
        self.start = start
        self.length = length
        self.chunk_size = chunk_size
        self._socket = environ.get("gunicorn.socket") if use_sendfile else None
        if environ.get("wsgi.url_scheme") != "http" or not str(environ.get("SERVER_PROTOCOL")).startswith("HTTP/1"):
            self._socket = None  # TLS or HTTP/2: bytes must go through the server's framing
        self._send_timeout: float = runtime.settings["SEND_TIMEOUT"]

    def chunks(self) -> Iterator[bytes]:
        offset, end = self.start, self.start + self.length
        if self._socket is not None and self.length > FIRST_WRITE:
            first = self._read(offset, FIRST_WRITE)
            yield first
            offset += len(first)
            self._sendfile(offset, end)
            return
        while offset < end:
            chunk = self._read(offset, min(self.chunk_size, end - offset))
            offset += len(chunk)
            yield chunk

    def _read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if not data:
            raise StreamAborted("the file shrank while it was being sent")
        return data

    def _sendfile(self, offset: int, end: int) -> None:
        out = self._socket.fileno()  # type: ignore[union-attr]
        runtime = self.runtime
        stalled_since = 0.0
        while offset < end:
            if runtime.shutting_down:
                self._end_reason = "shutdown"
                raise StreamAborted("the server is shutting down")
            try:
                sent = os.sendfile(out, self._fd, offset, min(end - offset, SENDFILE_MAX))
            except BlockingIOError:
                # Wait in short slices so that a shutdown is noticed while a slow client holds us up.
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > self._send_timeout:
                    raise StreamAborted(f"the client read nothing for {self._send_timeout:g} s") from None
                if wait_writable(out, SHUTDOWN_CHECK_INTERVAL):
                    stalled_since = 0.0
                continue
            if sent == 0:
                raise StreamAborted("the file shrank while it was being sent")
            offset += sent
            self.bytes_sent += sent

    def cleanup(self) -> None:
        os.close(self._fd)


def _not_found(filename: str) -> ApiError:
    return ApiError(f"No file named {filename!r} is available here.", status=404, code="not_found")


def send_from_directory(directory: str | os.PathLike[str], filename: str, **kwargs: Any) -> Response:
    """Serve ``filename`` from ``directory``; anything outside it, or missing, is a JSON 404."""
    path = safe_join(os.fspath(directory), filename)
    if path is None or not os.path.isfile(path):
        raise _not_found(filename)
    return send_file(path, **kwargs)


def send_file(
    path: str | os.PathLike[str],
    *,
    mimetype: str | None = None,
    as_attachment: bool = False,
    download_name: str | None = None,
    chunk_size: int | None = None,
    use_sendfile: bool = True,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Serve one file with conditional and range support. ``chunk_size`` sets the size of each chunk when
    the file is streamed chunk by chunk (``use_sendfile=False``, or no sendfile on this server)."""
    runtime = get_runtime()
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _not_found(os.path.basename(path)) from None
    try:
        return _file_response(runtime, fd, path, mimetype, as_attachment, download_name, chunk_size,
                              use_sendfile, headers)
    except BaseException:
        os.close(fd)
        raise


def _file_response(runtime: StreamRuntime, fd: int, path: str, mimetype: str | None, as_attachment: bool,
                   download_name: str | None, chunk_size: int | None, use_sendfile: bool,
                   extra_headers: Mapping[str, str] | None) -> Response:
    info = os.fstat(fd)
    size = info.st_size
    etag = f"{info.st_mtime_ns:x}-{size:x}-{info.st_ino:x}"
    headers: dict[str, str] = {
        "ETag": f'"{etag}"',
        "Last-Modified": http_date(info.st_mtime),
        "Accept-Ranges": "bytes",
        # Clients may keep the file but must revalidate it (a cheap 304 thanks to the ETag).
        "Cache-Control": "no-cache",
    }
    if as_attachment or download_name:
        disposition = "attachment" if as_attachment else "inline"
        headers["Content-Disposition"] = dump_options_header(
            disposition, {"filename": download_name or os.path.basename(path)}
        )
    headers.update(extra_headers or {})
    content_type = mimetype or mimetypes.guess_type(path)[0] or "application/octet-stream"
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"

    environ = request.environ
    modified = datetime.fromtimestamp(int(info.st_mtime), tz=timezone.utc)
    if not is_resource_modified(environ, etag=etag, last_modified=modified):
        os.close(fd)
        return _bodyless(304, headers, content_type)

    start, length, status = 0, size, 200
    byte_range = request.range
    if byte_range is not None and len(byte_range.ranges) == 1 and _if_range_matches(etag, info.st_mtime):
        span = byte_range.range_for_length(size)
        if span is None:
            os.close(fd)
            headers["Content-Range"] = f"bytes */{size}"
            response = _bodyless(416, headers, "application/json")
            response.set_data(
                b'{"error":"range_not_satisfiable","message":"The requested range is outside the file, '
                b'which has ' + str(size).encode() + b' bytes.","status":416}'
            )
            return response
        start, stop = span
        length, status = stop - start, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(length)
    body = FileBody(runtime, fd, start, length, chunk_size=chunk_size or runtime.settings["FILE_CHUNK_SIZE"],
                    use_sendfile=use_sendfile, environ=environ)
    return StreamingResponse(body=body, status=status, headers=headers, content_type=content_type)


def _if_range_matches(etag: str, mtime: float) -> bool:
    """A Range with If-Range applies only if the file is still the one the client has part of."""
    if_range = request.if_range
    if if_range.etag is None and if_range.date is None:
        return True
    if if_range.etag is not None:
        return if_range.etag == etag
    assert if_range.date is not None
    return int(if_range.date.timestamp()) == int(mtime)


def _bodyless(status: int, headers: dict[str, str], content_type: str) -> Response:
    return Response(status=status, headers=headers, content_type=content_type)
