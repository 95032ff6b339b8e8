"""Worker lifecycle under gunicorn: SIGTERM ends streams promptly and cleanly; the stream cap answers 503
while /health keeps answering."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.wire_helpers import SSEReader, get_json, request, wait_for

pytestmark = pytest.mark.live


def test_sigterm_ends_streams_with_a_final_retry_event_and_exits_fast(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(env={"ROVER_GRACEFUL_TIMEOUT": "30", "ROVER_SHUTDOWN_RETRY_MS": "750"})
    readers = [SSEReader(request(server.port, path)) for path in ("/test/idle-sse", "/events?interval=0.2")]
    for reader in readers:
        reader.events(1)
    download = request(server.port, "/csv?rows=100000&delay=0.01")  # a long export, mid-way
    download.read_chunk()

    took = server.stop()
    assert took < 5.0, f"the worker held on for {took:.1f} s of its 30 s graceful timeout"
    for reader in readers:
        raw = reader.until(b"event: shutdown", timeout=1)
        final = raw[raw.rindex(b"event: shutdown"):]
        assert b"retry: 750\n" in final
        assert reader.response.read_chunk(timeout=1) == b""  # then the body ends properly
        assert reader.parser.retry == 750
        reader.response.close()
    # The export was cut short: no terminating chunk, so the client knows its file is incomplete.
    with pytest.raises(ConnectionError, match="closed by the server"):
        while download.read_chunk(timeout=1) is not None:
            pass
    assert not download.ended
    download.close()
    assert "Worker stopping: ending open streams" in server.log()


def test_stream_cap_answers_503_and_health_keeps_answering(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(env={"ROVER_MAX_STREAMS": "3", "ROVER_RETRY_MS": "4000"})
    held = [request(server.port, "/test/idle-sse") for _ in range(3)]
    for response in held:
        SSEReader(response).events(1)

    refused = request(server.port, "/events")
    assert refused.status == 503
    assert refused.headers["retry-after"] == "4"
    body = json.loads(refused.body())
    assert body["error"] == "too_many_streams" and body["status"] == 503 and "3 streams" in body["message"]
    refused.close()

    started = time.monotonic()
    health = get_json(server.port, "/health")
    assert time.monotonic() - started < 1.0
    assert health["status"] == "healthy" and health["open_streams"] == 3 and health["max_streams"] == 3

    held.pop().close()
    assert wait_for(lambda: get_json(server.port, "/health")["open_streams"] == 2, timeout=5)
    admitted = request(server.port, "/events")
    assert admitted.status == 200
    for response in [admitted, *held]:
        response.close()


def test_cap_holds_under_a_concurrent_burst(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(env={"ROVER_MAX_STREAMS": "20"})
    statuses: list[int] = []
    responses = []
    lock = threading.Lock()

    def connect() -> None:
        response = request(server.port, "/test/idle-sse", timeout=10)
        with lock:
            statuses.append(response.status)
            responses.append(response)

    threads = [threading.Thread(target=connect) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) == 20 and statuses.count(503) == 40
    assert get_json(server.port, "/health")["open_streams"] == 20
    for response in responses:
        response.close()


def test_sigterm_cuts_stalled_clients_and_blocked_plain_generators(live_server) -> None:  # type: ignore[no-untyped-def]
    import socket

    server = live_server(env={"ROVER_GRACEFUL_TIMEOUT": "30"})
    tail = request(server.port, "/test/tail")
    assert tail.read_chunk() == b"first line\n"
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(f"GET /csv?rows=10000000 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    time.sleep(1.0)  # the export fills the socket buffers and blocks writing
    took = server.stop()
    assert took < 5.0, f"the worker held on for {took:.1f} s"
    tail.close()
    stalled.close()


def test_eventsource_reconnecting_on_a_kept_alive_connection_during_shutdown(live_server) -> None:  # type: ignore[no-untyped-def]
    """A browser may reuse the idle keep-alive connection for its reconnect: that must not be a 503."""
    import http.client

    server = live_server()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/health")  # the connection the browser keeps alive
    assert connection.getresponse().read()
    stream = SSEReader(request(server.port, "/test/idle-sse"))
    stream.events(1)
    server.proc.send_signal(15)
    stream.until(b"event: shutdown")
    connection.request("GET", "/realtime/news", headers={"Accept": "text/event-stream"})
    answer = connection.getresponse()
    assert answer.status == 200 and (answer.getheader("Content-Type") or "").startswith("text/event-stream")
    assert b"event: shutdown\nretry: 1000\n" in answer.read()
    assert answer.getheader("Connection") == "close"
    connection.close()
    stream.response.close()
