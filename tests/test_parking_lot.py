"""The parking lot (``rover_stream.transport.parked``): under gunicorn's gevent worker, an SSE response that
reads a hub subscription hands its connection to the worker's one writer greenlet instead of keeping a
greenlet of its own. What its clients notice is all that is tested: the bytes they receive (head, events,
heartbeats, the final event) and when their connection ends; and that the runtime lets go of the stream.

The lot lives on gevent's event loop, so every scenario runs in a subprocess that is monkey-patched before
anything else is imported, as gunicorn's gevent worker is. There a real view,
``sse_response(get_hub().subscribe(channel))``, is called through the app's WSGI callable the way gunicorn
calls it: ``gunicorn.socket`` in the environ is the server end of a loopback connection, the response parks
itself on it and answers ALREADY_HANDLED, and the server end is closed as gunicorn closes its copy. The
scenario reads the client end and hands what it saw (bytes, arrival times, why streams ended) back as JSON;
the tests assert on that, here, with pytest's assertion messages.

Bytes cross the process boundary as latin-1 text (:func:`text`, :func:`wire`). Times are seconds since the
scenario's app was made. Lower bounds on times are exact (only a broken lot sends early); upper bounds are
generous (a loaded machine only makes things late).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any


from rover_stream.transport.parked import PROBE_WRITES
from rover_stream.wire.sse import HEARTBEAT, encode
from rover_stream.wire.sse_parser import EventStreamParser, ParsedEvent

ROOT = Path(__file__).resolve().parent.parent

#: The scenario subprocess: gevent's monkey-patching first (as gunicorn's gevent worker does), then this module.
RUNNER = ("from gevent import monkey; monkey.patch_all()\n"
          "import sys\n"
          "from tests.test_parking_lot import main\n"
          "main(sys.argv[1:])\n")
#: Longest a scenario subprocess may run; each takes well under 3 s, so only a hung lot reaches it.
SCENARIO_TIMEOUT = 30.0
#: Longest wait, inside a scenario, for something that should happen at once.
DEADLINE = 3.0

CHANNEL = "parked"


def text(data: bytes) -> str:
    return data.decode("latin-1")


def wire(data: str) -> bytes:
    return data.encode("latin-1")


# ---------------------------------------------------------------------------------------------------------------
# Inside the scenario subprocess (gevent, monkey-patched)
# ---------------------------------------------------------------------------------------------------------------


class Client:
    """The client end of one parked connection. It reads everything, in a greenlet of its own, noting when
    each piece arrived; or, with ``read=False``, nothing until :meth:`start` (a client that stopped reading)."""

    def __init__(self, rig: Rig, sock: socket.socket, number: int, read: bool = True) -> None:
        self.rig = rig
        self.sock = sock
        self.number = number  # the order in which its stream was opened (Rig.ended's key)
        self.arrivals: list[tuple[float, bytes]] = []  # one per recv: for a SOCK_SEQPACKET socket, one per write
        self.eof = False
        self._reader: Any = None
        if read:
            self.start()

    def start(self) -> None:
        import gevent

        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            self.arrivals.append((self.rig.clock(), data))

    @property
    def received(self) -> bytes:
        return b"".join(data for _, data in self.arrivals)

    def wait_for(self, expected: bytes, timeout: float = DEADLINE) -> bool:
        return self.rig.wait(lambda: expected in self.received, timeout)

    def wait_for_eof(self, timeout: float = DEADLINE) -> bool:
        return self.rig.wait(lambda: self.eof, timeout)

    def close(self) -> None:
        """The client closes its connection (its socket, reading included)."""
        if self._reader is not None:
            self._reader.kill()
        self.sock.close()

    def report(self) -> dict[str, Any]:
        return {"arrivals": [[when, text(data)] for when, data in self.arrivals], "eof": self.eof}


class Unparked:
    """The same view served the ordinary way (no ``gunicorn.socket``: the server iterates the body), read in
    a greenlet: what a parked client must receive, byte for byte, apart from the head."""

    def __init__(self, rig: Rig, path: str) -> None:
        import gevent
        from werkzeug.test import EnvironBuilder

        self.chunks: list[bytes] = []
        self._body: Any = rig.app(EnvironBuilder(path=path).get_environ(), _start_response([]))
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        for chunk in self._body:
            self.chunks.append(chunk)

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    def close(self) -> None:
        self._greenlet.kill()
        self._body.close()


def _start_response(seen: list[str]) -> Callable[..., Any]:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        seen.append(status)
        return lambda data: None

    return start_response


class Rig:
    """One app (``create_app`` with a streaming view), its runtime, hub and parking lot, and a loopback
    listener whose accepted connections the view's responses are parked on."""

    def __init__(self, data_dir: str, **settings: Any) -> None:
        from flask import request

        import rover_stream as rs
        from rover_stream import signals
        from rover_stream.transport.parked import parking_lot

        self.zero = time.monotonic()
        self.app = rs.create_app({"ROVER_METRICS_INTERVAL": 0, "ROVER_DATA_DIR": data_dir,
                                  **{f"ROVER_{name}": value for name, value in settings.items()}})

        @self.app.get("/parked-test/<channel>")
        def stream(channel: str) -> Any:
            heartbeat = request.args.get("heartbeat", type=float)
            return rs.sse_response(rs.get_hub(self.app).subscribe(channel), heartbeat=heartbeat)

        self.runtime = rs.get_runtime(self.app)
        self.hub = self.runtime.hub
        self.lot = parking_lot(self.runtime)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.numbers: dict[Any, int] = {}  # stream body -> the order it was opened in
        self.ended: dict[int, tuple[float, str]] = {}  # stream number -> (when, reason)
        signals.stream_opened.connect(self._opened, weak=False)
        signals.stream_closed.connect(self._closed, weak=False)

    def _opened(self, body: Any, **_: Any) -> None:
        self.numbers[body] = len(self.numbers)

    def _closed(self, body: Any, reason: str, **_: Any) -> None:
        self.ended[self.numbers[body]] = (self.clock(), reason)

    def clock(self) -> float:
        return time.monotonic() - self.zero

    def wait(self, predicate: Callable[[], Any], timeout: float = DEADLINE) -> bool:
        """Let the other greenlets run until ``predicate()`` holds; False after ``timeout`` seconds."""
        import gevent

        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.005)
        return True

    def park(self, channel: str = CHANNEL, *, query: str = "", read: bool = True, client_rcvbuf: int = 0,
             server_sndbuf: int = 0) -> Client:
        """A client connected over TCP loopback, its request for ``channel``'s stream parked."""
        client = socket.socket()
        if client_rcvbuf:  # before connecting: the window it offers is set then
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        client.connect(self.listener.getsockname())
        server, _ = self.listener.accept()
        if server_sndbuf:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
        return self.serve(server, client, channel, query=query, read=read)

    def serve(self, server: socket.socket, client: socket.socket, channel: str = CHANNEL, *, query: str = "",
              read: bool = True) -> Client:
        """Call the app as gunicorn's gevent worker does, with ``server`` as ``gunicorn.socket``; the
        response must park itself (ALREADY_HANDLED, start_response never called). Then close ``server``, as
        gunicorn closes its socket: the lot writes to its own duplicate of the descriptor."""
        from gunicorn.workers.base_async import ALREADY_HANDLED
        from werkzeug.test import EnvironBuilder

        environ = EnvironBuilder(path=f"/parked-test/{channel}", query_string=query,
                                 environ_overrides={"gunicorn.socket": server}).get_environ()
        started: list[str] = []
        handled = self.app(environ, _start_response(started))
        if handled is not ALREADY_HANDLED or started:
            raise AssertionError(f"the response was not parked (start_response got {started})")
        server.close()
        return Client(self, client, len(self.numbers) - 1, read=read)

    def unparked(self, channel: str = CHANNEL) -> Unparked:
        return Unparked(self, f"/parked-test/{channel}")

    def publish(self, data: Any, event: str | None = None, channel: str = CHANNEL) -> dict[str, Any]:
        """Publish; return what the test needs to know of the message (its id) and when it went out."""
        message = self.hub.publish(channel, data, event=event).message
        return {"id": message.id, "event": event, "data": data, "at": self.clock()}

    def subscribers(self, channel: str = CHANNEL) -> int:
        count: int = self.hub.stats()["subscribers_per_channel"].get(channel, 0)
        return count

    def report(self) -> dict[str, Any]:
        return {"ended": {str(number): list(end) for number, end in self.ended.items()},
                "open_streams": self.runtime.open_streams, "parked": len(self.lot.streams),
                "subscribers": self.subscribers()}


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {}


