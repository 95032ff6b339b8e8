"""``EventSource`` for Python code: the events of an SSE URL, parsed and reconnected exactly as a browser does.

::

    from rover_stream.client import EventSource

    with EventSource("http://127.0.0.1:8000/realtime/news") as source:
        for event in source:
            print(event.event, event.id, event.json())

The parsing is :class:`~rover_stream.wire.sse_parser.EventStreamParser`'s (the WHATWG event stream
interpretation rules); the connection follows the WHATWG processing model:

- 200 with ``Content-Type: text/event-stream``: the stream is open and its events are yielded.
- A network error (refused, reset, timed out) *and* a clean end of the body both lead to a reconnect after
  the reconnection time (the server's last ``retry:``, 3 s until it sends one), sending ``Last-Event-ID``
  when the last event id is not empty. The id and the reconnection time carry over from one connection to
  the next; each connection is a new stream (its own BOM, its own half-received event, which is dropped).
- 204 (:class:`StreamClosed`), any other status (:class:`HTTPError`) or another content type
  (:class:`NotAnEventStream`) end the iteration with that exception, for good.

Unlike a browser, a stream that stays silent for ``timeout`` seconds (no event, no ``: ping`` heartbeat)
counts as lost and is reconnected, and ``max_retries`` bounds the reconnection attempts in a row that fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..wire.sse_parser import EventStreamParser
from .errors import ConnectionFailed, NotAnEventStream, StreamClosed
from .transport import CONNECT_TIMEOUT, NETWORK_ERRORS, Exchange, open_request

#: The reconnection time (milliseconds) until the server sends ``retry:``; browsers use about this much.
DEFAULT_RETRY_MS = 3000
#: Seconds without a byte after which a stream counts as lost. Servers send a heartbeat comment well within
#: it (rover_stream every ``ROVER_HEARTBEAT_INTERVAL``, 15 s by default).
DEFAULT_TIMEOUT = 60.0
#: Most bytes asked of one read; a read returns as soon as any have arrived.
READ_SIZE = 64 * 1024

#: ``ready_state`` values, as ``EventSource.readyState``.
CONNECTING, OPEN, CLOSED = 0, 1, 2

OpenHook = Callable[["EventSource"], None]
ErrorHook = Callable[["EventSource", BaseException | None, float], None]


@dataclass(frozen=True)
class MessageEvent:
    """One dispatched event, as a page's ``MessageEvent`` shows it."""

    data: str
    #: The event type: the block's ``event:`` field, or ``"message"``.
    event: str = "message"
    #: The last event id when the event was dispatched (it carries over from earlier blocks).
    id: str = ""
    #: The stream's reconnection time in milliseconds when the event was dispatched.
    retry: int = DEFAULT_RETRY_MS

    def json(self) -> Any:
        """The data parsed as JSON (``ValueError`` when it is not JSON)."""
        return json.loads(self.data)


