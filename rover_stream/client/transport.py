"""One HTTP request on its own connection, with ``http.client``: what the stream, API and download clients
share. Plain blocking sockets, no third-party HTTP library, no gevent."""

from __future__ import annotations

import functools
import http.client
import socket
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

from .errors import HTTPError

#: Seconds to connect and to wait for the response's headers.
CONNECT_TIMEOUT = 10.0
#: Redirects followed per request, as browsers (and EventSource) follow them.
MAX_REDIRECTS = 5
#: Bytes of an error response read to find the server's JSON error message.
ERROR_BODY_LIMIT = 64 * 1024

NETWORK_ERRORS = (OSError, http.client.HTTPException)
"""What a lost connection raises: refused, reset, timed out, or cut in the middle of a chunk."""


@functools.cache
def user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rover-stream-client/{version('rover-stream')}"
    except PackageNotFoundError:  # a checkout that is not installed
        return "rover-stream-client"


class Exchange:
    """An open response and its connection; :meth:`interrupt` unblocks a read from any thread."""

    def __init__(self, url: str, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 sock: socket.socket | None) -> None:
        self.url = url
        self.connection = connection
        self.response = response
        #: The connection's socket. ``connection.sock`` is None once a ``Connection: close`` response has
        #: taken the socket over (as parked streams answer), so it is kept here.
        self.sock = sock

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str, default: str = "") -> str:
        return self.response.getheader(name, default) or default

    def error(self) -> HTTPError:
        """The response as an :class:`HTTPError`, with the server's JSON message when it sent one."""
        try:
            body = self.response.read(ERROR_BODY_LIMIT)
        except NETWORK_ERRORS:
            body = b""
        return HTTPError.from_body(self.url, self.status, self.response.reason, body, dict(self.response.getheaders()))

    def set_timeout(self, timeout: float | None) -> None:
        """Seconds a read of the body may wait for bytes before it raises ``TimeoutError``."""
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def interrupt(self) -> None:
        """Make a read blocked in another thread return: shut the socket down (closing it would not)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.response.close()
        self.connection.close()
        if self.sock is not None:
            self.sock.close()


def open_request(method: str, url: str, headers: Mapping[str, str | bytes] | None = None, body: bytes | None = None,
                 *, timeout: float = CONNECT_TIMEOUT, follow_redirects: bool = True) -> Exchange:
    """Send one request on a new connection and return once the response's headers have arrived. Network
    errors propagate as they are (``OSError``, ``http.client.HTTPException``); statuses are the caller's
    to judge. GET requests follow redirects."""
    redirects = 0
    while True:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Not an http:// or https:// URL: {url!r}.")
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname, parts.port, timeout=timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            connection.putheader("User-Agent", user_agent())
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            sock = connection.sock
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        location = response.getheader("Location")
        if follow_redirects and method == "GET" and response.status in (301, 302, 303, 307, 308) and location:
            response.close()
            connection.close()
            if redirects == MAX_REDIRECTS:
                raise HTTPError(url, response.status, response.reason,
                                message=f"more than {MAX_REDIRECTS} redirects; the last one to {location!r}")
            redirects += 1
            url = urljoin(url, location)
            continue
        return Exchange(url, connection, response, sock)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
