"""Files and images from disk, never read into memory: conditional requests, byte ranges, fast sendfile.

:func:`send_from_directory` confines a client-supplied name to one folder (``..``, encoded traversal,
absolute paths, and symlinks whose target lies outside the folder give 404) and :func:`send_file` answers
with ``Content-Length``, ``ETag``, ``Last-Modified`` and ``Accept-Ranges``; ``If-None-Match``/
``If-Modified-Since`` give 304, one ``Range`` gives 206, an unsatisfiable one 416 (several ranges are
answered with the whole file, which HTTP allows).

Under gunicorn, the body writes the file with ``os.sendfile`` straight to the client socket. gevent's own
``socket.sendfile`` is an 8 KiB ``send`` loop in Python; ours asks the kernel for the whole remainder per
call, calls again at once while the socket takes more, and only when it answers EAGAIN waits cooperatively
for the socket's buffer to drain (on one event-loop watcher for the whole transfer). The first bytes go
through the server's normal write, which sends the headers first. Elsewhere (the development server, TLS)
the body reads and yields ``FILE_CHUNK_SIZE`` chunks.

Neither TCP_CORK (nginx's ``tcp_nopush``) nor a small TCP_NOTSENT_LOWAT is set; both were measured over
loopback (``bench/downloads.py``, 512 MiB). The cork moves the kernel's transmit work from the server's
``sendfile`` to the client's reads, which is where the bytes are also copied. A 256 KiB unsent limit does
the opposite, and about halves the client's CPU per download, but costs 10-17 % of throughput when the
worker has to wait for a CPU: the megabytes left queued in the socket are what carry the client through
the worker's scheduling delays.
"""

from __future__ import annotations

import mimetypes
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Response, request
from werkzeug.http import dump_options_header, http_date, parse_date
from werkzeug.security import safe_join

