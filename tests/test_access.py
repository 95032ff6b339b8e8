"""Who may do what, with ROVER_SECRET_KEY set: every route of the app (read from its URL map, so that a new
route cannot be forgotten) x (no token, expired, wrong signature, wrong scope, valid) -> the expected status.

A route is ``open`` (anyone: public channels, the demo's generators, health), or needs a token that allows
``publish`` or ``subscribe`` on a channel, or an ``admin`` token. Streams are closed unread."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

import rover_stream as rs
from rover_stream.demo import create_demo_app

SECRET = "a" * 48

#: endpoint -> (method, path, JSON body or None, what it needs)
ROUTES: dict[str, tuple[str, str, Any, str]] = {
    "demo.index": ("GET", "/", None, "open"),
    "rover_stream.ops.stream_stats": ("GET", "/admin/stream-stats", None, "admin"),
    "guide.analytics_stream": ("GET", "/analytics-stream", None, "open"),
    "rover_stream.api.broadcast": ("POST", "/api/broadcast", {"channel": "news", "data": 1}, "publish:news"),
    "rover_stream.rooms.room_info": ("GET", "/api/rooms/private-ops", None, "subscribe:private-ops"),
    "rover_stream.api.channel_info": ("GET", "/api/channels/news", None, "subscribe:news"),
    "guide.rover_telemetry_recent": ("GET", "/api/rover/telemetry?last=2", None, "open"),
    "guide.send_broadcast": ("POST", "/broadcast", {"message": "hi"}, "publish:broadcast"),
    "guide.broadcast_stream": ("GET", "/broadcast-stream", None, "open"),
    "guide.join_chat": ("GET", "/chat/ada", None, "publish:chat"),
    "guide.send_chat_message": ("POST", "/chat/send", {"user": "ada", "message": "hi"}, "publish:chat"),
    "demo.csv_download": ("GET", "/csv?rows=2", None, "open"),
    "demo.download": ("GET", "/download/f.txt", None, "open"),
    "demo.events": ("GET", "/events", None, "open"),
    "rover_stream.ops.health": ("GET", "/health", None, "open"),
    "guide.health_monitored_stream": ("GET", "/health-monitored-stream", None, "open"),
    "demo.json_stream": ("GET", "/json-stream?rows=2", None, "open"),
    "guide.large_dataset": ("GET", "/large-dataset?total=10", None, "open"),
    "demo.large_file": ("GET", "/large-file", None, "open"),
    "guide.live_metrics": ("GET", "/live-metrics", None, "open"),
    "guide.managed_stream": ("GET", "/managed-stream", None, "open"),
    "guide.managed_connections": ("GET", "/managed-stream/connections", None, "admin"),
    "rover_stream.ops.metrics": ("GET", "/metrics", None, "admin"),
    "guide.process_stream": ("POST", "/process-stream", {"total_items": 1, "delay": 0}, "open"),
    "rover_stream.ops.ready": ("GET", "/ready", None, "open"),
    "rover_stream.api.realtime": ("GET", "/realtime/private-ops", None, "subscribe:private-ops"),
    "rover_stream.browser.client_library": ("GET", "/rover-stream.js", None, "open"),
    "demo.static": ("GET", "/static/app.js", None, "open"),
    "guide.main_stream": ("GET", "/stream", None, "open"),
    "demo.count": ("GET", "/stream/count?n=1", None, "open"),
    "demo.rover_image": ("GET", "/stream/rover-image", None, "open"),
    "guide.rover_telemetry": ("GET", "/stream/rover-telemetry", None, "open"),
    "rover_stream.rooms.comms": ("GET", "/ws/comms/private-ops", None, "subscribe:private-ops"),
}
#: Routes that are also checked on a public channel: open to all even with auth on.
PUBLIC_TOO = {"rover_stream.api.realtime": "/realtime/news", "rover_stream.rooms.room_info": "/api/rooms/science"}


def token(kind: str, *, scope: str = "right", secret: str = SECRET, expired: bool = False) -> str:
    """A token for what a route needs; ``scope="wrong"`` allows something else."""
    need, _, channel = kind.partition(":")
    if scope == "wrong":
        channel = "elsewhere"
    if need == "admin":
        if scope == "wrong":
            return rs.mint_token(secret, publish=["*"], subscribe=["*"])
        claims: dict[str, Any] = {"admin": True}
    else:
        claims = {need: [channel]}
    now = int(time.time())
    payload = {"iat": now, "exp": now - 60 if expired else now + 600, "publish": [], "subscribe": [], **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("access")
    (base / "uploads").mkdir()
    (base / "uploads" / "f.txt").write_text("x")
    app = create_demo_app({"TESTING": True, "ROVER_SECRET_KEY": SECRET, "ROVER_UPLOADS_DIR": str(base / "uploads"),
                         "ROVER_DATA_DIR": str(base / "var"), "ROVER_METRICS_INTERVAL": 0})
    return app


def test_every_route_is_in_the_table(secured: Any) -> None:
    endpoints = {rule.endpoint for rule in secured.url_map.iter_rules()}
    assert endpoints == set(ROUTES), (f"routes without an access rule: {sorted(endpoints - set(ROUTES))}; "
                                      f"rules without a route: {sorted(set(ROUTES) - endpoints)}")


def call(app: Any, endpoint: str, headers: dict[str, str], path: str | None = None) -> int:
    method, default_path, body, _ = ROUTES[endpoint]
    client = app.test_client()
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
          "Sec-WebSocket-Version": "13"} if endpoint == "rover_stream.rooms.comms" else {}
    response = client.open(path or default_path, method=method, json=body, headers={**headers, **ws},
                           buffered=False)
    status = response.status_code
    response.close()
    return status


CASES = ("none", "expired", "bad-signature", "wrong-scope", "valid")


@pytest.mark.parametrize("endpoint", sorted(ROUTES))
@pytest.mark.parametrize("case", CASES)
def test_access(secured: Any, endpoint: str, case: str) -> None:
    need = ROUTES[endpoint][3]
    if case == "none":
        headers: dict[str, str] = {}
    elif case == "expired":
        headers = {"Authorization": f"Bearer {token(need, expired=True)}"}
    elif case == "bad-signature":
        headers = {"Authorization": f"Bearer {token(need, secret='b' * 48)}"}
    elif case == "wrong-scope":
        headers = {"Authorization": f"Bearer {token(need, scope='wrong')}"}
    else:
        headers = {"Authorization": f"Bearer {token(need)}"}
    status = call(secured, endpoint, headers)
    if need == "open":
        assert status < 400 or (endpoint == "rover_stream.rooms.comms"), f"{endpoint} {case}: {status}"
        return
    expected = {"none": 401, "expired": 401, "bad-signature": 401, "wrong-scope": 403}.get(case)
    if expected is None:  # a valid token: let in (the WebSocket route needs gunicorn for the upgrade: 501)
        assert status in ((501,) if endpoint == "rover_stream.rooms.comms" else (200,)), f"{endpoint} {case}: {status}"
    else:
        assert status == expected, f"{endpoint} {case}: {status} instead of {expected}"
    if endpoint in PUBLIC_TOO:
        assert call(secured, endpoint, {}, PUBLIC_TOO[endpoint]) in (200, 501)


def test_tokens_in_the_query_string_work_for_event_sources(secured: Any) -> None:
    """EventSource cannot send headers: ?token= is accepted (and never logged: see test_live_ops)."""
    valid = token("subscribe:private-ops")
    client = secured.test_client()
    response = client.get(f"/realtime/private-ops?token={valid}", buffered=False)
    assert response.status_code == 200
    response.close()
