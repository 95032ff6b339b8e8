"""``RoomClient``: a member of a WebSocket room (``/ws/comms/<room>``), in plain Python.

::

    from rover_stream.client import RoomClient

    with RoomClient("http://127.0.0.1:8000", "science", "ada") as room:
        room.send("Sample 7 looks odd")
        for frame in room:               # until the connection closes
            print(frame["type"], frame.get("user"), frame.get("text"))

Frames are the server's JSON objects (``message``, ``join``, ``leave``, ``presence``, ``history``,
``error``). The protocol is wsproto's, on a blocking socket: one reader thread takes every frame off the
socket as it arrives, answers pings and queues messages for :meth:`RoomClient.receive`. The frames that
arrive with the 101 response (the server sends history and presence right after it) are read with it; see
``ws_client_class`` in the tests for the simple-websocket bug this avoids.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from ..wire.room_text import JSON_SUBPROTOCOL
from .errors import ConnectionFailed, HTTPError, RoomClosed
from .transport import CONNECT_TIMEOUT

READ_SIZE = 64 * 1024
#: Seconds :meth:`RoomClient.close` waits for the server's close frame and the end of the connection.
CLOSE_TIMEOUT = 3.0
#: Close codes (RFC 6455 section 7.4.1); 1006 is never sent: it reports a connection lost without a close.
NORMAL_CLOSURE, CONNECTION_LOST = 1000, 1006
#: With ``reconnect=True``, the closes worth coming back from: the server going away (1001, a restart),
#: the connection lost (1006), a server error (1011), a restart (1012), try again later (1013: too slow,
#: or the server fell behind the room's history). Not 1000, 1008 or 1009: those are about this client.
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
#: Reconnection backoff in seconds: first wait and ceiling; a connection that lasted STABLE seconds resets it.
BACKOFF_FIRST, BACKOFF_MAX, STABLE = 0.5, 10.0, 10.0
#: Message ids remembered to drop the history a rejoin replays (what this client has seen already).
SEEN_IDS = 1000

_CLOSED = object()


def room_url(url: str, room: str, user: str | None = None) -> str:
    """The WebSocket URL of ``room`` on the server at ``url`` (``http://host:port``, or ``ws://``)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"Not an http://, https://, ws:// or wss:// URL: {url!r}.")
    query = f"?{urlencode({'user': user})}" if user else ""
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws/comms/{quote(room, safe='')}{query}"


class RoomClient:
    """A connection to one room as ``user``.

    :param url: the server (``http://127.0.0.1:8000``); ``ws://`` and ``wss://`` work too.
    :param token: an access token, needed for ``private-`` rooms when the server has a secret.
    :param timeout: seconds to connect and complete the handshake.
    :param reconnect: come back by itself after a close in :data:`RECONNECT_CODES` (a server restart, a
        lost connection), with backoff, for as long as it takes. A ``{"type": "disconnected", "room": ...,
        "code": ..., "reason": ...}`` frame says it went, a ``{"type": "reconnected", "room": ..., "code":
        ...}`` frame that it is back; then frames go on as before, and the history a rejoin replays is cut
        to the messages this client has not seen. :meth:`send` raises :class:`RoomClosed` while it is away.

    Raises :class:`HTTPError` when the server refuses the upgrade (its JSON message says why: a bad room
    or user name, a missing token, a full room), :class:`ConnectionFailed` when it cannot be reached.
    """

    def __init__(self, url: str, room: str, user: str | None = None, *, token: str | None = None,
                 timeout: float = CONNECT_TIMEOUT, reconnect: bool = False) -> None:
        self.url = room_url(url, room, user)
        self.room = room
        self.user = user
        self.reconnect = reconnect
        self.reconnections = 0
        #: The close code and reason, once the connection is closed (the server's, or 1006).
        self.close_code: int | None = None
        self.close_reason = ""
        self._token, self._timeout = token, timeout
        self._frames: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()  # one writer: the reader thread's pongs and close replies, and send()
        self._done = threading.Event()
        self._leaving = threading.Event()  # close() was called: no more reconnecting
        self._seen: dict[str, None] = {}  # message ids, oldest first (an ordered set of at most SEEN_IDS)
        self._text: list[str] = []
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._sock = self._handshake(token, timeout)
        self._connected_at = time.monotonic()
        self._backoff = BACKOFF_FIRST
        self._reader = threading.Thread(target=self._run, name=f"rover-stream-room-{room}", daemon=True)
        self._reader.start()

    # -- public API ------------------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send a chat message to the room (every member gets it, the sender too)."""
        payload = json.dumps({"text": text}, ensure_ascii=False)
        with self._lock:
            if self._ws.state != ConnectionState.OPEN:
                raise RoomClosed(self.close_code or CONNECTION_LOST, self.close_reason)
            try:
                self._sock.sendall(self._ws.send(TextMessage(data=payload)))
            except OSError as exc:
                raise RoomClosed(CONNECTION_LOST, str(exc)) from exc

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame from the server, or None when none came within ``timeout`` seconds. Raises
        :class:`RoomClosed` once the connection is closed and every frame received before was taken."""
        try:
            item = self._frames.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._frames.put(_CLOSED)  # every later call raises too
            raise RoomClosed(self.close_code or CONNECTION_LOST, self.close_reason)
        return item  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every frame, until the connection closes."""
        while True:
            try:
                frame = self.receive()
            except RoomClosed:
                return
            if frame is not None:
                yield frame

    @property
    def connected(self) -> bool:
        return self._ws.state == ConnectionState.OPEN

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "", timeout: float = CLOSE_TIMEOUT) -> int | None:
        """Leave: send a close frame, wait for the server's and for the end of the connection (RFC 6455:
        the server closes the TCP connection first). Returns the server's close code."""
        self._leaving.set()
        with self._lock:
            if self._ws.state == ConnectionState.OPEN:
                try:
                    self._sock.sendall(self._ws.send(CloseConnection(code=code, reason=reason)))
                except OSError:
                    pass
        if not self._done.wait(timeout):
            self._shutdown()
            self._done.wait(1.0)
        self._sock.close()
        return self.close_code

    def __enter__(self) -> RoomClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------------------------

    def _handshake(self, token: str | None, timeout: float) -> socket.socket:
        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host, port = parts.hostname or "", parts.port or (443 if secure else 80)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectionFailed(f"Could not connect to {self.url}: {exc}.") from exc
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            headers = [(b"Authorization", f"Bearer {token}".encode())] if token else []
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            sock.sendall(self._ws.send(Request(host=parts.netloc, target=target, extra_headers=headers,
                                               subprotocols=[JSON_SUBPROTOCOL])))  # JSON frames, not text
            self._read_handshake(sock)
        except OSError as exc:
            sock.close()
            raise ConnectionFailed(f"The WebSocket handshake with {self.url} failed: {exc}.") from exc
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # the reader thread blocks until a frame comes
        return sock

    def _read_handshake(self, sock: socket.socket) -> None:
        rejection: RejectConnection | None = None
        body = b""
        while True:
            data = sock.recv(READ_SIZE)
            self._ws.receive_data(data or None)
            accepted = False
            out = b""
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    rejection = event
                    if not event.has_body:
                        raise self._refused(rejection, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and rejection is not None:
                        raise self._refused(rejection, body)
                elif accepted:  # frames that arrived with the 101 response
                    out += self._handle([event])
            if accepted:
                if out:
                    sock.sendall(out)
                return
            if not data:
                if rejection is not None:
                    raise self._refused(rejection, body)
                raise ConnectionFailed(f"{self.url} closed the connection during the WebSocket handshake.")

    def _refused(self, rejection: RejectConnection, body: bytes) -> HTTPError:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in rejection.headers}
        return HTTPError.from_body(self.url, rejection.status_code, "", body, headers)

    def _run(self) -> None:
        """The reader thread: read the connection; with ``reconnect``, come back after a close worth it."""
        while True:
            self._read_loop()
            code, reason = self.close_code or CONNECTION_LOST, self.close_reason
            if not self.reconnect or self._leaving.is_set() or code not in RECONNECT_CODES:
                break
            self._frames.put({"type": "disconnected", "room": self.room, "code": code, "reason": reason})
            if not self._come_back(code):
                break
        self._frames.put(_CLOSED)
        self._done.set()

    def _come_back(self, code: int) -> bool:
        """Connect again, with backoff, until it works or the client leaves. True once back. The backoff
        goes on from where it was when the last connection lasted less than STABLE seconds (a server that
        accepts, then closes at once, is not hammered); a refusal about this client (4xx but 408 and 429:
        a bad name, a token no longer valid) ends the client."""
        if time.monotonic() - self._connected_at >= STABLE:
            self._backoff = BACKOFF_FIRST
        while not self._leaving.wait(self._backoff):
            self._backoff = min(BACKOFF_MAX, self._backoff * 2)
            ws = WSConnection(ConnectionType.CLIENT)
            previous, self._ws = self._ws, ws
            self._text = []  # a message the lost connection cut in the middle is gone with it
            try:
                sock = self._handshake(self._token, self._timeout)
            except HTTPError as exc:
                self._ws = previous
                if 400 <= exc.status < 500 and exc.status not in (408, 429):
                    self.close_code, self.close_reason = CONNECTION_LOST, str(exc)
                    return False
                continue
            except (ConnectionFailed, OSError):
                self._ws = previous
                continue
            with self._lock:
                if self._leaving.is_set():  # close() was called while we were connecting
                    sock.close()
                    self._ws = previous
                    return False
                old, self._sock = self._sock, sock
                self.close_code, self.close_reason = None, ""
            old.close()
            self._connected_at = time.monotonic()
            self.reconnections += 1
            self._frames.put({"type": "reconnected", "room": self.room, "code": code})
            return True
        return False

    def _read_loop(self) -> None:
        try:
            while True:
                data = self._sock.recv(READ_SIZE)
                with self._lock:
                    self._ws.receive_data(data or None)
                    out = self._handle(self._ws.events())
                    if out:
                        self._sock.sendall(out)
                if not data:
                    break
        except OSError:
            pass
        finally:
            self._finish(CONNECTION_LOST, "the connection was lost without a close frame")

    def _handle(self, events: Iterable[Event]) -> bytes:
        """Act on received events; return the bytes to send back (pongs, the reply to a close)."""
        out = b""
        for event in events:
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._frames.put(self._remember(_frame("".join(self._text))))
                    self._text = []
            elif isinstance(event, Ping):
                out += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    out += self._ws.send(event.response())
                self._finish(event.code, event.reason or "")
            elif isinstance(event, BytesMessage):
                pass  # the rooms protocol is text only
        return out

    def _remember(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Note the ids of messages seen; cut a history to those not seen (after a rejoin)."""
        if frame.get("type") == "history" and isinstance(frame.get("messages"), list):
            frame = {**frame, "messages": [m for m in frame["messages"]
                                           if not (isinstance(m, dict) and m.get("id") in self._seen)]}
            for message in frame["messages"]:
                self._note(message)
        else:
            self._note(frame)
        return frame

    def _note(self, message: Any) -> None:
        if isinstance(message, dict) and isinstance(message.get("id"), str):
            self._seen[message["id"]] = None
            if len(self._seen) > SEEN_IDS:
                del self._seen[next(iter(self._seen))]

    def _finish(self, code: int, reason: str) -> None:
        """The connection is over (the reader thread's :meth:`_run` decides what comes next)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _frame(text: str) -> dict[str, Any]:
    try:
        frame = json.loads(text)
    except ValueError:
        frame = None
    return frame if isinstance(frame, dict) else {"type": "text", "text": text}
