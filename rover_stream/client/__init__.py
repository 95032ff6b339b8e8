"""A Python client for a rover_stream server, and the library behind the ``rover-stream`` command.

Everything here is synchronous, plain Python -- blocking sockets and a thread where one is needed, no
gevent, no dependency beyond the package's own::

    from rover_stream.client import Client, EventSource, RoomClient

    for event in EventSource("http://127.0.0.1:8000/realtime/news"):   # reconnects and resumes by itself
        print(event.id, event.event, event.data)

    server = Client("http://127.0.0.1:8000", token=token)
    server.publish("news", {"title": "Landing confirmed"})

    with RoomClient("http://127.0.0.1:8000", "science", "ada") as room:
        room.send("hello")
        print(room.receive(timeout=5))

The modules, by role:

- ``sse`` -- :class:`EventSource`: an SSE stream parsed and reconnected as a browser does (the WHATWG rules).
- ``rooms`` -- :class:`RoomClient`: a member of a WebSocket room.
- ``api`` -- :class:`Client`: publish, stream stats, health; the other clients for one server.
- ``download`` -- :func:`download`: files, with ``Range``/``If-Range`` resume.
- ``transport`` -- one HTTP request with ``http.client``; ``errors`` -- what the client raises.
- ``terminal`` -- the command line's prompt and progress bar.
"""

from .api import DEFAULT_URL, Client, stream_url
from .download import DownloadResult, download
from .errors import (
    ClientError,
    ConnectionFailed,
    DownloadError,
    HTTPError,
    NotAnEventStream,
    RoomClosed,
    StreamClosed,
)
from .eventsource import CLOSED, CONNECTING, OPEN, EventSource, MessageEvent
from .rooms import RoomClient, room_url

__all__ = [
    "CLOSED", "CONNECTING", "Client", "ClientError", "ConnectionFailed", "DEFAULT_URL", "DownloadError",
    "DownloadResult", "EventSource", "HTTPError", "MessageEvent", "NotAnEventStream", "OPEN", "RoomClient",
    "RoomClosed", "StreamClosed", "download", "room_url", "stream_url",
]