class EventSource:
    """Iterate over the events of ``url``, reconnecting by itself.

    :param url: an ``http://`` or ``https://`` URL that answers an event stream.
    :param last_event_id: resume after this id (sent as ``Last-Event-ID`` on the first connection too).
    :param headers: extra request headers (``Authorization: Bearer ...``).
    :param timeout: seconds of silence after which the connection counts as lost and is reconnected.
    :param connect_timeout: seconds to connect and receive the response headers.
    :param retry: the reconnection time in milliseconds until the server sends ``retry:``.
    :param max_retries: failed connection attempts in a row (refused, timed out...) after which the iteration
        raises :class:`ConnectionFailed`; ``None`` retries forever, as browsers do. A stream that opened
        resets the count.
    :param on_open: called with the source each time a connection opens.
    :param on_error: called with the source, the error (``None`` for a clean end of the stream) and the
        delay in seconds before the next attempt, each time a reconnection is scheduled.

    :meth:`close` may be called from any thread: the iteration then ends without an exception.
    """

    def __init__(self, url: str, *, last_event_id: str | None = None, headers: Mapping[str, str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
                 retry: int = DEFAULT_RETRY_MS, max_retries: int | None = None, on_open: OpenHook | None = None,
                 on_error: ErrorHook | None = None) -> None:
        self.url = url
        self.last_event_id = last_event_id or ""
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.max_retries = max_retries
        self.on_open = on_open
        self.on_error = on_error
        self.ready_state = CONNECTING
        #: Connections opened after the first one.
        self.reconnects = 0
        #: Seconds from losing the previous connection to opening the current one (0.0 for the first).
        self.downtime = 0.0
        self._lost_at: float | None = None
        self._closed = False
        self._exchange: Exchange | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def __iter__(self) -> Iterator[MessageEvent]:
        return self._events()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop for good: the iteration ends, in whichever thread it runs, and no reconnection follows."""
        with self._lock:
            self._closed = True
            self.ready_state = CLOSED
            exchange = self._exchange
        self._wake.set()
        if exchange is not None:
            exchange.interrupt()

    @property
    def closed(self) -> bool:
        return self._closed

    def _events(self) -> Iterator[MessageEvent]:
        failures = 0
        try:
            while not self._closed:
                try:
                    exchange = self._connect()
                except NETWORK_ERRORS as exc:
                    failures += 1
                    if self.max_retries is not None and failures > self.max_retries:
                        raise ConnectionFailed(
                            f"Could not connect to {self.url} ({describe(exc)}); gave up after "
                            f"{failures} attempt{'s' if failures > 1 else ''}.") from exc
                    self._schedule_reconnect(exc)
                    continue
                if exchange is None:  # closed while connecting
                    break
                failures = 0
                error: BaseException | None = None
                try:
                    self._opened()
                    yield from self._read(exchange)
                except NETWORK_ERRORS as exc:
                    error = exc
                finally:
                    self._release(exchange)
                if not self._closed:
                    self._schedule_reconnect(error)
        finally:
            self.ready_state = CLOSED

    def _connect(self) -> Exchange | None:
        headers: dict[str, str | bytes] = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        headers.update(self.headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id.encode("utf-8")
        exchange = open_request("GET", self.url, headers, timeout=self.connect_timeout)
        if exchange.status == 204:
            exchange.close()
            raise StreamClosed(exchange.url)
        if exchange.status != 200:
            error = exchange.error()
            exchange.close()
            raise error
        content_type = exchange.header("Content-Type")
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            exchange.close()
            raise NotAnEventStream(exchange.url, content_type)
        with self._lock:
            if self._closed:
                exchange.close()
                return None
            self._exchange = exchange
        exchange.set_timeout(self.timeout)
        return exchange

    def _opened(self) -> None:
        self.ready_state = OPEN
        if self._lost_at is not None:
            self.reconnects += 1
            self.downtime = time.monotonic() - self._lost_at
            self._lost_at = None
        if self.on_open is not None:
            self.on_open(self)

    def _read(self, exchange: Exchange) -> Iterator[MessageEvent]:
        # A new connection's id buffer starts at the source's last id, as in browsers (a block without
        # ``id:`` keeps it); the parser's committed_id is what a blank line set it to (WHATWG).
        parser = EventStreamParser(last_event_id=self.last_event_id, retry=self.retry)
        response = exchange.response
        while not self._closed:
            chunk = response.read1(READ_SIZE)  # what has arrived, at most one HTTP chunk
            if not chunk:
                return  # a clean end of the body: reconnect, as browsers do
            events = parser.feed(chunk)
            parser.comments.clear()  # heartbeats: kept by the parser for tests, not for a days-long stream
            if parser.retry is not None:
                self.retry = parser.retry  # applies at once, not at the next blank line
            for parsed in events:
                if self._closed:
                    return
                self.last_event_id = parsed.last_event_id
                yield MessageEvent(parsed.data, parsed.event, parsed.last_event_id,
                                   parsed.retry if parsed.retry is not None else DEFAULT_RETRY_MS)
            self.last_event_id = parser.committed_id

    def _release(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchange = None
        exchange.close()

    def _schedule_reconnect(self, error: BaseException | None) -> None:
        self.ready_state = CONNECTING
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        delay = self.retry / 1000
        if self.on_error is not None:
            self.on_error(self, error, delay)
        # retry: accepts any number of digits; the wait cannot exceed what a lock's timeout takes.
        self._wake.wait(min(delay, threading.TIMEOUT_MAX))


def describe(error: BaseException | None) -> str:
    """A short phrase for a lost connection, for people."""
    if error is None:
        return "the server ended the stream"
    if isinstance(error, TimeoutError):
        return "no data within the timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error) or type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."
