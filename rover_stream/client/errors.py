"""What the client raises: one base class, and subclasses that carry what the server said."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import RoverStreamError


class ClientError(RoverStreamError):
    """Base class of every exception the client raises on purpose."""


class HTTPError(ClientError):
    """The server answered with a status the request cannot go on with. ``code`` and ``message`` come from
    the server's JSON error body (``{"error": CODE, "message": SENTENCE, "status": N}``) when it sent one."""

    def __init__(self, url: str, status: int, reason: str = "", *, code: str | None = None,
                 message: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        text = f"{url} answered {status}{' ' + reason if reason else ''}"
        super().__init__(f"{text}: {message}" if message else f"{text}.")

    @classmethod
    def from_body(cls, url: str, status: int, reason: str, body: bytes,
                  headers: Mapping[str, str] | None = None) -> HTTPError:
        """The error for a response whose (start of the) body is ``body``."""
        code = message = None
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            code, message = parsed.get("error"), parsed["message"]
        elif body.strip() and len(body) < 500:
            message = body.decode("utf-8", "replace").strip()
        return cls(url, status, reason, code=code, message=message, headers=headers)


class StreamClosed(ClientError):
    """The server answered an event stream request with 204 No Content: the way a server tells an
    EventSource to stop for good. The client does not reconnect."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.status = 204
        super().__init__(f"{url} answered 204 No Content: the server ended the stream for good "
                         "(a client must not reconnect).")


class NotAnEventStream(ClientError):
    """A 200 answer whose Content-Type is not ``text/event-stream``: not an SSE endpoint (a wrong path, a
    proxy's error page...). Like a browser, the client does not reconnect."""

    def __init__(self, url: str, content_type: str) -> None:
        self.url = url
        self.content_type = content_type
        super().__init__(f"{url} answered with Content-Type {content_type or 'none'!r}, not 'text/event-stream': "
                         "it is not an event stream. Check the URL.")


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, timed out, reset), or a stream gave up reconnecting."""


class DownloadError(ClientError):
    """A download could not be completed as asked: the file on disk is left for ``--resume``."""


class RoomClosed(ClientError):
    """The room's WebSocket is closed: ``code`` is the close code (1000 normal, 1001 server going away,
    1008 policy, 1009 too big, 1013 too slow, 1006 connection lost without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"The room connection is closed ({code}{': ' + reason if reason else ''}).")