def scenario(function: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    SCENARIOS[function.__name__] = function
    return function


def main(argv: list[str]) -> None:
    """The subprocess's entry point: ``RUNNER <scenario> <data dir> <result file>``."""
    from rover_stream.concurrency import gevent_active

    name, data_dir, result_file = argv
    if not gevent_active():
        raise SystemExit("the scenario must run monkey-patched: the parking lot needs gevent's loop")
    Path(result_file).write_text(json.dumps(SCENARIOS[name](data_dir)))


@scenario
def head_then_events(data_dir: str) -> dict[str, Any]:
    # SOCK_SEQPACKET keeps the boundaries of the lot's writes: the client's every recv is one write.
    rig = Rig(data_dir, HEARTBEAT_INTERVAL=30)
    server, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = rig.serve(server, client_end)
    plain = rig.unparked()
    assert client.wait_for(b"id: ") and rig.wait(lambda: b"id: " in plain.received)  # up to its position block
    alone = rig.publish({"n": 1})
    assert client.wait_for(f"id: {alone['id']}\n".encode())
    # Published back to back: nothing yields in between, so the writer finds all five waiting.
    burst = [rig.publish({"n": 2}), rig.publish("two\nlines", event="note"), rig.publish({"n": 4}, event="tick"),
             rig.publish(None), rig.publish("héllo ✓")]
    last = f"id: {burst[-1]['id']}\n".encode()
    assert client.wait_for(last) and rig.wait(lambda: last in plain.received)
    rig.wait(lambda: plain.received.endswith(b"\n\n"))
    plain.close()
    return {"client": client.report(), "unparked": text(plain.received), "alone": alone, "burst": burst,
            **rig.report()}


@scenario
def heartbeats(data_dir: str) -> dict[str, Any]:
    import gevent

    rig = Rig(data_dir, HEARTBEAT_INTERVAL=0.2)
    client = rig.park()
    assert client.wait_for(b"id: ")
    published = []
    for n in range(6):  # an event every 0.1 s: never HEARTBEAT_INTERVAL of silence
        published.append(rig.publish(n))
        gevent.sleep(0.1)
    idle_from = rig.clock()
    gevent.sleep(1.0)
    return {"client": client.report(), "idle_from": idle_from, "published": published,
            **rig.report()}


SEND_TIMEOUT = 0.5


@scenario
def stuck_client(data_dir: str) -> dict[str, Any]:
    # TCP_USER_TIMEOUT is twice the heartbeat interval (2 s): the kernel gives up on the stuck client only
    # after SEND_TIMEOUT has had its turn.
    rig = Rig(data_dir, HEARTBEAT_INTERVAL=1.0, SEND_TIMEOUT=SEND_TIMEOUT)
    # Small buffers both ways, and never read: the server end fills after a few kilobytes.
    stuck = rig.park(read=False, client_rcvbuf=4096, server_sndbuf=4096)
    reader = rig.park()
    assert reader.wait_for(b"id: ")
    open_before = rig.runtime.open_streams
    published = [rig.publish({"n": n, "pad": "x" * 4000}) for n in range(40)]  # 160 KB for each client
    last = f"id: {published[-1]['id']}\n".encode()
    reader.wait_for(last)
    reader_done = reader.arrivals[-1][0] if last in reader.received else None
    rig.wait(lambda: stuck.number in rig.ended, timeout=4.0)
    after_close = rig.report()
    stuck.start()  # it reads at last: what the server had sent it, then the end of the connection
    stuck.wait_for_eof()
    return {"stuck": stuck.report(), "reader": reader.report(), "stuck_number": stuck.number,
            "reader_number": reader.number, "published": published, "reader_done": reader_done,
            "open_before": open_before, "after_close": after_close, **rig.report()}


@scenario
def client_goes_away(data_dir: str) -> dict[str, Any]:
    import gevent

    rig = Rig(data_dir, HEARTBEAT_INTERVAL=30)  # no heartbeat in this scenario's time: only the probe can tell
    gone = rig.park()
    half = rig.park()
    assert gone.wait_for(b"id: ") and half.wait_for(b"id: ")
    left_at = rig.clock()
    gone.close()
    half.sock.shutdown(socket.SHUT_WR)  # done sending, still reading (allowed by HTTP/1.1)
    rig.wait(lambda: gone.number in rig.ended)
    gevent.sleep(0.3)  # the half-closed one's probes are over (PROBE_INTERVAL is 0.05 s)
    later = rig.publish("still here")
    half.wait_for(f"id: {later['id']}\n".encode())
    return {"half": half.report(), "gone_number": gone.number, "half_number": half.number, "left_at": left_at,
            "later": later, **rig.report()}


FINAL = encode({"bye": True}, event="goodbye", retry=250)


@scenario
def lot_shutdown(data_dir: str) -> dict[str, Any]:
    rig = Rig(data_dir, HEARTBEAT_INTERVAL=30)
    clients = [rig.park() for _ in range(3)]
    event = rig.publish("before")
    line = f"id: {event['id']}\n".encode()
    assert all(client.wait_for(line) for client in clients)
    open_before = rig.runtime.open_streams
    shutdown_at = rig.clock()
    rig.lot.shutdown(FINAL)
    for client in clients:
        client.wait_for_eof()
    return {"clients": [client.report() for client in clients], "event": event, "open_before": open_before,
            "shutdown_at": shutdown_at, **rig.report()}


@scenario
def runtime_shutdown(data_dir: str) -> dict[str, Any]:
    rig = Rig(data_dir, HEARTBEAT_INTERVAL=30, SHUTDOWN_RETRY_MS=500)
    clients = [rig.park() for _ in range(3)]
    event = rig.publish("before")
    line = f"id: {event['id']}\n".encode()
    assert all(client.wait_for(line) for client in clients)
    shutdown_at = rig.clock()
    rig.runtime.begin_shutdown()  # what SIGTERM does (signals.shutdown_requested)
    for client in clients:
        client.wait_for_eof()
    return {"clients": [client.report() for client in clients], "event": event, "shutdown_at": shutdown_at,
            **rig.report()}


@scenario
def heartbeat_argument(data_dir: str) -> dict[str, Any]:
    import gevent

    rig = Rig(data_dir, HEARTBEAT_INTERVAL=30)
    client = rig.park(query="heartbeat=0.2")  # sse_response(..., heartbeat=0.2)
    assert client.wait_for(b"id: ")
    gevent.sleep(1.0)
    return {"client": client.report(), **rig.report()}


# ---------------------------------------------------------------------------------------------------------------
# The tests (in pytest's process)
# ---------------------------------------------------------------------------------------------------------------


def run_scenario(name: str, tmp_path: Path) -> dict[str, Any]:
    """Run scenario ``name`` in a monkey-patched subprocess; return what it saw."""
    result_file = tmp_path / f"{name}.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROVER_")}  # no Redis, etc.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.run([sys.executable, "-c", RUNNER, name, str(tmp_path / "data"), str(result_file)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    assert process.returncode == 0, f"scenario {name} failed:\n{process.stderr[-6000:]}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def received(client: dict[str, Any]) -> bytes:
    return b"".join(wire(data) for _, data in client["arrivals"])


