"""Operations against a live gunicorn: every figure of /admin/stream-stats and /metrics driven by real
traffic and compared, summed over two workers; /health and /ready transitions; the log lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from wire_helpers import Publisher, get_json, request, subscribe, wait_for, ws_client_class

import rover_stream as rs

pytestmark = pytest.mark.live

QUIET = {"ROVER_METRICS_INTERVAL": "0", "ROVER_DEMO": "0"}  # nothing publishes but the test


def prometheus(port: int, headers: dict[str, str] | None = None) -> dict[str, float]:
    """/metrics as {"name{label=value,...}": value}."""
    response = request(port, "/metrics", headers)
    try:
        assert response.status == 200, response.buffer
        text = response.body().decode()
    finally:
        response.close()
    values: dict[Any, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    return values


def status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    response = request(port, path, headers, timeout=10)
    response.close()
    return response.status


def stats(port: int) -> dict[str, Any]:
    return get_json(port, "/admin/stream-stats")


def test_every_figure_follows_the_traffic_over_two_workers(live_server: Any, redis_server: Any) -> None:
    server = live_server(env={**QUIET, "ROVER_WORKERS": "2", "ROVER_REDIS_URL": redis_server.url})
    time.sleep(1.5)  # both workers up and synced once
    before = stats(server.port)
    assert before["workers"] == 2
    readers = [subscribe(server.port, "gauges") for _ in range(6)]
    members = [ws_client_class().connect(f"ws://127.0.0.1:{server.port}/ws/comms/bridge?user=u{i}")
               for i in range(2)]
    publish = Publisher(server.port)
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect(("127.0.0.1", server.port))
    try:
        for i in range(20):
            publish("gauges", {"i": i})
        for reader in readers:
            assert len(reader.events(20)) == 20
        # the members' own frames: history, presence, then the joins published after each one subscribed
        # (two or three, as the joins on two workers interleave)
        joins = 0
        for member in members:
            while (frame := member.receive(0.5)) is not None:
                joins += json.loads(frame)["type"] == "join"

        def synced() -> dict[str, Any] | None:
            now = stats(server.port)
            return now if now["events_delivered"] - before["events_delivered"] >= 6 * 20 else None

        during = wait_for(synced, timeout=5)  # other workers sync every second
        assert during, stats(server.port)
        assert during["active_streams"] - before["active_streams"] == 6 + 2
        assert during["active_websockets"] == 2
        assert sum(during["open_streams_per_worker"].values()) == during["active_streams"]
        assert {int(pid) for pid in during["open_streams_per_worker"]} <= set(server.worker_pids())
        assert during["subscribers_per_channel"]["gauges"] == 6
        assert during["members_per_room"] == {"bridge": 2}
        assert during["streams_opened"] - before["streams_opened"] == 8
        # published: our 20 and the two room joins; delivered: 20 to each of 6, the joins to the members
        assert during["events_published"] - before["events_published"] == 20 + 2
        assert during["events_delivered"] - before["events_delivered"] == 20 * 6 + joins
        # a replay of 5, and a reset for an id the history never gave out (counted from here: a member that
        # joined while the other's join was in flight may have had it replayed)
        replayed_before = during["events_replayed"]
        replaying = subscribe(server.port, "gauges", last_event_id=readers[0].dispatched[14].last_event_id)
        if len(replaying.dispatched) < 5:
            replaying.events(5 - len(replaying.dispatched))
        assert [json.loads(e.data)["i"] for e in replaying.dispatched] == [15, 16, 17, 18, 19]
        resetting = request(server.port, "/realtime/gauges", {"Last-Event-ID": "not-an-id"})
        resetting.read_chunk()
        # a subscriber that never reads, dropped when its queue overflows behind full socket buffers
        frozen.sendall(f"GET /realtime/flood HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        assert wait_for(lambda: stats(server.port)["subscribers_per_channel"].get("flood") == 1, timeout=5)
        for i in range(8000):
            publish("flood", {"i": i, "pad": "x" * 4000})
            if i % 250 == 249 and stats(server.port)["slow_clients_dropped"] > before["slow_clients_dropped"]:
                break
        after = wait_for(lambda: (lambda s: s if s["slow_clients_dropped"] > before["slow_clients_dropped"]
                                  and s["events_replayed"] - replayed_before >= 25 else None)(
            stats(server.port)), timeout=10)
        assert after, stats(server.port)
        assert after["events_replayed"] - replayed_before == 5 + 20
        assert after["replay_resets"] - before["replay_resets"] == 1
        assert after["slow_clients_dropped"] - before["slow_clients_dropped"] == 1
        assert "flood" not in after["subscribers_per_channel"]
        # /metrics says the same, summed over the workers
        metrics = prometheus(server.port)
        final = stats(server.port)
        assert metrics["rover_events_published_total"] == final["events_published"]
        assert metrics["rover_slow_clients_dropped_total"] == final["slow_clients_dropped"]
        assert metrics["rover_channel_subscribers{channel=gauges}"] == 6 + 2  # the readers, the replay, the reset
        assert metrics["rover_room_members{room=bridge}"] == 2
        assert metrics["rover_delivery_latency_seconds_count"] > 0
    finally:
        for leftover in (locals().get("replaying"), locals().get("resetting")):
            if leftover is not None:
                getattr(leftover, "response", leftover).close()
        frozen.close()
        publish.close()
        for reader in readers:
            reader.response.close()
        for member in members:
            member.close()
    # closed streams: bytes and reasons
    gone = wait_for(lambda: stats(server.port)["active_streams"] == before["active_streams"], timeout=10)
    assert gone, stats(server.port)
    end = stats(server.port)
    received = sum(len(reader.raw) for reader in readers)
    assert end["total_bytes_streamed"] - before["total_bytes_streamed"] >= received
    assert end["avg_throughput_mbps"] > 0
    metrics = prometheus(server.port)
    assert metrics["rover_streams_closed_total{kind=sse,reason=disconnect}"] >= 6
    assert metrics["rover_streams_closed_total{kind=websocket,reason=disconnect}"] == 2


def test_delivery_latency_counts_every_live_event(live_server: Any) -> None:
    """The latency histogram counts events, not writes: 300 events published in a burst to three readers
    (several per write, as they pile up) add exactly 900 observations."""
    server = live_server(env={"ROVER_DEMO": "0"})
    readers = [subscribe(server.port, "latency") for _ in range(3)]
    publish = Publisher(server.port)
    try:
        before = prometheus(server.port).get("rover_delivery_latency_seconds_count", 0)
        for n in range(300):
            publish("latency", n)
        for reader in readers:
            reader.until(b"data: 299\n", timeout=10)
        assert wait_for(lambda: prometheus(server.port)["rover_delivery_latency_seconds_count"] - before == 900,
                        timeout=5), prometheus(server.port)["rover_delivery_latency_seconds_count"] - before
    finally:
        publish.close()
        for reader in readers:
            reader.response.close()


def test_a_worker_killed_keeps_its_counts_and_loses_its_gauges(live_server: Any, redis_server: Any) -> None:
    server = live_server(env={**QUIET, "ROVER_WORKERS": "2", "ROVER_REDIS_URL": redis_server.url})
    readers = [subscribe(server.port, "k") for _ in range(8)]
    try:
        assert wait_for(lambda: stats(server.port)["active_streams"] == 8, timeout=5)
        opened = stats(server.port)["streams_opened"]
        per_worker = stats(server.port)["open_streams_per_worker"]
        victim = int(max(per_worker, key=per_worker.get))
        os.kill(victim, signal.SIGKILL)
        survivors = 8 - per_worker[str(victim)]
        assert wait_for(lambda: stats(server.port)["active_streams"] == survivors, timeout=10), stats(server.port)
        assert stats(server.port)["streams_opened"] == opened  # a dead worker's counts stay in the totals
    finally:
        for reader in readers:
            reader.response.close()


def test_connection_errors_are_counted(live_server: Any) -> None:
    server = live_server(env=QUIET)
    before = stats(server.port)["connection_errors"]
    response = request(server.port, "/test/broken-csv")
    try:
        while response.read_chunk(timeout=5) not in (b"", None):
            pass
    except ConnectionError:
        pass  # cut without the final chunk: the error mid-stream
    response.close()
    assert wait_for(lambda: stats(server.port)["connection_errors"] == before + 1, timeout=5)
    assert prometheus(server.port)["rover_stream_errors_total"] == before + 1


def test_ready_follows_capacity_and_redis(live_server: Any, redis_server: Any) -> None:
    server = live_server(env={**QUIET, "ROVER_MAX_STREAMS": "2", "ROVER_REDIS_URL": redis_server.url})
    answer = request(server.port, "/ready")
    assert answer.status == 200 and json.loads(answer.body())["status"] == "ready"
    answer.close()
    readers = [subscribe(server.port, "cap") for _ in range(2)]
    try:
        answer = request(server.port, "/ready")
        body = json.loads(answer.body())
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        assert body["checks"]["capacity"] == {"ok": False, "open_streams": 2, "max_streams": 2}
        answer.close()
        assert get_json(server.port, "/health")["status"] == "healthy"  # alive all the same
    finally:
        for reader in readers:
            reader.response.close()
    assert wait_for(lambda: status(server.port, "/ready") == 200, timeout=5)
    redis_server.kill()
    answer = request(server.port, "/ready", timeout=10)
    body = json.loads(answer.body())
    assert answer.status == 503 and body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]
    answer.close()
    redis_server.start()
    assert wait_for(lambda: status(server.port, "/ready") == 200, timeout=10)


def test_ready_is_503_while_shutting_down(tmp_path: Any) -> None:
    app = rs.create_app({"ROVER_DEMO": False, "ROVER_DATA_DIR": str(tmp_path)})
    client = app.test_client()
    assert client.get("/ready").status_code == 200
    rs.get_runtime(app).begin_shutdown()
    answer = client.get("/ready")
    assert answer.status_code == 503 and answer.json is not None
    assert answer.json["checks"]["shutdown"] == {"ok": False}


def test_metrics_and_stats_need_an_admin_token_when_auth_is_on(live_server: Any) -> None:
    secret = "k" * 40
    server = live_server(env={**QUIET, "ROVER_SECRET_KEY": secret})
    for path in ("/metrics", "/admin/stream-stats"):
        assert status(server.port, path) == 401
        user = rs.mint_token(secret, subscribe=["*"])
        assert status(server.port, path, {"Authorization": f"Bearer {user}"}) == 403
    admin = rs.mint_token(secret, admin=True)
    assert prometheus(server.port, {"Authorization": f"Bearer {admin}"})["rover_worker_up"] == 1


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_stream_log_lines_with_request_id_and_no_secrets(live_server: Any, log_format: str) -> None:
    secret = "s" * 40
    server = live_server(env={**QUIET, "ROVER_LOG_FORMAT": log_format, "ROVER_SECRET_KEY": secret})
    token = rs.mint_token(secret, subscribe=["logged"])
    response = request(server.port, f"/realtime/logged?token={token}", {"X-Request-ID": "trace-42"})
    assert response.status == 200 and response.headers["x-request-id"] == "trace-42"
    response.read_chunk()
    response.close()
    assert wait_for(lambda: "stream close" in server.log(), timeout=5)
    log = server.log()
    assert token not in log and secret not in log
    if log_format == "json":
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        opened = next(entry for entry in lines if entry["message"] == "stream open")
        closed = next(entry for entry in lines if entry["message"] == "stream close")
        assert opened["request_id"] == closed["request_id"] == "trace-42"
        assert opened["path"] == "/realtime/logged" and opened["kind"] == "sse"
        assert closed["reason"] == "disconnect" and closed["bytes"] > 0 and closed["duration"] >= 0
    else:
        line = next(line for line in log.splitlines() if "stream close" in line)
        assert "request_id=trace-42" in line and "reason=disconnect" in line and "path=/realtime/logged" in line
    fresh = request(server.port, "/health", {"X-Request-ID": "bad id\twith junk"})
    assert fresh.headers["x-request-id"] != "bad id\twith junk" and len(fresh.headers["x-request-id"]) == 16
    fresh.close()
