"""Every example endpoint of the seed documents, against the demo app (wsgi:app) under gunicorn, with curl and
raw HTTP clients, as a reader of those documents would use them."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need
from wire_helpers import SSEReader, get_json, wait_for
from wire_helpers import request as raw_request

import rover_stream as rs
from rover_stream.demo import telemetry
from rover_stream.wire.sse_parser import EventStreamParser

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def server(module_server: Any) -> Any:
    return module_server(app="wsgi:app")


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Any:
    """Every connection a test opens is closed after it (a leaked socket is a test failure)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def request(port: int, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    response = raw_request(port, path, headers, **kwargs)
    _OPEN.append(response)
    return response


class Reader(SSEReader):
    """An SSE reader whose ``events(n)`` returns exactly ``n`` events, keeping the others for later."""

    def __init__(self, response: Any) -> None:
        super().__init__(response)
        self.pending: list[Any] = []

    def events(self, count: int, timeout: float = 5.0) -> list[Any]:
        if len(self.pending) < count:
            self.pending += super().events(count - len(self.pending), timeout)
        found, self.pending = self.pending[:count], self.pending[count:]
        return found


def sse(server: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reader:
    response = request(server.port, path, headers, method=method, timeout=10)
    assert response.status == 200, response.buffer
    assert response.headers["content-type"].startswith("text/event-stream")
    return Reader(response)


def post_json(server: Any, path: str, body: Any, content_type: str = "application/json") -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", path, raw, {"Content-Type": content_type})
    answer = connection.getresponse()
    status, data = answer.status, answer.read()
    connection.close()
    return status, json.loads(data) if data else None


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([need("curl"), "-sS", *args], capture_output=True, timeout=timeout)


def data(event: Any) -> Any:
    return json.loads(event.data)


# -- Cosmic Rover ---------------------------------------------------------------------------------------------

def test_rover_telemetry_every_two_seconds_the_same_rover_for_everyone(server: Any) -> None:
    first, second = sse(server, "/stream/rover-telemetry"), sse(server, "/stream/rover-telemetry")
    a = [data(e) for e in first.events(2, timeout=8)]
    b = [data(e) for e in second.events(2, timeout=8)]
    assert a[1]["tick"] == a[0]["tick"] + 1 and a[1]["time"] - a[0]["time"] == telemetry.TICK
    # One producer feeds everyone: the same tick is the same reading for both. (A tick may fall between
    # the two subscriptions: compare the ticks both got.)
    by_tick = {r["tick"]: r for r in b}
    common = [r for r in a if r["tick"] in by_tick]
    assert common and all(r == by_tick[r["tick"]] for r in common), (a, b)
    for reading in a:
        assert reading == telemetry.reading(reading["tick"])  # the simulation, not noise
        assert 0 <= reading["battery_level"] <= 100 and -130 < reading["temperature_c"] < 30
        assert reading["status"] in telemetry.DRAW_W and {"lat", "lon", "x_m", "y_m"} <= set(reading["location"])
    assert all(e.last_event_id for e in first.dispatched)  # with ids, so a reconnecting client resumes


def test_rover_telemetry_resumes_without_a_gap(server: Any) -> None:
    reader = sse(server, "/stream/rover-telemetry")
    events = reader.events(1, timeout=8)
    reader.response.close()
    time.sleep(4.5)  # two ticks or more go by while the client is away
    resumed = sse(server, "/stream/rover-telemetry", {"Last-Event-ID": events[-1].last_event_id})
    ticks = [data(e)["tick"] for e in resumed.events(3, timeout=8)]
    assert ticks == list(range(data(events[-1])["tick"] + 1, data(events[-1])["tick"] + 4))


def test_recent_telemetry_fills_a_chart(server: Any) -> None:
    recent = get_json(server.port, "/api/rover/telemetry?last=30")["telemetry"]
    ticks = [r["tick"] for r in recent]
    assert ticks == list(range(ticks[0], ticks[0] + 30)) and abs(ticks[-1] - telemetry.current_tick()) <= 1
    assert request(server.port, "/api/rover/telemetry?last=0").status == 400


def test_the_simulation_is_plausible() -> None:
    day = [telemetry.reading(int(telemetry.EPOCH / telemetry.TICK) + 10 * telemetry.TICKS_PER_SOL + i)
           for i in range(telemetry.TICKS_PER_SOL)]
    driving = [r for r in day if r["status"] == "driving"]
    assert driving and all(r["speed_mps"] > 0 for r in driving)
    # the battery drains while driving and charges in sunlight when parked
    pairs = list(zip(day, day[1:], strict=False))
    assert all(b["battery_level"] <= a["battery_level"] for a, b in pairs if a["status"] == "driving")
    assert any(b["battery_level"] > a["battery_level"] for a, b in pairs if a["status"] == "charging")
    # warmest in the afternoon, coldest before dawn; the rover moves only while driving
    warmest = max(day, key=lambda r: r["temperature_c"])
    assert "12:00" <= warmest["local_solar_time"] <= "17:00"
    assert all(a["location"] == b["location"] for a, b in pairs if a["status"] == b["status"] == "sleeping")


def test_rover_image_is_a_real_jpeg_streamed_with_its_length(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "received_image.jpg"
    result = curl("-D", str(tmp_path / "headers"), "-o", str(out), f"{server.url}/stream/rover-image")
    assert result.returncode == 0, result.stderr
    headers = (tmp_path / "headers").read_text().lower()
    body = out.read_bytes()
    assert "content-type: image/jpeg" in headers and f"content-length: {len(body)}" in headers
    assert body[:3] == b"\xff\xd8\xff" and body[-2:] == b"\xff\xd9" and len(body) > 1_000_000
    on_disk = Path(server.log_path.parent / "var" / "rover_image.jpg")
    assert body == on_disk.read_bytes()


# -- the streaming guide --------------------------------------------------------------------------------------

def test_events_have_ids_every_second(server: Any) -> None:
    reader = sse(server, "/events")
    started = time.monotonic()
    events = reader.events(3, timeout=6)
    assert [e.last_event_id for e in events] == ["0", "1", "2"] and data(events[2])["message"] == "Event 2"
    assert time.monotonic() - started >= 1.8


def test_live_metrics_are_the_servers_real_figures(server: Any) -> None:
    for _ in range(20):
        get_json(server.port, "/health")
    reader = sse(server, "/live-metrics")
    event = reader.events(1, timeout=6)[0]
    metrics = data(event)
    assert event.event == "metrics"
    pid = metrics["pid"]
    assert pid in server.worker_pids()
    rss_mb = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert abs(metrics["memory_mb"] - rss_mb) < max(10, rss_mb * 0.25)
    assert metrics["open_streams"] >= 1 and metrics["active_connections"] >= 1
    assert 0 <= metrics["cpu_usage"] <= 200 and 0 < metrics["memory_usage"] < 100
    # requests a second: counts requests made now
    before = data(reader.events(1, timeout=6)[0])["requests_per_second"]
    for _ in range(60):
        get_json(server.port, "/health")
    after = max(data(e)["requests_per_second"] for e in reader.events(1, timeout=6))
    assert after > before and after >= 10


def test_download_from_the_uploads_folder(server: Any) -> None:
    (server.uploads / "report.bin").write_bytes(bytes(range(256)) * 400)
    missing = request(server.port, "/download/nope.txt")
    assert missing.status == 404 and json.loads(missing.body())["error"] == "not_found"
    whole = request(server.port, "/download/report.bin")
    assert whole.status == 200 and whole.headers["content-length"] == "102400"
    assert "attachment" in whole.headers["content-disposition"] and "report.bin" in whole.headers["content-disposition"]
    assert whole.body() == bytes(range(256)) * 400
    part = request(server.port, "/download/report.bin", {"Range": "bytes=256-511"})
    assert part.status == 206 and part.body() == bytes(range(256))


def test_process_stream_reports_progress_then_completed(server: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    _OPEN.append(connection)
    connection.request("POST", "/process-stream", json.dumps({"total_items": 50, "delay": 0}),
                       {"Content-Type": "application/json"})
    answer = connection.getresponse()
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
    parser = EventStreamParser()
    events = parser.feed(answer.read())
    progress = [json.loads(e.data) for e in events if e.event == "message"]
    assert [p["item_id"] for p in progress] == list(range(50)) and progress[-1]["progress"] == 100
    assert events[-1].event == "completed" and json.loads(events[-1].data)["total_processed"] == 50
    status, body = post_json(server, "/process-stream", {"total_items": "many"})
    assert status == 400 and body["error"] == "invalid_field"


def test_managed_stream_tracks_connections_with_metadata(server: Any) -> None:
    readers = [sse(server, "/managed-stream?interval=0.2", {"User-Agent": f"probe-{i}"}) for i in range(2)]
    first = data(readers[0].events(1)[0])
    assert first["message"] == "Managed message 0" and first["connection_id"]
    listed = wait_for(lambda: get_json(server.port, "/managed-stream/connections")["active_connections"] == 2, 5)
    assert listed
    connections = get_json(server.port, "/managed-stream/connections")["connections"]
    assert {c["metadata"]["user_agent"] for c in connections} == {"probe-0", "probe-1"}
    assert all(c["metadata"]["endpoint"] == "/managed-stream" for c in connections)
    assert max(data(e)["active_connections"] for e in readers[0].events(2)) == 2
    for reader in readers:
        reader.response.close()
    assert wait_for(lambda: get_json(server.port, "/managed-stream/connections")["active_connections"] == 0, 5)


def test_broadcast_reaches_every_broadcast_stream(server: Any) -> None:
    readers = [sse(server, "/broadcast-stream") for _ in range(2)]
    for reader in readers:
        reader.until(b"\n\nid: ")
    status, body = post_json(server, "/broadcast", {"message": "Dust storm at 14:00", "sender": "weather"})
    assert status == 200 and body["status"] == "broadcast_sent" and body["recipients"] >= 2
    for reader in readers:
        got = data(reader.events(1)[0])
        assert got["type"] == "broadcast" and got["message"] == "Dust storm at 14:00" and got["sender"] == "weather"
    assert post_json(server, "/broadcast", {"sender": "x"})[0] == 400
    assert post_json(server, "/broadcast", b"message=hi", "application/x-www-form-urlencoded")[0] == 415


def test_chat_join_leave_messages_and_the_last_ten(server: Any) -> None:
    for i in range(12):
        sent = post_json(server, "/chat/send", {"user": "ada", "message": f"note {i}"})
        assert sent == (200, {"status": "message_sent"})
    grace = sse(server, "/chat/grace")
    history = [data(e) for e in grace.events(10)]
    assert [m["text"] for m in history] == [f"note {i}" for i in range(2, 12)]
    assert data(grace.events(1)[0]) | {"timestamp": None} == {"type": "user_joined", "user": "grace", "timestamp": None}
    linus = sse(server, "/chat/linus")
    linus.events(10)
    joined = [data(e) for e in grace.events(1)]
    assert joined[0]["type"] == "user_joined" and joined[0]["user"] == "linus"
    post_json(server, "/chat/send", {"user": "grace", "message": "<b>hello</b>"})
    assert data(grace.events(1)[0])["text"] == "<b>hello</b>"
    assert [m for m in (data(e) for e in linus.events(2)) if m["type"] == "message"][0]["text"] == "<b>hello</b>"
    linus.response.close()
    left = data(grace.events(1, timeout=5)[0])
    assert left["type"] == "user_left" and left["user"] == "linus"
    assert post_json(server, "/chat/send", {"user": "ada", "message": "x" * 5000})[0] == 400


def test_analytics_counts_what_this_server_saw(server: Any) -> None:
    reader = sse(server, "/analytics-stream?interval=0.1&keepalive=0.5")
    start = data(reader.events(1)[0])
    request(server.port, "/", {"Accept": "text/html"}).close()  # a page view by a new visitor
    assert request(server.port, "/download/absent").status == 404  # an error
    post_json(server, "/chat/send", {"user": "a", "message": "b"})  # an API call

    def caught_up() -> dict[str, Any] | None:
        latest = data(reader.events(1, timeout=3)[0])
        done = latest["page_views"] >= start["page_views"] + 1 and latest["errors"] >= start["errors"] + 1 and \
            latest["api_calls"] >= start["api_calls"] + 1
        return latest if done else None

    latest = wait_for(caught_up, 5)
    assert latest and latest["unique_visitors"] >= start["unique_visitors"] + 1
    assert b"event: keepalive" in reader.until(b"event: keepalive", timeout=3)


def test_large_dataset_in_batches(server: Any) -> None:
    reader = sse(server, "/large-dataset?delay=0")
    batches = [data(e) for e in reader.events(1000, timeout=60)]
    ids = [record["id"] for batch in batches for record in batch["batch"]]
    assert ids == list(range(100_000))
    assert all(b["batch_size"] == 100 and b["total_records"] == 100_000 for b in batches)


def test_health_monitored_stream_pings_and_headers(server: Any) -> None:
    reader = sse(server, "/health-monitored-stream?interval=0.1&ping_interval=0.35")
    assert reader.response.headers["x-health-monitoring"] == "enabled"
    assert reader.response.headers["x-ping-interval"] == "0.35"
    events = reader.events(12, timeout=5)
    assert any(e.event == "ping" for e in events)
    counters = [data(e)["counter"] for e in events if e.event == "message"]
    assert counters == list(range(len(counters)))


# -- the synchronous streaming page ---------------------------------------------------------------------------

def test_count_streams_line_by_line(server: Any) -> None:
    response = request(server.port, "/stream/count")
    first = response.read_chunk(timeout=2)
    assert first == b"Count: 0\n"  # before the rest exists: streamed, not collected
    result = curl("-N", f"{server.url}/stream/count")
    assert result.stdout.decode() == "".join(f"Count: {i}\n" for i in range(10))


def test_csv_and_ndjson(server: Any) -> None:
    result = curl("-D", "-", f"{server.url}/csv")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"attachment; filename=data.csv" in head.lower().replace(b'"', b"")
    assert body.decode().splitlines() == ["id,name,value"] + [f"{i},item-{i},{i * 10}" for i in range(100)]
    lines = curl(f"{server.url}/json-stream").stdout.decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(50))


def test_large_file_with_length_and_range(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "large.bin"
    assert curl("-o", str(out), f"{server.url}/large-file", timeout=60).returncode == 0
    on_disk = server.log_path.parent / "var" / "large_file.bin"
    assert out.stat().st_size == 32 * 1024 * 1024
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(on_disk.read_bytes()).digest()
    part = request(server.port, "/large-file", {"Range": "bytes=-10"})
    assert part.status == 206 and part.body() == on_disk.read_bytes()[-10:]


def test_stream_stats_are_real(server: Any) -> None:
    before = get_json(server.port, "/admin/stream-stats")
    assert set(before) >= {"active_streams", "total_bytes_streamed", "avg_throughput_mbps", "connection_errors"}
    reader = sse(server, "/events?interval=0.1")
    reader.events(2)
    during = get_json(server.port, "/admin/stream-stats")
    assert during["active_streams"] >= before["active_streams"] + 1
    curl("-o", "/dev/null", f"{server.url}/large-file", timeout=60)
    after = get_json(server.port, "/admin/stream-stats")
    assert after["total_bytes_streamed"] >= before["total_bytes_streamed"] + 32 * 1024 * 1024
    assert after["avg_throughput_mbps"] > 0


def test_stream_stats_need_an_admin_token_when_auth_is_on(live_server: Any) -> None:
    secret = "s" * 40
    server = live_server(app="wsgi:app", env={"ROVER_SECRET_KEY": secret})
    assert request(server.port, "/admin/stream-stats").status == 401
    user = rs.mint_token(secret, subscribe=["*"])
    assert request(server.port, f"/admin/stream-stats?token={user}").status == 403
    admin = rs.mint_token(secret, admin=True)
    answer = request(server.port, "/admin/stream-stats", {"Authorization": f"Bearer {admin}"})
    assert answer.status == 200 and "active_streams" in json.loads(answer.body())


# -- the SSE API pages ----------------------------------------------------------------------------------------

def test_main_stream_rhythms_ids_and_retry(server: Any) -> None:
    reader = sse(server, "/stream?tick=0.05", {"Accept": "text/event-stream"})
    events = reader.events(1 + 4 + 2 + 1 + 1 + 2 + 1, timeout=10)  # the connection event and 8 "seconds"
    assert b"retry: 5000\n" in reader.raw
    assert events[0].event == "connected" and events[0].last_event_id == "0"
    assert [int(e.last_event_id) for e in events] == list(range(len(events)))
    names = [e.event for e in events[1:]]
    expected = []
    for second in range(1, 9):
        expected += [name for name, every in (("message", 2), ("sensor", 4), ("heartbeat", 5),
                                               ("notification", 8)) if second % every == 0]
    assert names[:len(expected)] == expected
    assert data(next(e for e in events if e.event == "heartbeat"))["clients"] >= 1
    resumed = sse(server, "/stream?tick=0.05", {"Last-Event-ID": "41"})
    assert resumed.events(1)[0].last_event_id == "42"


def test_metrics_is_an_event_stream_for_event_stream_clients(server: Any) -> None:
    reader = sse(server, "/metrics", {"Accept": "text/event-stream"})
    event = reader.events(1, timeout=6)[0]
    assert event.event == "metrics" and "cpu_usage" in data(event)
    assert data(event)["pid"] in server.worker_pids() and "memory_mb" in data(event)
    prometheus = request(server.port, "/metrics")
    assert prometheus.status == 200 and prometheus.headers["content-type"].startswith("text/plain")
    assert b"rover_streams_open" in prometheus.body()


def test_realtime_channel_and_api_broadcast(server: Any) -> None:
    reader = sse(server, "/realtime/alerts")
    reader.until(b"\n\nid: ")
    status, body = post_json(server, "/api/broadcast", {"channel": "alerts", "event": "alert", "data": {"level": 3}})
    assert status == 200 and body["subscribers"] == 1
    event = reader.events(1)[0]
    assert event.event == "alert" and data(event) == {"level": 3} and event.last_event_id == body["id"]


def test_health_and_status_document(server: Any) -> None:
    reader = sse(server, "/events?interval=0.2")
    reader.events(1)
    health = get_json(server.port, "/health")
    assert health["status"] == "healthy" and health["connected_clients"] >= 1
    assert health["producers"] == {"rover-telemetry": "running", "server-metrics": "running", "metrics-sync": "running"}
    status = request(server.port, "/", {"Accept": "application/json"})
    document = json.loads(status.body())
    assert document["status"] == "running" and document["clients"] >= 1 and document["endpoints"]["stream"] == "/stream"
    page = request(server.port, "/", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")


# -- one rover for the whole deployment ---------------------------------------------------------------------

def test_one_telemetry_producer_across_workers_and_failover_without_a_gap(live_server: Any,
                                                                           redis_server: Any) -> None:
    """Two workers on Redis: one of them holds the producer's lease and publishes each tick once; when it is
    killed, the other takes over, publishes the ticks that were missed, and a client that resumes with its
    Last-Event-ID sees every tick once."""
    import signal

    server = live_server(app="wsgi:app", env={"ROVER_REDIS_URL": redis_server.url, "ROVER_WORKERS": "2"})
    reader = sse(server, "/stream/rover-telemetry")
    events = reader.events(1, timeout=10)
    while data(events[-1])["tick"] < telemetry.current_tick() - 1:  # past the start-up backfill: live
        events += reader.events(1, timeout=10)
    events += reader.events(2, timeout=10)
    ticks = [data(e)["tick"] for e in events]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # each tick once, though two workers run
    ticks = ticks[-3:]
    holder = redis_server.command("GET", "rover:lease:rover-telemetry").split(b"\r\n")[1].decode()
    pid = int(holder.split(":")[1])
    assert pid in server.worker_pids()
    os.kill(pid, signal.SIGKILL)
    last_id = events[-1].last_event_id
    seen = list(ticks)
    deadline = time.monotonic() + 30
    while seen[-1] < ticks[-1] + 8 and time.monotonic() < deadline:
        try:
            for event in reader.events(1, timeout=10):
                seen.append(data(event)["tick"])
                last_id = event.last_event_id
        except (ConnectionError, TimeoutError, OSError):  # our stream was on the killed worker: resume
            reader = sse(server, "/stream/rover-telemetry", {"Last-Event-ID": last_id})
    assert seen == list(range(ticks[0], ticks[0] + len(seen))), seen
    assert seen[-1] >= ticks[-1] + 8
    holder_now = redis_server.command("GET", "rover:lease:rover-telemetry").split(b"\r\n")[1].decode()
    assert int(holder_now.split(":")[1]) != pid, (holder, holder_now, server.worker_pids(), server.log()[-3000:])


def test_analytics_are_the_deployments_with_redis(live_server: Any, redis_server: Any) -> None:
    """Two workers on Redis: page views, visitors, API calls and errors land on either worker, and the
    analytics stream (served by either) ends up showing exactly what the whole server saw."""
    server = live_server(app="wsgi:app", env={"ROVER_REDIS_URL": redis_server.url, "ROVER_WORKERS": "2"})
    reader = sse(server, "/analytics-stream?interval=0.1&keepalive=0.5")
    start = data(reader.events(1, timeout=5)[0])
    visitors = [f"{n:032x}" for n in range(1, 6)]
    for n in range(12):  # 12 page views by 5 visitors, on new connections: both workers get some
        request(server.port, "/", {"Accept": "text/html", "Cookie": f"rover_visitor={visitors[n % 5]}"}).close()
    for _ in range(4):
        assert request(server.port, "/download/absent").status == 404
    for _ in range(3):
        post_json(server, "/chat/send", {"user": "a", "message": "b"})
    want = {"page_views": start["page_views"] + 12, "unique_visitors": start["unique_visitors"] + 5,
            "api_calls": start["api_calls"] + 3, "errors": start["errors"] + 4}

    def caught_up() -> dict[str, Any] | None:
        latest = data(reader.events(1, timeout=3)[0])
        return latest if all(latest[k] == v for k, v in want.items()) else None

    assert wait_for(caught_up, 10), want
    time.sleep(2.5)  # every worker has shared its counts twice since: nothing more comes
    final = data(reader.events(1, timeout=3)[0])  # the state, as a keepalive
    assert {k: final[k] for k in want} == want
