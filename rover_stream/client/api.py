"""``Client``: one server's HTTP API (publish, stream stats, health), and its streams, rooms and files.

::

    from rover_stream.client import Client

    server = Client("http://127.0.0.1:8000", token=token)
    server.publish("news", {"title": "Landing confirmed"}, event="headline")
    for event in server.listen("news", "alerts"):
        ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .download import DownloadResult, download
from .errors import ConnectionFailed
from .eventsource import EventSource
from .rooms import RoomClient
from .transport import CONNECT_TIMEOUT, NETWORK_ERRORS, bearer, open_request

#: Where ``rover-stream serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8000"


def stream_url(base_url: str, channels: list[str] | tuple[str, ...]) -> str:
    """The SSE URL of one channel (``/realtime/<channel>``) or several (``/realtime?channel=a&channel=b``)."""
    base = base_url.rstrip("/")
    if len(channels) == 1:
        return f"{base}/realtime/{quote(channels[0], safe='')}"
    return f"{base}/realtime?{urlencode([('channel', name) for name in channels])}"


class Client:
    """The server at ``url``; ``token`` (an access token) goes with every request as a bearer token."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request_json(self, method: str, path: str, body: Any = None) -> Any:
        """Send ``body`` as JSON (when not None) and return the parsed JSON answer. Raises
        :class:`HTTPError` for a status other than 2xx, :class:`ConnectionFailed` when the server cannot be
        reached."""
        url = self.url + path
        headers: dict[str, str | bytes] = {"Accept": "application/json", **bearer(self.token)}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            exchange = open_request(method, url, headers, data, timeout=self.timeout)
            try:
                if not 200 <= exchange.status < 300:
                    raise exchange.error()
                raw = exchange.response.read()
            finally:
                exchange.close()
        except NETWORK_ERRORS as exc:
            raise ConnectionFailed(f"Could not reach {url}: {exc}.") from exc
        return json.loads(raw) if raw else None

    def publish(self, channel: str, data: Any, event: str | None = None) -> dict[str, Any]:
        """Publish ``data`` (any JSON value) on ``channel``; returns ``{"id", "channel", "subscribers"}``."""
        body = {"channel": channel, "data": data, **({"event": event} if event else {})}
        return self.request_json("POST", "/api/broadcast", body)  # type: ignore[no-any-return]

    def stream_stats(self) -> dict[str, Any]:
        """``GET /admin/stream-stats`` (an admin token when the server has a secret)."""
        return self.request_json("GET", "/admin/stream-stats")  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any]:
        return self.request_json("GET", "/health")  # type: ignore[no-any-return]

    def listen(self, *channels: str, **options: Any) -> EventSource:
        """An :class:`EventSource` on the channels (options as :class:`EventSource`'s)."""
        if not channels:
            raise ValueError("Name at least one channel.")
        headers = {**bearer(self.token), **options.pop("headers", {})}
        return EventSource(stream_url(self.url, channels), headers=headers, **options)

    def room(self, room: str, user: str | None = None) -> RoomClient:
        return RoomClient(self.url, room, user, token=self.token, timeout=self.timeout)

    def download(self, path: str, output: str | Path | None = None, *, resume: bool = False,
                 progress: Callable[[int, int | None], None] | None = None) -> DownloadResult:
        """Download ``path`` (``/download/<name>``, ``/large-file``) to ``output``; see :func:`download`."""
        return download(self.url + path, output, resume=resume, headers=bearer(self.token), progress=progress)
