"""RoverStream added to someone else's Flask app: everything under its prefix works, and the host's own
answers stay byte for byte what they were (its 404 page, its OPTIONS, its /health, its 500s).

To reproduce by hand: ``cd tests/live_apps && rover-stream serve --app host_app:app``, then compare
``curl -i localhost:8000/nope`` (the host's HTML page) with ``curl -i localhost:8000/rt/nope/x`` and
``curl -N localhost:8000/rt/realtime/news``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import rover_stream as rs

sys.path.insert(0, str(Path(__file__).resolve().parent / "live_apps"))

from host_app import PREFIX, make_app  # noqa: E402

from tests.wire_helpers import Publisher, request, room_echo, subscribe  # noqa: E402

HOST_REQUESTS = [
    pytest.param("GET", "/page", {}, id="page"),
    pytest.param("GET", "/missing", {}, id="own-404"),
    pytest.param("POST", "/page", {}, id="own-405"),
    pytest.param("GET", "/health", {}, id="own-health"),
    pytest.param("OPTIONS", "/page", {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
                 id="own-preflight"),
    pytest.param("GET", "/page", {"Origin": "https://elsewhere.example", "X-Request-ID": "abc"}, id="origin"),
    pytest.param("OPTIONS", "/health", {"Origin": "https://elsewhere.example",
                                        "Access-Control-Request-Method": "GET"}, id="automatic-options"),
    pytest.param("GET", f"{PREFIX}x/realtime/news", {}, id="next-to-the-prefix"),
]


def answer(app: Flask, method: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    response = app.test_client().open(path, method=method, headers=headers)
    return response.status_code, sorted(response.headers.items()), response.get_data()


@pytest.mark.parametrize(("method", "path", "headers"), HOST_REQUESTS)
@pytest.mark.parametrize("origins", ["", "https://dashboard.example", "*"])
def test_the_host_app_answers_exactly_as_without_the_extension(method: str, path: str, headers: dict[str, str],
                                                               origins: str) -> None:
    plain = make_app(with_streams=False)
    extended = make_app(config={"ROVER_CORS_ORIGINS": origins, "ROVER_METRICS_INTERVAL": 0})
    assert answer(extended, method, path, headers) == answer(plain, method, path, headers)


def test_the_host_app_keeps_its_own_500() -> None:
    for app in (make_app(with_streams=False), make_app(config={"ROVER_METRICS_INTERVAL": 0})):
        app.config["PROPAGATE_EXCEPTIONS"] = False
        status, headers, body = answer(app, "POST", "/boom", {})
        assert status == 500 and b"Internal Server Error" in body and b'"error"' not in body


def test_everything_mounts_under_the_prefix_only() -> None:
    app = make_app(config={"ROVER_METRICS_INTERVAL": 0})
    rules = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("rover_stream.")}
    assert rules == {f"{PREFIX}{path}" for path in (
        "/realtime", "/realtime/<channel>", "/api/broadcast", "/api/channels", "/api/channels/<channel>", "/health",
        "/ready", "/metrics", "/admin/stream-stats", "/ws/comms/<team_channel>", "/api/rooms/<room>",
        "/rover-stream.js")}
    client = app.test_client()
    assert client.get("/health").get_json() == {"host": "ok"}
    health = client.get(f"{PREFIX}/health")
    assert health.status_code == 200 and health.get_json()["status"] == "healthy"
    assert health.headers["X-Request-ID"]


def test_errors_under_the_prefix_are_json_and_cors_applies_there() -> None:
    app = make_app(config={"ROVER_CORS_ORIGINS": "https://dashboard.example", "ROVER_METRICS_INTERVAL": 0})
    client = app.test_client()
    bad = client.get(f"{PREFIX}/realtime/-bad-")
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_channel"
    wrong = client.post(f"{PREFIX}/api/broadcast", data="x", content_type="text/plain")
    assert wrong.status_code == 415 and wrong.get_json()["error"] == "unsupported_media_type"
    preflight = client.open(f"{PREFIX}/api/broadcast", method="OPTIONS", headers={
        "Origin": "https://dashboard.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Methods"]
    refused = client.open(f"{PREFIX}/api/broadcast", method="OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 403 and refused.get_json()["error"] == "origin_not_allowed"
    allowed = client.get(f"{PREFIX}/health", headers={"Origin": "https://dashboard.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dashboard.example"


def test_a_stream_refused_in_a_host_view_is_a_503_not_a_500() -> None:
    app = make_app(config={"ROVER_MAX_STREAMS": 1, "ROVER_METRICS_INTERVAL": 0})
    client = app.test_client()
    first = client.get("/ticker", buffered=False)
    try:
        assert first.status_code == 200
        second = client.get("/ticker")
        assert second.status_code == 503 and second.get_json()["error"] == "too_many_streams"
        assert second.headers["Retry-After"]
    finally:
        first.close()


def test_factories_and_the_second_setup() -> None:
    streams = rs.RoverStream(url_prefix="/streams")
    with pytest.raises(RuntimeError, match="init_app"):
        streams.publish("news", 1)
    app = Flask("factory")
    streams.init_app(app, config={"ROVER_METRICS_INTERVAL": 0})
    assert app.test_client().get("/streams/health").status_code == 200
    assert streams.publish("news", 1).subscribers == 0
    with pytest.raises(RuntimeError, match="already set up"):
        rs.RoverStream(app)


# -- under gunicorn ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_server(module_server: Any) -> Any:
    return module_server(app="host_app:app", env={"ROVER_METRICS_INTERVAL": "0"})


@pytest.mark.live
def test_publish_and_subscribe_under_the_prefix(host_server: Any) -> None:
    reader = subscribe(host_server.port, "news", prefix=PREFIX)
    publish = Publisher(host_server.port, prefix=PREFIX)
    try:
        for n in range(3):
            assert publish("news", {"n": n})["subscribers"] == 1
        assert [json.loads(e.data) for e in reader.events(3, timeout=10)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        publish.close()
        reader.response.close()


@pytest.mark.live
def test_a_route_authors_own_sse_view_and_publishing_view(host_server: Any) -> None:
    import http.client

    response = request(host_server.port, "/ticker", timeout=10)
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    from tests.wire_helpers import SSEReader

    reader = SSEReader(response)
    reader.until(b"\n\nid: ")
    connection = http.client.HTTPConnection("127.0.0.1", host_server.port, timeout=10)
    try:
        connection.request("POST", "/tick", json.dumps({"price": 42}), {"Content-Type": "application/json"})
        assert json.loads(connection.getresponse().read())["subscribers"] == 1
        (event,) = reader.events(1, timeout=10)
        assert event.event == "tick" and json.loads(event.data) == {"price": 42}
    finally:
        connection.close()
        response.close()


@pytest.mark.live
def test_a_room_under_the_prefix_echoes(host_server: Any) -> None:
    frame = room_echo(f"ws://127.0.0.1:{host_server.port}{PREFIX}/ws/comms/science?user=ada", "hello")
    assert frame["user"] == "ada"
    refused = request(host_server.port, f"{PREFIX}/ws/comms/science", {"Upgrade": "websocket", "Connection": "Upgrade",
                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
                      "Origin": "http://evil.example"})
    assert refused.status == 403  # the rooms' checks run under the prefix too
    refused.close()


@pytest.mark.live
def test_the_hosts_own_websocket_route_still_works(host_server: Any) -> None:
    """The host's flask-sock route keeps its receive thread (rooms' connections run without one)."""
    import simple_websocket

    client = simple_websocket.Client.connect(f"ws://127.0.0.1:{host_server.port}/echo")
    try:
        for text in ("one", "two"):
            client.send(text)
            assert client.receive(timeout=10) == f"echo: {text}"
    finally:
        client.close()
    assert room_echo(f"ws://127.0.0.1:{host_server.port}{PREFIX}/ws/comms/science?user=ada", "and rooms")


@pytest.mark.live
def test_the_hosts_own_pages_under_gunicorn(host_server: Any) -> None:
    missing = request(host_server.port, "/nope")
    assert missing.status == 404 and missing.headers["content-type"].startswith("text/html")
    missing.close()
    health = request(host_server.port, "/health")
    assert health.status == 200 and "x-request-id" not in health.headers
    health.close()
