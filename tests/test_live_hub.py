"""The hub over HTTP, on gunicorn's gevent worker and on Werkzeug's threaded server: fan-out, replay
exactness across dropped connections, resets, a frozen subscriber next to fast ones, cleanup."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from typing import Any

import pytest

from tests.wire_helpers import Publisher, get_json, subscribe, wait_for

pytestmark = pytest.mark.live

HEARTBEAT = 0.5


@pytest.fixture(params=["gevent", "threaded"])
def server(request: Any, live_server: Any) -> Any:
    return live_server(kind=request.param, env={"ROVER_HEARTBEAT_INTERVAL": str(HEARTBEAT),
                                                "ROVER_SUBSCRIBER_QUEUE_SIZE": "64"})


def test_fan_out_to_hundreds_in_order(server: Any) -> None:
    readers = [subscribe(server.port, "fan") for _ in range(200)]
    publish = Publisher(server.port)
    sent = [publish("fan", {"n": i}, event="tick")["id"] for i in range(40)]
    publish.close()
    for reader in readers:
        events = reader.events(40, timeout=10)
        assert [e.last_event_id for e in events] == sent
        assert [json.loads(e.data)["n"] for e in events] == list(range(40))
        reader.response.close()


def test_replay_is_exact_across_dropped_connections(server: Any) -> None:
    total = 400
    publish = Publisher(server.port)
    publish("replay", "warm-up")
    done = threading.Event()
    published: list[str] = []

    def publisher() -> None:
        p = Publisher(server.port)
        for i in range(total):
            published.append(p("replay", i)["id"])
            if i % 20 == 0:
                time.sleep(0.01)
        p.close()
        done.set()

    rng = random.Random(11)
    clients = 3
    first = [subscribe(server.port, "replay") for _ in range(clients)]
    received: list[list[int]] = [[] for _ in range(clients)]
    last_ids: list[str] = [reader.parser.last_event_id for reader in first]  # from the position block
    for reader in first:
        reader.response.close()
    thread = threading.Thread(target=publisher)
    thread.start()
    deadline = time.monotonic() + 60
    while any(len(r) < total for r in received):
        assert time.monotonic() < deadline, [len(r) for r in received]
        for n in range(clients):
            reader = subscribe(server.port, "replay", last_ids[n])
            try:
                for _ in range(rng.randint(1, 30)):
                    reader.events(1, timeout=0.2)
            except TimeoutError:
                pass
            received[n].extend(int(e.data) for e in reader.dispatched if e.event == "message")
            last_ids[n] = reader.parser.last_event_id
            reader.response.close()  # drop the connection mid-stream
    thread.join()
    publish.close()
    for r in received:
        assert r == list(range(total)), "gap or duplicate"


def test_stale_id_gets_a_reset_event(server: Any) -> None:
    publish = Publisher(server.port)
    publish("stale", "kept")
    publish.close()
    reader = subscribe(server.port, "stale", last_event_id="1-1")
    reader.until(b"data: kept\n\n")
    reset, kept = reader.dispatched
    assert reset.event == "reset"
    assert json.loads(reset.data) == {"channel": "stale", "reason": "unknown", "last_event_id": "1-1",
                                      "missed": None, "replayed": 1}
    assert kept.data == "kept"
    reader.response.close()


def test_frozen_subscriber_does_not_hold_back_the_others(server: Any) -> None:
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect(("127.0.0.1", server.port))
    frozen.sendall(f"GET /realtime/busy HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    fast = [subscribe(server.port, "busy") for _ in range(3)]
    publish = Publisher(server.port)
    try:
        assert wait_for(lambda: get_json(server.port, "/test/state")["hub"]["subscribers"] == 4, timeout=5)
        payload = "x" * 2000
        sent = 0
        slowest_publish = 0.0
        # Publish until the frozen client is gone: the hub drops it when its queue overflows (after its
        # socket buffers fill: a few MB), or the kernel cuts it first (TCP_USER_TIMEOUT on a zero window).
        def frozen_gone() -> bool:
            return get_json(server.port, "/test/state")["hub"]["subscribers_per_channel"].get("busy", 0) <= 3

        while not frozen_gone():
            assert sent < 20_000, f"the frozen subscriber was never let go: {get_json(server.port, '/test/state')}"
            for _ in range(25):
                for _ in range(20):
                    started = time.monotonic()
                    publish("busy", {"i": sent, "pad": payload})
                    slowest_publish = max(slowest_publish, time.monotonic() - started)
                    sent += 1
                for reader in fast:  # the fast clients keep reading all along
                    reader.events(20, timeout=20)
        for reader in fast:
            assert [json.loads(e.data)["i"] for e in reader.dispatched] == list(range(sent))
        assert slowest_publish < 1.0, f"a publish was held up for {slowest_publish:.2f} s"
    finally:
        for reader in fast:
            reader.response.close()
        publish.close()
        frozen.close()


def test_departed_subscriber_is_removed_within_two_heartbeats(server: Any) -> None:
    reader = subscribe(server.port, "bye")
    assert get_json(server.port, "/test/state")["hub"]["subscribers_per_channel"] == {"bye": 1}
    reader.response.close()
    gone = wait_for(lambda: get_json(server.port, "/test/state")["hub"]["subscribers"] == 0,
                    timeout=HEARTBEAT * 2 + 1)
    assert gone, "the subscriber outlived two heartbeats"


def test_parked_streams_heartbeat_and_end_cleanly_on_sigterm(live_server: Any) -> None:
    """Under gunicorn, hub subscriptions are parked (no greenlet per client): same bytes, same lifecycle."""
    server = live_server(env={"ROVER_HEARTBEAT_INTERVAL": "0.3", "ROVER_SHUTDOWN_RETRY_MS": "500"})
    readers = [subscribe(server.port, "parked") for _ in range(20)]
    assert readers[0].response.headers["connection"] == "close"  # the body ends with the connection
    readers[0].until(b": ping\n\n", timeout=2)
    publish = Publisher(server.port)
    publish("parked", "before shutdown")
    publish.close()
    took = server.stop()
    assert took < 5.0
    for reader in readers:
        raw = reader.until(b"event: shutdown", timeout=2)
        assert b"data: before shutdown\n\n" in raw
        assert b"event: shutdown\nretry: 500\n" in raw[raw.index(b"data: before shutdown"):]
        assert reader.response.read_chunk(timeout=2) == b""  # then the server closes the connection
        reader.response.close()