def split_head(stream: bytes) -> tuple[str, dict[str, str], bytes]:
    """The status line, headers (names lower-cased) and body of a response without chunked framing."""
    head, blank, body = stream.partition(b"\r\n\r\n")
    assert blank, f"no end of head in {stream[:300]!r}"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return status, headers, body


def block(event: dict[str, Any]) -> bytes:
    """A published event as the hub sends it to a one-channel subscriber: its id line, then the encoder's
    block (JSON null for None)."""
    data = "null" if event["data"] is None else event["data"]
    return f"id: {event['id']}\n".encode() + encode(data, event=event["event"])


def parsed(event: dict[str, Any]) -> ParsedEvent:
    data = event["data"]
    return ParsedEvent(data if isinstance(data, str) else json.dumps(data, separators=(",", ":")),
                       event["event"] or "message", event["id"])


def ended(result: dict[str, Any], number: int) -> tuple[float, str] | None:
    end = result["ended"].get(str(number))
    return None if end is None else (end[0], end[1])


def test_head_first_then_events_in_order_waiting_ones_in_one_write(tmp_path: Path) -> None:
    """A parked client gets the response head (no chunked framing: the body ends with the connection), then
    exactly the bytes the unparked response sends: ``retry``, the position block, each event as the encoder
    made it, in publication order. Events that were waiting together go out in one write."""
    result = run_scenario("head_then_events", tmp_path)
    writes = [wire(data) for _, data in result["client"]["arrivals"]]
    stream = b"".join(writes)
    status, headers, body = split_head(stream)
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")  # the head goes first
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["connection"] == "close" and headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no" and "date" in headers
    assert "transfer-encoding" not in headers and "content-length" not in headers

    events = [result["alone"], *result["burst"]]
    epoch = events[0]["id"].split("-")[0]
    expected = (encode(retry=3000) + encode(id=f"{epoch}-0")  # the channel's position when it subscribed
                + b"".join(block(event) for event in events))
    assert body == expected
    assert body == wire(result["unparked"])  # what the greenlet-per-stream response sends
    parser = EventStreamParser()
    assert parser.feed(body) == [parsed(event) for event in events]
    assert parser.retry == 3000 and not parser.comments  # no heartbeat: HEARTBEAT_INTERVAL is 30 s
    # The five published back to back were waiting together: one write carries them all.
    assert writes[-1] == b"".join(block(event) for event in result["burst"])
    assert result["open_streams"] == 1 and result["parked"] == 1


