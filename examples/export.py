"""Streaming exports: a large generated data set as a CSV download and as NDJSON, from plain ``def`` views.

Neither response is built in memory: rows are generated while the client reads them, batched into large
chunks, and a slow client slows the generator down instead of filling the server's memory. ``?rows=`` is
checked in the view, before anything is sent: a bad value gets a 400 with a JSON error body.

Run it (from this folder)::

    rover-stream serve --app export:app

Try it::

    curl -OJ 'localhost:8000/readings.csv?rows=1000000'     # saves readings.csv
    curl -N 'localhost:8000/readings.ndjson?rows=5'
    curl -i 'localhost:8000/readings.csv?rows=lots'          # 400 {"error": "invalid_rows", ...}
"""

import math
from datetime import datetime, timedelta, timezone

from flask import Flask, request

import rover_stream as rs

app = Flask(__name__)
rs.RoverStream(app)  # the streaming runtime the responses run in (stream cap, shutdown, metrics)

MAX_ROWS = 10_000_000
COLUMNS = ("id", "sensor", "recorded_at", "celsius")
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)


def row_count(default=1000):
    """?rows=, a whole number from 0 to MAX_ROWS (rs.ApiError becomes a JSON 400)."""
    raw = request.args.get("rows", str(default))
    try:
        rows = int(raw)
    except ValueError:
        rows = -1
    if not 0 <= rows <= MAX_ROWS:
        raise rs.ApiError(f"?rows must be a whole number from 0 to {MAX_ROWS}, not {raw!r}.",
                          code="invalid_rows")
    return rows


def readings(count):
    """The data set, one dict at a time: a temperature reading a minute from eight sensors."""
    for i in range(count):
        yield {
            "id": i,
            "sensor": f"sensor-{i % 8}",
            "recorded_at": (EPOCH + timedelta(minutes=i)).isoformat(),
            "celsius": round(18 + 4 * math.sin(i / 60), 2),
        }


@app.get("/readings.csv")
def readings_csv():
    # dict rows with a header: written like csv.DictWriter, header row first; sent as an attachment
    return rs.csv_response(readings(row_count()), header=COLUMNS, filename="readings.csv")


@app.get("/readings.ndjson")
def readings_ndjson():
    # one JSON object per line; filename= would make it a download too
    return rs.ndjson_response(readings(row_count()))
