"""Server-Sent Events added to an existing Flask app, with plain ``def`` views.

Shows: ``RoverStream(app, url_prefix="/rt")`` on an app with pages of its own (left as they were); an SSE
view built from a generator of ``rs.Event`` (a countdown whose ids let a client resume with
``Last-Event-ID``); an SSE view on a hub channel; an ordinary POST view that publishes to that channel. The
extension also mounts, under the prefix, ``GET /rt/realtime/<channel>`` and ``POST /rt/api/broadcast``.

Run it from this folder (then open http://127.0.0.1:8000/)::

    rover-stream serve --app sse_in_existing_app:app

Try it::

    curl -N 'localhost:8000/countdown?start=5'
    curl -N -H 'Last-Event-ID: 3' 'localhost:8000/countdown?start=5'     # resumes at 2
    curl -N localhost:8000/orders/stream &
    curl -X POST -H 'Content-Type: application/json' -d '{"item": "tea", "qty": 2}' localhost:8000/orders
    curl -X POST -H 'Content-Type: application/json' \
         -d '{"channel": "orders", "event": "order", "data": {"item": "jam"}}' localhost:8000/rt/api/broadcast
"""

import time

from flask import Flask, jsonify, request

import rover_stream as rs

app = Flask(__name__)
streams = rs.RoverStream(app, url_prefix="/rt")

PAGE = """<!doctype html>
<meta charset="utf-8"><title>Corner shop</title>
<h1>Corner shop</h1><p>Doors open in <b id="countdown">…</b></p><h2>Orders</h2><ul id="orders"></ul>
<script>
  const countdown = new EventSource("/countdown");
  countdown.addEventListener("tick", (e) => {
    document.getElementById("countdown").textContent = JSON.parse(e.data).remaining;
  });
  countdown.addEventListener("done", () => countdown.close());   // else EventSource reconnects
  new EventSource("/orders/stream").addEventListener("order", (e) => {
    document.getElementById("orders").append(Object.assign(document.createElement("li"), {textContent: e.data}));
  });
</script>
"""


@app.get("/")
def index():
    return PAGE


@app.get("/countdown")
def countdown():
    """From ?start= (default 10) down to 0, one event every ?interval= seconds; each event's id is its
    number, so a client that reconnects with Last-Event-ID: 3 gets 2, 1, 0."""
    start = min(request.args.get("start", 10, type=int), 1000)
    interval = min(max(request.args.get("interval", 1.0, type=float), 0.0), 10.0)
    last = rs.last_event_number()  # read the request in the view: the generator runs after it returns
    if last is not None:
        start = min(start, last - 1)
    if start < 0:
        return "", 204  # nothing left: a 204 tells EventSource to stop reconnecting

    def events():
        for n in range(start, -1, -1):
            yield rs.Event(data={"remaining": n}, event="tick", id=n)
            time.sleep(interval)  # cooperative under the gevent worker
        yield rs.Event(data="open", event="done")

    return rs.sse_response(events())


@app.get("/orders/stream")
def order_stream():
    """Every order placed, live; a client that reconnects first gets what it missed."""
    return rs.sse_response(streams.hub.subscribe("orders", last_event_id=rs.last_event_id()))


@app.post("/orders")
def place_order():
    order = request.get_json(silent=True)
    if not isinstance(order, dict) or not isinstance(order.get("item"), str):
        raise rs.ApiError('Send a JSON object such as {"item": "tea", "qty": 2}.', code="invalid_order")
    result = streams.publish("orders", order, event="order")
    return jsonify(id=result.message.id, subscribers=result.subscribers), 201