def test_idle_stream_gets_heartbeats_at_the_interval_and_a_busy_one_none(tmp_path: Path) -> None:
    """With ROVER_HEARTBEAT_INTERVAL=0.2, a parked stream that has been silent that long gets a ``: ping``
    comment, and again every interval while it stays idle; a ping never follows other bytes sooner than the
    interval, so a stream whose events come every 0.1 s gets none."""
    interval = 0.2
    result = run_scenario("heartbeats", tmp_path)
    arrivals = [(when, wire(data)) for when, data in result["client"]["arrivals"]]
    pings = [when for when, data in arrivals if data == HEARTBEAT]
    # Everything is either an event (one per arrival: they are 0.1 s apart) or a heartbeat on its own.
    stream = b"".join(data for _, data in arrivals)
    assert stream.count(HEARTBEAT) == len(pings), stream
    for previous, (when, data) in pairwise(arrivals):
        if data == HEARTBEAT:
            assert when - previous[0] >= interval * 0.9, f"a ping {when - previous[0]:.3f} s after other bytes"
    idle = [when for when in pings if when > result["idle_from"]]
    assert len(idle) >= 3, f"pings at {pings} (idle from {result['idle_from']:.3f})"
    assert idle[0] - result["idle_from"] < interval + 0.3
    gaps = [b - a for a, b in pairwise(idle)]
    assert all(gap < interval + 0.3 for gap in gaps), gaps
    events = EventStreamParser().feed(split_head(stream)[2])
    assert [event.data for event in events] == [str(item["data"]) for item in result["published"]]


