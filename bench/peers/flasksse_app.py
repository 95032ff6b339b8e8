"""The ``flask-sse`` package under gunicorn's gevent worker, a peer for ``bench/fanout.py``.

flask-sse keeps no subscribers itself: ``GET /stream?channel=X`` (its blueprint, unchanged) opens one Redis
pub/sub connection per subscriber and relays every message; ``sse.publish(data, channel=X)`` is a Redis
``PUBLISH`` through a new Redis client each time (the package's own ``sse.redis`` property). This app only
wraps publishing in ``POST /api/broadcast`` with ``{"channel": ..., "data": ...}``; ``subscribers`` in the answer
is the count Redis returns for the ``PUBLISH``. The stream sends nothing, headers included, before its first
event, so the benchmark waits for ``PUBSUB NUMSUB`` instead of first bytes.

Run it with the Redis URL in ``BENCH_REDIS_URL``::

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c bench/peers/gunicorn_peers.conf.py \\
        --chdir bench/peers -b 127.0.0.1:0 flasksse_app:app
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import flask
from flask_sse import sse

app = flask.Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app.register_blueprint(sse, url_prefix="/stream")

_ids = itertools.count(1)


@app.post("/api/broadcast")
def broadcast() -> dict[str, Any]:
    body = flask.request.get_json(force=True)
    channel = str(body.get("channel") or "sse")
    event_id = next(_ids)
    receivers = sse.publish(body.get("data"), id=str(event_id), channel=channel)
    return {"id": event_id, "channel": channel, "subscribers": int(receivers)}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
