"""CSV and NDJSON framing: rows in, byte chunks of tens of KiB out.

One socket write per row costs a system call per row (and a chunk header per row on chunked HTTP/1.1), so
rows are serialised into a batch that is emitted once it reaches ``batch_bytes``. So that a slow, live
source is not held back, the first row goes out at once, a batch is also emitted as soon as a row arrives
``flush_interval`` seconds or more after the previous emission, and whenever the source yields
:data:`FLUSH`. Rows that arrive in a quick burst and are then followed by a pause wait for the next row
(or the end): a source that knows it is about to pause yields :data:`FLUSH` first. (Checking a clock from
another greenlet would cost every row a lock or a hand-off; exports are the hot path.)
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

FLUSH: Any = object()
"""Yield this from a row source to send the rows gathered so far at once."""

DEFAULT_BATCH_BYTES = 64 * 1024
DEFAULT_FLUSH_INTERVAL = 0.05


def _batched(
    rows: Iterable[Any],
    write_row: Callable[[Any], Any],
    buffer: io.StringIO,
    batch_bytes: int,
    flush_interval: float,
    clock: Callable[[], float],
) -> Iterator[bytes]:
    tell = buffer.tell
    deadline = float("-inf")  # the first row goes out at once: the client sees the response start
    for row in rows:
        if row is not FLUSH:
            write_row(row)
            if tell() < batch_bytes and clock() < deadline:
                continue
        if tell():
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
        deadline = clock() + flush_interval
    if tell():
        yield buffer.getvalue().encode("utf-8")


def csv_chunks(
    rows: Iterable[Sequence[Any] | Any],
    header: Sequence[str] | None = None,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    **fmtparams: Any,
) -> Iterator[bytes]:
    """CSV (RFC 4180 quoting by the stdlib ``csv`` module, CRLF line ends) as UTF-8 byte chunks.

    ``rows`` are sequences, or mappings when ``header`` names their keys (``csv.DictWriter``, missing keys
    empty; unknown keys are an error rather than silently dropped data).
    """
    buffer = io.StringIO()
    iterator = iter(rows)
    first = next((row for row in iterator if row is not FLUSH), FLUSH)
    if header is not None:
        csv.writer(buffer, **fmtparams).writerow(header)
    if header is not None and hasattr(first, "keys"):
        writer: Any = csv.DictWriter(buffer, fieldnames=list(header), **fmtparams)
    else:
        writer = csv.writer(buffer, **fmtparams)
    rows = itertools.chain((first,), iterator)
    yield from _batched(rows, writer.writerow, buffer, batch_bytes, flush_interval, clock)


def ndjson_chunks(
    records: Iterable[Any],
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    default: Callable[[Any], Any] | None = None,
) -> Iterator[bytes]:
    """Newline-delimited JSON: one compact JSON document per line, as UTF-8 byte chunks. A ``str`` record is
    taken as an already serialised JSON document and must not contain a newline."""
    buffer = io.StringIO()
    write = buffer.write
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=default).encode

    def write_record(record: Any) -> None:
        if isinstance(record, str):
            if "\n" in record or "\r" in record:
                raise ValueError("A pre-serialised NDJSON record may not contain a line break.")
            write(record)
        else:
            write(dumps(record))
        write("\n")

    yield from _batched(records, write_record, buffer, batch_bytes, flush_interval, clock)
