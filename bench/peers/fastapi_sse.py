"""FastAPI + sse-starlette under uvicorn, a peer for ``bench/fanout.py``.

One ``asyncio.Queue`` per subscriber, in a list per channel. ``GET /realtime/{channel}`` returns an
``EventSourceResponse`` over an async generator that registers its queue, yields ``retry: 3000`` and then every
event from the queue; sse-starlette adds its own ``: ping`` comment every ``BENCH_HEARTBEAT_INTERVAL`` seconds
(15) and its disconnect watcher. ``POST /api/broadcast`` with ``{"channel": ..., "data": ...}`` encodes the event
once (``ServerSentEvent.encode()``, the package's default ``\\r\\n`` line separator) and puts the bytes into every
queue of the channel, so sse-starlette passes them through without encoding them per subscriber.

Run it with::

    uvicorn fastapi_sse:app --app-dir bench/peers --host 127.0.0.1 --port 0
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

HEARTBEAT_INTERVAL = float(os.environ.get("BENCH_HEARTBEAT_INTERVAL", "15"))

app = FastAPI()

#: channel -> one queue per subscriber
subscriptions: dict[str, list[asyncio.Queue[bytes]]] = {}
_ids = itertools.count(1)


@app.get("/realtime/{channel}")
async def realtime(channel: str) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent | bytes]:
        mine: asyncio.Queue[bytes] = asyncio.Queue()
        subscribers = subscriptions.setdefault(channel, [])
        subscribers.append(mine)  # subscribed before the first event goes out
        try:
            yield ServerSentEvent(retry=3000)
            while True:
                yield await mine.get()
        finally:
            subscribers.remove(mine)

    return EventSourceResponse(stream(), ping=HEARTBEAT_INTERVAL)


@app.post("/api/broadcast")
async def broadcast(request: Request) -> dict[str, Any]:
    body = await request.json()
    channel = str(body.get("channel") or "broadcast")
    data = body.get("data")
    event_id = next(_ids)
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    item = ServerSentEvent(data=text, id=str(event_id)).encode()
    subscribers = subscriptions.get(channel, [])
    for subscriber in list(subscribers):
        subscriber.put_nowait(item)
    return {"id": event_id, "channel": channel, "subscribers": len(subscribers)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
