"""An incremental Server-Sent Events parser that follows the WHATWG rules exactly, as browsers do.

Feed it network chunks as they arrive; it returns the events they complete. It is the reference the tests
hold the encoder to, and the parser of the Python client.

- Line ends are CRLF, LF or CR, mixed; a CR at the end of one chunk and an LF at the start of the next are
  one line end.
- One leading U+FEFF is dropped; bytes are decoded as UTF-8 with invalid sequences as U+FFFD.
- ``:`` lines are comments; a line without a colon is a field with an empty value; one space after the
  colon is removed; unknown fields are ignored.
- ``data`` lines are joined with LF; an empty data buffer dispatches nothing; ``event`` applies to the next
  dispatch only; an ``id`` containing NUL is ignored; ``retry`` must be ASCII digits.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParsedEvent:
    """A dispatched event, as ``MessageEvent`` would show it to a page."""

    data: str
    event: str = "message"
    last_event_id: str = ""
    #: The reconnection time (ms) the stream had set when this event was dispatched (None: never set). Not
    #: part of the event's identity (MessageEvent has no such field): equal events may differ in it.
    retry: int | None = field(default=None, compare=False)


class EventStreamParser:
    """``last_event_id`` is WHATWG's *last event ID buffer* (set by ``id:`` lines as they come);
    ``committed_id`` is the source's *last event ID string*, which a blank line sets to the buffer even when
    it dispatches nothing (an id-only block) and which a block cut off by the end of the stream leaves
    alone: the id to resume with. ``retry`` applies as soon as its line is read. Start a parser for a new
    connection at the source's last id with ``EventStreamParser(last_event_id=...)``."""

    def __init__(self, last_event_id: str = "", retry: int | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self.last_event_id = last_event_id
        self.committed_id = last_event_id
        self.retry = retry
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Parse the next network chunk; return the events it completed."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if not text:
            return []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        self._buffer += text
        events: list[ParsedEvent] = []
        start = 0
        buffer = self._buffer
        length = len(buffer)
        while True:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, after = lf, lf + 1
            elif cr + 1 < length:
                end, after = cr, cr + 2 if buffer[cr + 1] == "\n" else cr + 1
            else:  # a CR as the last character: a line end, maybe the first half of a CRLF
                end, after = cr, cr + 1
                self._pending_cr = True
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = after
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> ParsedEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value and value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> ParsedEvent | None:
        self.committed_id = self.last_event_id
        if not self._data:
            self._event = ""
            return None
        event = ParsedEvent("\n".join(self._data), self._event or "message", self.last_event_id, self.retry)
        self._data = []
        self._event = ""
        return event


def parse(stream: bytes) -> list[ParsedEvent]:
    """Every event of a complete stream (an event left without its blank line at the end is discarded)."""
    return EventStreamParser().feed(stream)
