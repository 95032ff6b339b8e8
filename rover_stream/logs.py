"""Logs: one line per step of a stream's life, plain or JSON, with the request id; never a secret.

* Every request gets an id: the client's ``X-Request-ID`` when it is a sane token (letters, digits,
  ``.-_:``, at most 64), a new one otherwise; it is sent back in ``X-Request-ID`` and carried by the
  stream, so the lines of a stream can be found from the request (and from nginx's log).
* ``rover_stream.streams`` logs ``stream open``, ``stream close`` (reason, duration, bytes), ``stream
  refused`` and ``stream drop`` (a slow client let go) at INFO. Paths are logged without their query
  string (tokens may travel in ``?token=``); headers are never logged.
* :func:`configure_logging` (called by the gunicorn configuration in each worker) sends the ``rover_stream`` loggers
  to stderr, as ``LOG_FORMAT`` says: ``plain`` (``2026-11-21 12:00:00 [pid] INFO rover_stream.streams:
  stream close kind=sse reason=disconnect ...``) or ``json`` (one object per line with every field).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from flask import Response, g, has_request_context, request

from . import signals

log = logging.getLogger("rover_stream.streams")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id() -> str | None:
    """The current request's id (None outside a request)."""
    if not has_request_context():
        return None
    rid = g.get("rover_request_id")
    if rid is None:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        rid = offered if _SANE_ID.fullmatch(offered) else os.urandom(8).hex()
        g.rover_request_id = rid
    return rid  # type: ignore[no-any-return]


def send_request_id(response: Response) -> Response:
    """``after_request``: the request's id in the response's ``X-Request-ID``."""
    rid = request_id()
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def stream_context() -> dict[str, Any]:
    """What a stream remembers of its request, for its log lines."""
    if not has_request_context():
        return {}
    return {"request_id": request_id(), "path": request.path, "client": request.remote_addr}


def _fields(body: Any, **more: Any) -> dict[str, Any]:
    return {"kind": body.kind, **(getattr(body, "log_context", None) or {}), **more}


def _line(level: int, message: str, fields: dict[str, Any]) -> None:
    """``log.log(level, message, extra={"fields": fields})`` without looking up the caller's file and line
    in the stack (no format here shows them): two of these per stream."""
    if log.isEnabledFor(level):
        log.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None, extra={"fields": fields}))


def _on_opened(body: Any, **_: Any) -> None:
    _line(logging.INFO, "stream open", _fields(body))


def _on_closed(body: Any, reason: str = "", bytes_sent: int = 0, duration: float = 0.0, **_: Any) -> None:
    _line(logging.WARNING if reason == "error" else logging.INFO, "stream close",
          _fields(body, reason=reason, duration=round(duration, 3), bytes=bytes_sent))


def _on_rejected(body: Any, reason: str = "", **_: Any) -> None:
    _line(logging.WARNING, "stream refused", _fields(body, reason=reason))


def _on_dropped(hub: Any, subscription: Any = None, channel: str = "", policy: str = "", **more: Any) -> None:
    fields = {"channel": channel, "policy": policy, "subscription": getattr(subscription, "id", None)}
    if "dropped" in more:
        fields["dropped"] = more["dropped"]
    log.info("stream drop", extra={"fields": fields})


_RECEIVERS = ((signals.stream_opened, _on_opened), (signals.stream_closed, _on_closed),
              (signals.stream_rejected, _on_rejected), (signals.subscriber_dropped, _on_dropped))


def init_logging() -> None:
    """The stream log lines (connected once per process)."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False)  # connecting the same function twice is a no-op


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={_plain(value)}" for key, value in fields.items() if value is not None)
        return line


_NEEDS_QUOTES = re.compile(r'[ ="\n]')


def _plain(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return json.dumps(text) if (not text or _NEEDS_QUOTES.search(text)) else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **(getattr(record, "fields", None) or {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", format: str = "plain") -> None:
    """Send the ``rover_stream`` loggers to stderr in ``format`` ("plain" or "json") from ``level`` up."""
    logger = logging.getLogger("rover_stream")
    for handler in list(logger.handlers):
        if getattr(handler, "rover_stream", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.rover_stream = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if format == "json" else PlainFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
