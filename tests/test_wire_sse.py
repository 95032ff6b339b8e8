"""The SSE encoder against every encoding rule of SSE-RULES.md, checked through a WHATWG-exact parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rover_stream import EncodeError, Event, encode
from rover_stream.wire.sse import HEARTBEAT, encode_comment, to_bytes
from rover_stream.wire.sse_parser import EventStreamParser, ParsedEvent, parse


@pytest.mark.parametrize(
    ("data", "wire", "seen"),
    [
        pytest.param("hello", b"data: hello\n\n", "hello", id="simple"),
        pytest.param("a\nb", b"data: a\ndata: b\n\n", "a\nb", id="lf"),
        pytest.param("a\r\nb", b"data: a\ndata: b\n\n", "a\nb", id="crlf"),
        pytest.param("a\rb", b"data: a\ndata: b\n\n", "a\nb", id="lone-cr"),
        pytest.param("a\n", b"data: a\ndata: \n\n", "a\n", id="trailing-newline-kept"),
        pytest.param("", b"data: \n\n", "", id="empty-string-is-one-data-line"),
        pytest.param(" lead", b"data:  lead\n\n", " lead", id="leading-space-kept"),
        pytest.param("x\u2028y\x85z\x1cw", "data: x\u2028y\x85z\x1cw\n\n".encode(), "x\u2028y\x85z\x1cw",
                     id="not-splitlines"),
        pytest.param("é ✓", "data: é ✓\n\n".encode(), "é ✓", id="utf8"),
    ],
)
def test_data_lines(data: str, wire: bytes, seen: str) -> None:
    assert encode(data) == wire
    assert parse(wire) == [ParsedEvent(seen)]


def test_fields_and_id_zero() -> None:
    wire = encode("x", event="tick", id=0, retry=1500)
    assert wire == b"event: tick\nid: 0\nretry: 1500\ndata: x\n\n"
    parser = EventStreamParser()
    assert parser.feed(wire) == [ParsedEvent("x", "tick", "0")]
    assert parser.retry == 1500


def test_non_string_data_is_compact_json() -> None:
    assert encode({"a": [1, 2], "b": "é"}) == 'data: {"a":[1,2],"b":"é"}\n\n'.encode()


@pytest.mark.parametrize("field", ["id", "event"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b"])
def test_cr_lf_nul_refused_in_id_and_event(field: str, bad: str) -> None:
    with pytest.raises(EncodeError, match=field):
        encode("x", **{field: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [-1, 1.5, "100", True])
def test_retry_must_be_non_negative_int(retry: object) -> None:
    with pytest.raises(EncodeError, match="retry"):
        encode("x", retry=retry)  # type: ignore[arg-type]


def test_comment_lines_cannot_inject_fields() -> None:
    wire = encode_comment("ping\ndata: injected")
    assert wire == b": ping\n: data: injected\n\n"
    assert parse(wire + encode("real")) == [ParsedEvent("real")]
    assert HEARTBEAT == encode_comment("ping")


def test_block_without_data_sets_id_only() -> None:
    parser = EventStreamParser()
    assert parser.feed(encode(id="7")) == []
    assert parser.last_event_id == "7"


def test_empty_event_refused() -> None:
    with pytest.raises(EncodeError):
        encode()


def test_to_bytes_accepts_the_documented_shapes() -> None:
    assert to_bytes(Event(data="x", id=3)) == b"id: 3\ndata: x\n\n"
    assert to_bytes({"event": "e", "data": {"k": 1}}) == b'event: e\ndata: {"k":1}\n\n'
    assert to_bytes({"other": 1}) == b'data: {"other":1}\n\n'
    assert to_bytes(b"data: raw\n\n") == b"data: raw\n\n"
    assert to_bytes(42) == b"data: 42\n\n"


field_text = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]))


@given(data=st.text(st.characters(blacklist_categories=["Cs"])), event=field_text, id=field_text)
def test_any_event_round_trips_through_a_browser_parser(data: str, event: str, id: str) -> None:
    """Whatever the route author sends, a WHATWG parser sees exactly that (line ends normalised to LF)."""
    expected_data = data.replace("\r\n", "\n").replace("\r", "\n")
    events = parse(encode(data, event=event, id=id))
    assert events == [ParsedEvent(expected_data, event or "message", id)]


# -- the parser itself (the client of a later issue builds on it) ---------------------------------------------

def test_parser_line_ends_split_across_chunks() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"
    for cut in range(len(stream) + 1):
        parser = EventStreamParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert [e.data for e in events] == ["a", "b", "c"], cut


def test_parser_bom_comments_and_whatwg_examples() -> None:
    assert parse("\ufeffdata: x\n\n".encode()) == [ParsedEvent("x")]
    assert parse(b"data\n\ndata\ndata\n\n") == [ParsedEvent(""), ParsedEvent("\n")]
    assert parse(b"data: a\n: comment\ndata: b\n\n") == [ParsedEvent("a\nb")]
    assert parse(b"data:  x\n\n") == [ParsedEvent(" x")]
    assert parse(b"Data: x\n\n") == []
    assert parse(b"data: pending") == []
    assert parse(b"id: a\x00b\ndata: x\n\n") == [ParsedEvent("x", "message", "")]
    assert parse(b"data: \xffz\n\n")[0].data == "\ufffdz"
    assert parse(b"\xff\xfedata: x\n\n") == []  # only a real BOM is dropped: this is field "\ufffd\ufffddata"


@pytest.mark.parametrize("value", ["1000x", "-1", "1.5", ""])
def test_parser_ignores_bogus_retry(value: str) -> None:
    parser = EventStreamParser()
    parser.feed(f"retry: {value}\n\n".encode())
    assert parser.retry is None


def test_a_dict_without_data_is_data_not_fields() -> None:
    """{"id": 7, "event": "login"} is an application value; as fields it would dispatch nothing."""
    assert to_bytes({"id": 7, "event": "login"}) == b'data: {"id":7,"event":"login"}\n\n'


def test_committed_id_and_retry_are_public() -> None:
    """What a client resumes with: the id a blank line committed (an id-only block counts; a block cut off
    by the end of the stream does not), and the reconnection time in force when each event came."""
    parser = EventStreamParser(last_event_id="3")
    assert parser.committed_id == "3"
    assert parser.feed(b"id: 5\n\n") == [] and parser.committed_id == "5"
    (event,) = parser.feed(b"retry: 1500\ndata: y\n\n")
    assert event.last_event_id == "5" and event.retry == 1500
    assert parser.feed(b"id: 6\ndata: cut") == []
    assert parser.last_event_id == "6" and parser.committed_id == "5"