from ..concurrency import gevent_active
from ..errors import ApiError, StreamAborted, error_response
from ..runtime import StreamRuntime, get_runtime
from .sockets import MIN_PROGRESS, bytes_taken, unacknowledged, wait_writable
from .streaming import ClientDisconnected, StreamBody, StreamingResponse

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
        self._sendfile_socket = self.client_socket if use_sendfile and _plain_http1(environ) else None
        self._send_timeout: float = runtime.settings["SEND_TIMEOUT"]

    def chunks(self) -> Iterator[bytes]:
        offset, end = self.start, self.start + self.length
        if self._sendfile_socket is not None and self.length > FIRST_WRITE:
            first = self._read(offset, FIRST_WRITE)
            yield first
            offset += len(first)
            self._sendfile(offset, end)
            return
        while offset < end:
            chunk = self._read(offset, min(self.chunk_size, end - offset))
            offset += len(chunk)
            yield chunk
            self.check_shutdown()

    def _read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if not data:
            raise StreamAborted("the file shrank while it was being sent")
        return data

    def _sendfile(self, offset: int, end: int) -> None:
        out = self._sendfile_socket.fileno()  # type: ignore[union-attr]
        # SEND_TIMEOUT counts time without enough progress: from the moment the socket takes no more, the
        # client must take MIN_PROGRESS bytes (acknowledged, or taken by the socket when that is unknown)
        # in every SEND_TIMEOUT. Not "the socket did not become writable": with a send buffer of megabytes
        # that takes a slow client, still reading, longer than SEND_TIMEOUT.
        behind_since = 0.0
        queued = sent_since = 0
        writable = _WritableWaiter(out)
        try:
            while offset < end:
                self.check_shutdown()
                try:
                    sent = os.sendfile(out, self._fd, offset, min(end - offset, SENDFILE_MAX))
                except BlockingIOError:
                    now = time.monotonic()
                    if not behind_since:
                        behind_since, queued, sent_since = now, unacknowledged(out), 0
                    elif now - behind_since > self._send_timeout:
                        taken, waiting = bytes_taken(out, queued, sent_since)
                        if taken < MIN_PROGRESS:
                            # Reset, not close: a closed socket would go on sending its megabytes of buffer
                            # to the trickling client, from kernel memory, for minutes.
                            self._sendfile_socket.setsockopt(  # type: ignore[union-attr]
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            raise StreamAborted(
                                f"the client took {max(taken, 0)} bytes in {self._send_timeout:g} s") from None
                        behind_since, queued, sent_since = now, waiting, 0
                    writable.wait(SHUTDOWN_CHECK_INTERVAL)  # in slices: a shutdown is noticed meanwhile
                    continue
                except (BrokenPipeError, ConnectionResetError) as exc:
                    raise ClientDisconnected from exc
                if sent == 0:
                    raise StreamAborted("the file shrank while it was being sent")
                sent_since += sent
                offset += sent
                self.bytes_sent += sent
        finally:
            writable.close()

    def cleanup(self) -> None:
        os.close(self._fd)


class _WritableWaiter:
    """Waits until socket ``fd`` takes more bytes. Under gevent it keeps one io watcher for the whole
    transfer: ``gevent.socket.wait_write`` makes a new watcher per wait, and libev registers each new one
    with the kernel again (an ``epoll_ctl`` that fails with EEXIST, at every wait). Elsewhere, poll()."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._watcher: Any = None
        if gevent_active():
            from gevent import get_hub

            self._watcher = get_hub().loop.io(fd, 2)  # 2: writable

    def wait(self, timeout: float) -> None:
        """Until the socket is writable or ``timeout`` seconds have passed (the caller then just tries)."""
        if self._watcher is None:
            wait_writable(self._fd, timeout)
            return
        from gevent.socket import wait

        try:
            wait(self._watcher, timeout)
        except OSError:  # gevent raises socket.timeout (an OSError) when the time is up
            pass

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None


def _plain_http1(environ: Mapping[str, Any]) -> bool:
    """Whether bytes may go straight to the client socket: HTTP/1.x without TLS. (Behind a proxy,
    ``wsgi.url_scheme`` says what the *proxy's* client used, so look at the socket itself.)"""
    import ssl

    sock = environ.get("gunicorn.socket")
    return (sock is not None and not isinstance(sock, ssl.SSLSocket)
            and str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/1"))


def _not_found(filename: str) -> ApiError:
    return ApiError(f"No file named {filename!r} is available here.", status=404, code="not_found")


def _inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (both absolute and free of symlinks)."""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # one relative, the other absolute (or different drives)
        return False


def _fd_path(fd: int) -> str | None:
    """Where the kernel says the open file ``fd`` is, when it says (Linux's /proc), else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _open_confined(root: str, path: str, filename: str) -> int:
    """Open ``path`` (already joined below ``root`` by safe_join) for reading if, with every symlink
    resolved, it is a regular file inside ``root``'s real path; else raise the JSON 404. A symlink that
    stays inside the folder is followed; one that leads out of it is as missing as a missing file."""
    try:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
    except (ValueError, OSError):  # a NUL byte in the name, a symlink loop...
        raise _not_found(filename) from None
    if not _inside(real, real_root):
        raise _not_found(filename)
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        # The resolved path, without following a symlink put there since (O_NOFOLLOW), and without waiting
        # for a writer if it is a FIFO (O_NONBLOCK; a FIFO is refused below anyway).
        fd = os.open(real, flags)
    except (ValueError, OSError):
        raise _not_found(filename) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_found(filename)
        # A folder on the way swapped for a symlink between realpath() and open(): ask the kernel where
        # the file it opened is.
        opened = _fd_path(fd)
        if opened is not None and not _inside(opened, real_root):
            raise _not_found(filename)
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_from_directory(directory: str | os.PathLike[str], filename: str, **kwargs: Any) -> Response:
    """Serve ``filename`` from ``directory``; anything outside it (``..``, an absolute path, a symlink that
    leads out of it), or missing, is a JSON 404. Takes :func:`send_file`'s keyword arguments."""
    root = os.fspath(directory)
    path = safe_join(root, filename)
    if path is None:
        raise _not_found(filename)
    fd = _open_confined(root, path, filename)
    try:
        # Named after the requested path (the link's name, not its target's), as send_file(path) would be.
        return _file_response_from(fd, path, **kwargs)
    except BaseException:
        os.close(fd)
        raise


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
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _not_found(os.path.basename(path)) from None
    try:
        return _file_response_from(fd, path, mimetype=mimetype, as_attachment=as_attachment,
                                   download_name=download_name, chunk_size=chunk_size, use_sendfile=use_sendfile,
                                   headers=headers)
    except BaseException:
        os.close(fd)
        raise


def _file_response_from(fd: int, path: str, *, mimetype: str | None = None, as_attachment: bool = False,
                        download_name: str | None = None, chunk_size: int | None = None,
                        use_sendfile: bool = True, headers: Mapping[str, str] | None = None) -> Response:
    """The response for the file open as ``fd`` (closed by the response, or by the caller on an error),
    named and typed after ``path``."""
    return _file_response(get_runtime(), fd, path, mimetype, as_attachment, download_name, chunk_size,
                          use_sendfile, headers)


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

    mtime = int(info.st_mtime)  # HTTP dates have whole seconds
    precondition = _preconditions(etag, mtime)
    if precondition is not None:
        os.close(fd)
        if precondition == 412:
            return error_response(412, "precondition_failed", "The file does not match the request's If-Match or "
                                  "If-Unmodified-Since condition.", headers)
        return Response(status=304, headers=headers, content_type=content_type)

    start, length, status = 0, size, 200
    span = _requested_range(size, etag, mtime)
    if span == "unsatisfiable":
        os.close(fd)
        headers["Content-Range"] = f"bytes */{size}"
        return error_response(416, "range_not_satisfiable",
                              f"The requested range is outside the file, which has {size} bytes.", headers)
    if isinstance(span, tuple):
        start, stop = span
        length, status = stop - start, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(length)
    body = FileBody(runtime, fd, start, length, chunk_size=chunk_size or runtime.settings["FILE_CHUNK_SIZE"],
                    use_sendfile=use_sendfile, environ=request.environ)
    return StreamingResponse(body=body, status=status, headers=headers, content_type=content_type)


def _etags(header: str) -> list[tuple[bool, str]]:
    """``(weak, opaque-tag)`` pairs of an If-Match / If-None-Match / If-Range value (``*`` as ``(False, "*")``)."""
    tags = []
    for part in header.split(","):
        part = part.strip()
        weak = part.startswith("W/")
        tags.append((weak, part[2:] if weak else part))
    return tags


def _preconditions(etag: str, mtime: int) -> int | None:
    """RFC 9110 section 13.2.2, for GET and HEAD: 412, 304, or None to go on."""
    quoted = f'"{etag}"'
    headers = request.headers
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not any(tag in ("*", quoted) and not weak for weak, tag in _etags(if_match)):
            return 412  # If-Match uses the strong comparison
    elif (since := parse_date(headers.get("If-Unmodified-Since"))) is not None and mtime > since.timestamp():
        return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if any(tag in ("*", quoted) for _, tag in _etags(if_none_match)):
            return 304  # If-None-Match uses the weak comparison
    elif (since := parse_date(headers.get("If-Modified-Since"))) is not None and mtime <= since.timestamp():
        return 304
    return None


def _requested_range(size: int, etag: str, mtime: int) -> tuple[int, int] | str | None:
    """The ``(start, stop)`` to send for a single byte range, "unsatisfiable" (416), or None for the whole
    file: no Range, another unit, several ranges (allowed to be answered whole), a syntax error, or an
    If-Range that no longer matches."""
    # "bytes=-0" (the last zero bytes) is valid but unsatisfiable; Werkzeug reads it as "bytes=0-" or, from
    # 3.1.9, not at all: it is recognised here, whatever the version.
    zero_suffix = _zero_suffix(request.headers.get("Range", ""))
    byte_range = request.range
    if not zero_suffix and (byte_range is None or byte_range.units != "bytes" or len(byte_range.ranges) != 1):
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None:
        if if_range.startswith(('"', "W/")):
            weak, tag = _etags(if_range)[0]
            if weak or tag != f'"{etag}"':  # If-Range needs a strong validator
                return None
        elif (date := parse_date(if_range)) is None or int(date.timestamp()) != mtime:
            return None
    if zero_suffix or byte_range is None:
        return "unsatisfiable"
    first, last = byte_range.ranges[0]  # Werkzeug: last is exclusive; a suffix has a negative first
    if first < 0:  # "bytes=-N": the last N bytes, or the whole file when it is shorter
        first, last = max(0, size + first), size
    elif last is None or last > size:
        last = size
    if first >= size or first >= last:
        return "unsatisfiable"
    return first, last


def _zero_suffix(header: str) -> bool:
    """Whether a single-range ``Range`` header asks for the last zero bytes (``bytes=-0``): unsatisfiable
    (RFC 9110 section 14.1.1: a suffix range needs a non-zero length)."""
    unit, _, spec = header.partition("=")
    spec = spec.strip()
    length = spec[1:].strip()
    return unit.strip().lower() == "bytes" and spec.startswith("-") and length.isdigit() and int(length) == 0
