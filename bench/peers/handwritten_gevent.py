"""The classic hand-written SSE fan-out on Flask + gevent, a peer for ``bench/fanout.py``.

A global registry holds one ``queue.Queue()`` per subscriber (a list per channel). ``GET /realtime/<channel>``
is a generator that registers its queue, yields ``retry: 3000`` and then every encoded event it gets from its
queue, with a ``: ping`` comment after ``BENCH_HEARTBEAT_INTERVAL`` seconds (15) of silence
(``queue.get(timeout=...)``). ``POST /api/broadcast`` with ``{"channel": ..., "data": ...}`` encodes the event
once and puts it into every queue of the channel. Under gunicorn's gevent worker ``queue.Queue`` is cooperative
(its locks are monkey-patched), so a waiting subscriber costs a greenlet, not a thread.

Run it under the peers' gunicorn config::

    gunicorn -c bench/peers/gunicorn_peers.conf.py --chdir bench/peers -b 127.0.0.1:0 handwritten_gevent:app
"""

from __future__ import annotations

import itertools
import json
import os
import queue
from collections.abc import Iterator
from typing import Any

import flask

HEARTBEAT_INTERVAL = float(os.environ.get("BENCH_HEARTBEAT_INTERVAL", "15"))

app = flask.Flask(__name__)

#: channel -> one queue per subscriber
subscriptions: dict[str, list[queue.Queue[bytes]]] = {}
_ids = itertools.count(1)


def encode(event_id: int, data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"id: {event_id}\n{lines}\n".encode()


@app.get("/realtime/<channel>")
def realtime(channel: str) -> flask.Response:
    def stream() -> Iterator[bytes]:
        mine: queue.Queue[bytes] = queue.Queue()
        subscribers = subscriptions.setdefault(channel, [])
        subscribers.append(mine)  # subscribed before the first bytes go out
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    yield mine.get(timeout=HEARTBEAT_INTERVAL)
                except queue.Empty:
                    yield b": ping\n\n"
        finally:
            subscribers.remove(mine)

    return flask.Response(stream(), mimetype="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@app.post("/api/broadcast")
def broadcast() -> dict[str, Any]:
    body = flask.request.get_json(force=True)
    channel = str(body.get("channel") or "broadcast")
    event_id = next(_ids)
    item = encode(event_id, body.get("data"))
    subscribers = subscriptions.get(channel, [])
    for subscriber in list(subscribers):
        subscriber.put(item)
    return {"id": event_id, "channel": channel, "subscribers": len(subscribers)}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
