"""What a response needs to know of its socket: whether the peer closed it, whether it can take more, and
how much of what was written the peer has acknowledged (progress, for ``SEND_TIMEOUT``). Under gevent and
under real threads alike."""

from __future__ import annotations

import fcntl
import select
import struct
import termios
from collections.abc import Callable
from typing import Any

from ..concurrency import gevent_active


def on_peer_close(sock: Any, callback: Callable[[], Any]) -> Callable[[], None] | None:
    """Under gevent, call ``callback`` (from the event loop; it must not block) as soon as the peer of
    ``sock`` closes or resets the connection; return a function that cancels the watch. Returns None
    elsewhere: a vanished client is then noticed at the next write.

    A response socket is not read while the response is sent, so it turns readable only when the client
    closes (no bytes available: end of file or reset) or sends more data (a pipelined request: the watch
    ends without a verdict).
    """
    if not gevent_active():
        return None
    from gevent import get_hub

    fd = sock if isinstance(sock, int) else sock.fileno()
    watcher = get_hub().loop.io(fd, 1)  # 1: readable

    def readable() -> None:
        watcher.stop()
        try:
            available = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            available = 0
        if available == 0:
            callback()

    def cancel() -> None:
        watcher.stop()
        watcher.close()

    watcher.start(readable)
    return cancel


def wait_writable(fd: int, timeout: float) -> bool:
    """Block (cooperatively under gevent) until ``fd`` can be written to; False after ``timeout`` seconds."""
    if gevent_active():
        from gevent.socket import wait_write

        try:
            wait_write(fd, timeout=timeout)
        except OSError:  # gevent raises socket.timeout (an OSError) when the time is up
            return False
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))


def unacknowledged(fd: int) -> int:
    """Bytes written to socket ``fd`` that its peer has not acknowledged yet (SIOCOUTQ); -1 if unknown.
    When it goes down, the client is reading."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # AttributeError: no TIOCOUTQ on this system
        return -1


def bytes_taken(fd: int, queued: int, written: int) -> tuple[int, int]:
    """What the client of socket ``fd`` took since :func:`unacknowledged` said ``queued`` and ``written``
    more bytes were written to the socket (what it acknowledged; ``written`` when that is unknown), and
    the bytes unacknowledged now."""
    waiting = unacknowledged(fd)
    if queued >= 0 and waiting >= 0:
        return queued + written - waiting, waiting
    return written, waiting


#: Bytes a client must take in every SEND_TIMEOUT while it is behind: a client that reads a trickle (a
#: slowloris reader) is cut like one that reads nothing.
MIN_PROGRESS = 64 * 1024
