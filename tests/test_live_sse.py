"""SSE against a real gunicorn (gevent worker): headers, framing, heartbeats, resume, disconnect cleanup."""

from __future__ import annotations

import time

import pytest

from tests.wire_helpers import SSEReader, get_json, request, wait_for

pytestmark = pytest.mark.live

HEARTBEAT = 0.4


@pytest.fixture
def server(live_server):  # type: ignore[no-untyped-def]
    return live_server(env={"ROVER_HEARTBEAT_INTERVAL": str(HEARTBEAT), "ROVER_RETRY_MS": "2500"})


def test_headers_and_framing(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/events?interval=0.05", {"Accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    reader = SSEReader(response)
    assert response.read_chunk() == b"retry: 2500\n\n"  # first, at once: the reconnect delay
    events = reader.events(3)
    assert [e.last_event_id for e in events] == ["0", "1", "2"]
    assert [e.data.startswith('{"id":') for e in events] == [True] * 3
    response.close()


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_after_last_event_id(server, how: str) -> None:  # type: ignore[no-untyped-def]
    if how == "header":
        response = request(server.port, "/events?interval=0.05", {"Last-Event-ID": "41"})
    else:
        response = request(server.port, "/events?interval=0.05&last_event_id=41")
    events = SSEReader(response).events(2)
    assert [e.last_event_id for e in events] == ["42", "43"]
    response.close()


def test_heartbeats_while_the_generator_is_blocked(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/test/idle-sse")
    reader = SSEReader(response)
    assert reader.events(1)[0].data == "hello"
    started = time.monotonic()
    raw = reader.until(b": ping\n\n: ping\n\n", timeout=HEARTBEAT * 4)
    assert raw.endswith(b": ping\n\n: ping\n\n")
    assert time.monotonic() - started >= HEARTBEAT * 1.5  # paced by the interval, not sent in a burst
    response.close()


def test_vanished_client_is_cleaned_up_within_two_heartbeats(server) -> None:  # type: ignore[no-untyped-def]
    response = request(server.port, "/test/idle-sse")
    SSEReader(response).events(1)
    assert get_json(server.port, "/test/state")["open_streams"] == 1
    response.close()
    closed_at = time.monotonic()
    state = wait_for(lambda: (s := get_json(server.port, "/test/state"))["open_streams"] == 0
                     and s["cleaned"]["idle"] == 1 and s, timeout=HEARTBEAT * 2 + 1.0)
    assert state, "two heartbeats after the client left, the stream was open or its generator not closed"
    assert time.monotonic() - closed_at <= HEARTBEAT * 2 + 1.0


def test_many_events_waiting_go_out_in_one_write(server) -> None:  # type: ignore[no-untyped-def]
    """A generator that produces faster than the socket takes has its backlog coalesced into few writes."""
    response = request(server.port, "/test/burst?n=2000")
    reader = SSEReader(response)
    events = reader.events(2000)
    assert [e.data for e in events] == [f"event {i}" for i in range(2000)]
    assert len(response.chunks) < 2000 / 10
    assert response.read_chunk() == b""  # the generator ended: the response ends cleanly
    response.close()


def test_client_leaving_an_idle_stream_is_noticed_at_once(live_server) -> None:  # type: ignore[no-untyped-def]
    """With a 30 s heartbeat, only the socket watcher can notice the departure within a second."""
    server = live_server(env={"ROVER_HEARTBEAT_INTERVAL": "30"})
    response = request(server.port, "/test/idle-sse")
    SSEReader(response).events(1)
    response.close()
    started = time.monotonic()
    assert wait_for(lambda: (s := get_json(server.port, "/test/state"))["open_streams"] == 0
                    and s["cleaned"]["idle"] == 1, timeout=2)
    assert time.monotonic() - started < 1.0


def test_client_that_only_half_closes_keeps_its_stream(live_server) -> None:  # type: ignore[no-untyped-def]
    import socket

    server = live_server(env={"ROVER_HEARTBEAT_INTERVAL": "30"})
    response = request(server.port, "/events?interval=0.2")
    reader = SSEReader(response)
    reader.events(1)
    response.sock.shutdown(socket.SHUT_WR)  # done sending, still reading
    events = reader.events(3, timeout=5)
    assert len(events) == 3
    response.close()