def test_client_that_stops_reading_does_not_stall_the_others_and_is_cut_after_send_timeout(
        tmp_path: Path) -> None:
    """Two clients on one lot, 160 KB of events: the one that never reads (small socket buffers) falls
    behind; the other still gets every event at once. ROVER_SEND_TIMEOUT after it fell behind, the stuck
    connection is closed (reason ``slow_client``), and it leaves the runtime and the hub. What it got
    before is a clean prefix of what the other got."""
    result = run_scenario("stuck_client", tmp_path)
    published = result["published"]
    reader_body = split_head(received(result["reader"]))[2]
    assert [event.last_event_id for event in EventStreamParser().feed(reader_body)] == \
        [event["id"] for event in published]
    stuck_end = ended(result, result["stuck_number"])
    assert stuck_end is not None, "the stuck stream was never closed"
    closed_at, reason = stuck_end
    assert reason == "slow_client"
    assert result["reader_done"] is not None
    # The reader had everything while the stuck stream was still open, and soon after publishing.
    assert result["reader_done"] < closed_at
    assert result["reader_done"] - published[-1]["at"] < 1.0
    # Cut after SEND_TIMEOUT without progress (it fell behind at the first write), not before; and well
    # before the kernel's TCP_USER_TIMEOUT (2 s) would have ("disconnect").
    assert SEND_TIMEOUT <= closed_at - published[0]["at"] < 1.8
    assert result["open_before"] == 2
    assert result["after_close"]["open_streams"] == 1 and result["after_close"]["subscribers"] == 1
    assert result["after_close"]["parked"] == 1 and ended(result, result["reader_number"]) is None
    # The stuck client, reading at last, gets what the server had sent it, then the end of the connection.
    assert result["stuck"]["eof"]
    stuck_body = split_head(received(result["stuck"]))[2].replace(HEARTBEAT, b"")
    reader_events = reader_body.replace(HEARTBEAT, b"")
    assert len(stuck_body) < len(reader_events) // 2  # it really was behind
    assert reader_events.startswith(stuck_body)


