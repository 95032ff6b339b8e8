"""CSV and NDJSON framing: exact round trips, batching, flushing."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rover_stream import FLUSH
from rover_stream.wire.tabular import csv_chunks, ndjson_chunks

TRICKY = [
    (1, "plain", 1.5),
    (2, 'quote " inside', None),
    (3, "comma, inside", -0.0),
    (4, "line\nbreak and\r\ncrlf", "é ✓"),
    (5, "", " leading space"),
]


def test_csv_round_trips_tricky_values() -> None:
    body = b"".join(csv_chunks(TRICKY, header=("id", "text", "value"))).decode()
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert rows[0] == ["id", "text", "value"]
    expected = [["" if v is None else str(v) for v in row] for row in TRICKY]
    assert rows[1:] == expected


def test_csv_dict_rows_with_header() -> None:
    body = b"".join(csv_chunks([{"b": 2, "a": 1}, {"a": 3}], header=("a", "b"))).decode()
    assert body == "a,b\r\n1,2\r\n3,\r\n"


def test_csv_dict_rows_with_unknown_key_fail() -> None:
    with pytest.raises(ValueError):
        b"".join(csv_chunks([{"a": 1, "zzz": 2}], header=("a",)))


def test_rows_are_batched_into_large_chunks() -> None:
    rows = ((i, f"item-{i}", i * 10) for i in range(50_000))
    chunks = list(csv_chunks(rows, batch_bytes=32 * 1024, clock=lambda: 0.0))
    assert len(chunks) > 10
    assert chunks[0] == b"0,item-0,0\r\n"  # the first row goes out at once, so the response starts
    assert all(len(c) >= 32 * 1024 for c in chunks[1:-1])
    assert all(len(c) < 33 * 1024 for c in chunks)


def test_slow_rows_are_flushed_after_the_interval() -> None:
    now = [0.0]

    def rows():  # type: ignore[no-untyped-def]
        for i in range(3):
            now[0] += 1.0  # each row arrives a second after the previous one
            yield (i,)

    chunks = list(csv_chunks(rows(), batch_bytes=1 << 20, flush_interval=0.5, clock=lambda: now[0]))
    assert chunks == [b"0\r\n", b"1\r\n", b"2\r\n"]


def test_flush_sentinel_sends_pending_rows() -> None:
    chunks = list(ndjson_chunks([{"a": 1}, FLUSH, {"b": 2}], batch_bytes=1 << 20, clock=lambda: 0.0))
    assert chunks == [b'{"a":1}\n', b'{"b":2}\n']


def test_empty_csv_is_just_the_header() -> None:
    assert b"".join(csv_chunks([], header=("a",))) == b"a\r\n"
    assert b"".join(csv_chunks([])) == b""


def test_ndjson_round_trip_and_pre_serialised() -> None:
    records = [{"id": 1, "t": "é\n"}, [1, 2], "null", 3.5]
    body = b"".join(ndjson_chunks(records)).decode()
    assert [json.loads(line) for line in body.splitlines()] == [{"id": 1, "t": "é\n"}, [1, 2], None, 3.5]
    with pytest.raises(ValueError):
        b"".join(ndjson_chunks(['{"a":\n1}']))
