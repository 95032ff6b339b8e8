"""A chat app on WebSocket rooms: ``RoverStream(app)`` serves rooms at ``/ws/comms/<room>``.

A member connects to ``/ws/comms/<room>?user=<name>`` and gets JSON frames: ``history`` (the room's recent
messages) and ``presence`` (who is there) on joining, then ``join``/``leave`` and ``message`` frames
(``{"type": "message", "room", "user", "text", "id", "timestamp"}``); it sends ``{"text": "..."}`` or plain
text. A room is the hub channel ``room.<room>``, so a plain ``def`` view can read it as Server-Sent Events.
The page below is a complete browser client: no build step, messages shown with ``textContent``.

Run it (from this folder)::

    rover-stream serve --app chat_room:app

Try it: open http://127.0.0.1:8000/?room=lobby&user=ada in two tabs (change the user), or::

    wscat -c 'ws://127.0.0.1:8000/ws/comms/lobby?user=grace'
    curl -N localhost:8000/chat/lobby/feed                   # read-only, as SSE
    curl localhost:8000/api/rooms/lobby                      # who is in the room
"""

from flask import Flask

import rover_stream as rs

app = Flask(__name__)
streams = rs.RoverStream(app)

PAGE = """<!doctype html>
<meta charset="utf-8"><title>Chat</title>
<h1 id="title">Chat</h1>
<div id="log"></div>
<form><input name="text" autocomplete="off" autofocus> <button>Send</button></form>
<script>
  const params = new URLSearchParams(location.search);
  const room = params.get("room") || "lobby";
  const user = params.get("user") || prompt("Your name?") || "anonymous";
  document.getElementById("title").textContent = `#${room} as ${user}`;
  const line = (text) => {
    const p = document.createElement("p");
    p.textContent = text;
    document.getElementById("log").append(p);
  };
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/comms/${encodeURIComponent(room)}` +
                           `?user=${encodeURIComponent(user)}`);
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "message") line(`${frame.user}: ${frame.text}`);
    else if (frame.type === "history") frame.messages.forEach((m) => line(`${m.user}: ${m.text}`));
    else if (frame.type === "presence") line(`* here: ${frame.members.join(", ")}`);
    else if (frame.type === "join" || frame.type === "leave") line(`* ${frame.user} ${frame.type}s`);
    else if (frame.type === "error") line(`! ${frame.message}`);
  };
  ws.onclose = (e) => line(`* disconnected (${e.code} ${e.reason})`);
  document.querySelector("form").onsubmit = (e) => {
    e.preventDefault();
    const input = e.target.elements.text;
    if (input.value.trim()) ws.send(JSON.stringify({text: input.value}));
    input.value = "";
  };
</script>
"""


@app.get("/")
def index():
    return PAGE


@app.get("/chat/<room>/feed")
def room_feed(room):
    """The room's joins, leaves and messages as Server-Sent Events, for readers that only listen."""
    if room.startswith("private-"):  # private rooms need a token to join: do not expose them here
        raise rs.ApiError("Private rooms are for their members.", status=403, code="forbidden")
    return rs.sse_response(streams.hub.subscribe(f"room.{room}", last_event_id=rs.last_event_id()))