def test_closed_client_is_noticed_at_once_and_a_half_closed_one_keeps_its_stream(tmp_path: Path) -> None:
    """A client that closes its connection is released within a moment (the end-of-file probe: two quick
    heartbeats, the second fails), not at the next heartbeat 30 s later. A client that only shuts its
    sending side sees those two pings and keeps receiving events."""
    result = run_scenario("client_goes_away", tmp_path)
    gone_end = ended(result, result["gone_number"])
    assert gone_end is not None, "the closed client's stream was not released"
    assert gone_end[1] == "disconnect"
    assert gone_end[0] - result["left_at"] < 1.0
    assert ended(result, result["half_number"]) is None
    assert result["open_streams"] == 1 and result["parked"] == 1 and result["subscribers"] == 1
    half = split_head(received(result["half"]))[2]
    assert half.endswith(block(result["later"]))
    assert half.count(HEARTBEAT) == PROBE_WRITES


def test_lot_shutdown_writes_the_final_bytes_to_every_stream_and_closes_it(tmp_path: Path) -> None:
    """``lot.shutdown(final)``: every parked client gets ``final`` right after what it had, then the
    connection ends; the streams leave the lot, the runtime and the hub (reason ``shutdown``)."""
    result = run_scenario("lot_shutdown", tmp_path)
    assert result["open_before"] == 3
    for number, client in enumerate(result["clients"]):
        assert client["eof"], f"client {number} was not closed"
        assert split_head(received(client))[2].endswith(block(result["event"]) + FINAL)
        end = ended(result, number)
        assert end is not None and end[1] == "shutdown" and end[0] - result["shutdown_at"] < 1.0
    assert result["open_streams"] == 0 and result["parked"] == 0 and result["subscribers"] == 0


def test_runtime_shutdown_sends_the_shutdown_event_and_closes_parked_streams(tmp_path: Path) -> None:
    """On SIGTERM (``runtime.begin_shutdown()``) every parked client gets the ``shutdown`` event with the
    short reconnect delay, then the connection ends; the streams end by themselves, before the runtime's
    force close (1 s) would cut them, and the runtime has none left."""
    result = run_scenario("runtime_shutdown", tmp_path)
    for number, client in enumerate(result["clients"]):
        assert client["eof"], f"client {number} was not closed"
        body = split_head(received(client))[2]
        before, shutdown = body.split(block(result["event"]))
        parser = EventStreamParser()
        assert parser.feed(shutdown) == [ParsedEvent(
            json.dumps({"reason": "server shutting down", "reconnect_ms": 500}, separators=(",", ":")),
            "shutdown", "")]
        assert parser.retry == 500 and shutdown.endswith(b"\n\n")
        end = ended(result, number)
        assert end is not None and end[1] == "shutdown" and end[0] - result["shutdown_at"] < 0.5
    assert result["open_streams"] == 0 and result["parked"] == 0 and result["subscribers"] == 0


def test_heartbeat_argument_of_sse_response_applies_to_a_parked_stream(tmp_path: Path) -> None:
    """``sse_response(subscription, heartbeat=0.2)`` pings every 0.2 s unparked, and parked too (the lot
    used to ping every parked stream at ROVER_HEARTBEAT_INTERVAL, whatever the response asked for)."""
    result = run_scenario("heartbeat_argument", tmp_path)
    assert received(result["client"]).count(HEARTBEAT) >= 3
