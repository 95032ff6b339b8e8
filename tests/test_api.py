"""The hub's HTTP API through the Flask test client: every bad input, and tokens."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

import rover_stream as rs
from rover_stream.auth import exposure_problem, mint_token
from rover_stream.wire.sse_parser import EventStreamParser

SECRET = "s3cret-for-tests-only-0123456789"


def post(client: Any, body: Any, content_type: str = "application/json", **kwargs: Any) -> Any:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/api/broadcast", data=data, content_type=content_type, **kwargs)


def first_events(client: Any, path: str, count: int, **kwargs: Any) -> list[Any]:
    response = client.get(path, buffered=False, **kwargs)
    assert response.status_code == 200, response.data
    parser = EventStreamParser()
    events: list[Any] = []
    for chunk in response.response:
        events.extend(parser.feed(chunk))
        if len(events) >= count:
            break
    response.close()
    return events


def test_broadcast_reaches_a_subscriber(app: Any, client: Any) -> None:
    response = client.get("/realtime/news", buffered=False)
    chunks = iter(response.response)
    next(chunks), next(chunks)  # retry hint, position block
    answer = post(client, {"channel": "news", "event": "tick", "data": {"n": 1}})
    assert answer.status_code == 200
    assert answer.json["channel"] == "news" and answer.json["subscribers"] == 1
    block = next(chunks)
    assert block == f'id: {answer.json["id"]}\nevent: tick\ndata: {{"n":1}}\n\n'.encode()
    response.close()


def test_seed_shape_goes_to_the_default_channel(app: Any, client: Any) -> None:
    answer = post(client, {"message": "hello", "timestamp": "2026-11-21T12:00:00"})
    assert answer.status_code == 200 and answer.json["channel"] == "broadcast"
    assert rs.get_hub(app).history("broadcast")[0].data == {"message": "hello", "timestamp": "2026-11-21T12:00:00"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        pytest.param(b"{not json", "application/json", 400, "invalid_json", id="invalid-json"),
        pytest.param(b'{"data": "\xff"}', "application/json", 400, "invalid_json", id="invalid-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "request_entity_too_large",
                     id="too-large"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "application/json", 400, "invalid_json", id="deep-nesting"),
        pytest.param({"channel": "news"}, "application/json", 400, "missing_field", id="missing-data"),
        pytest.param([1, 2], "application/json", 400, "invalid_body", id="not-an-object"),
        pytest.param({"channel": "news", "data": 1, "colour": "red"}, "application/json", 400, "invalid_body",
                     id="unknown-field"),
        pytest.param({"channel": "bad name!", "data": 1}, "application/json", 400, "invalid_channel",
                     id="bad-channel"),
        pytest.param({"channel": 7, "data": 1}, "application/json", 400, "invalid_channel", id="channel-number"),
        pytest.param({"channel": "x" * 101, "data": 1}, "application/json", 400, "invalid_channel",
                     id="channel-too-long"),
        pytest.param({"channel": "news", "event": "a\nb", "data": 1}, "application/json", 400, "invalid_event",
                     id="event-injection"),
        pytest.param({"channel": "news", "event": "", "data": 1}, "application/json", 400, "invalid_event",
                     id="empty-event"),
        pytest.param(b"data=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type",
                     id="form-body"),
        pytest.param(b'{"data": 1}', "text/plain", 415, "unsupported_media_type", id="text-plain"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_published(app: Any, client: Any, body: Any, content_type: str,
                                                       status: int, code: str) -> None:
    hub = rs.get_hub(app)

    def published() -> int:  # on the channels these bodies name (the demo's producers publish elsewhere)
        return sum(len(hub.history(channel)) for channel in ("news", "broadcast"))

    before = published()
    answer = post(client, body, content_type)
    assert answer.status_code == status, answer.data
    assert answer.json["error"] == code and answer.json["status"] == status and answer.json["message"]
    assert published() == before


def test_bad_subscriptions(client: Any) -> None:
    assert client.get("/realtime/bad%20name").json["error"] == "invalid_channel"
    assert client.get("/realtime").json["error"] == "invalid_channel"
    many = "&".join(f"channel=c{i}" for i in range(40))
    answer = client.get(f"/realtime?{many}")
    assert answer.status_code == 400 and answer.json["error"] == "too_many_channels"


def test_multi_channel_subscription_on_one_connection(app: Any, client: Any) -> None:
    response = client.get("/realtime?channels=a,b", buffered=False)
    chunks = iter(response.response)
    next(chunks), next(chunks)
    rs.get_hub(app).publish("b", {"x": 1}, event="e")
    parser = EventStreamParser()
    (event,) = parser.feed(next(chunks))
    assert json.loads(event.data) == {"channel": "b", "data": {"x": 1}} and event.event == "e"
    assert event.last_event_id.startswith("a:") and ",b:" in event.last_event_id
    response.close()


# -- tokens ---------------------------------------------------------------------------------------------------

@pytest.fixture
def secured(tmp_path: Any) -> Any:
    app = rs.create_app({"ROVER_SECRET_KEY": SECRET, "ROVER_DEMO": False, "ROVER_HEARTBEAT_INTERVAL": 0.2})
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_publish_needs_a_token_for_the_channel(secured: Any) -> None:
    body = {"channel": "news", "data": 1}
    answer = post(secured, body)
    assert answer.status_code == 401 and answer.json["error"] == "token_required"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert post(secured, body, headers=bearer(mint_token(SECRET, publish=["news"]))).status_code == 200
    assert post(secured, body, headers=bearer(mint_token(SECRET, publish=["new*"]))).status_code == 200
    wrong_channel = post(secured, body, headers=bearer(mint_token(SECRET, publish=["sports"])))
    assert wrong_channel.status_code == 403 and wrong_channel.json["error"] == "forbidden"
    subscribe_only = post(secured, body, headers=bearer(mint_token(SECRET, subscribe=["*"])))
    assert subscribe_only.status_code == 403


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_expired_forged_and_malformed_tokens(secured: Any) -> None:
    body = {"channel": "news", "data": 1}
    expired = mint_token(SECRET, publish=["*"], expires_in=-10)
    assert post(secured, body, headers=bearer(expired)).json["error"] == "token_expired"
    forged = mint_token("another-secret-0123456789-0123456789", publish=["*"])
    assert post(secured, body, headers=bearer(forged)).json["error"] == "invalid_token"
    assert post(secured, body, headers=bearer("not.a.jwt")).json["error"] == "invalid_token"
    unsigned = jwt.encode({"publish": ["*"], "exp": time.time() + 60}, None, algorithm="none")  # type: ignore[arg-type]
    assert post(secured, body, headers=bearer(unsigned)).status_code == 401
    no_expiry = jwt.encode({"publish": ["*"]}, SECRET, algorithm="HS256")
    assert post(secured, body, headers=bearer(no_expiry)).status_code == 401
    bad_claim = jwt.encode({"publish": "*", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    assert post(secured, body, headers=bearer(bad_claim)).json["error"] == "invalid_token"


def test_private_channels_need_a_token_from_header_query_or_cookie(secured: Any) -> None:
    assert secured.get("/realtime/private-ops").status_code == 401
    token = mint_token(SECRET, subscribe=["private-ops"])
    assert first_events(secured, "/realtime/private-ops", 0, headers=bearer(token)) == []
    assert first_events(secured, f"/realtime/private-ops?token={token}", 0) == []
    secured.set_cookie("rover_token", token, domain="localhost")
    assert first_events(secured, "/realtime/private-ops", 0) == []
    secured.delete_cookie("rover_token", domain="localhost")
    other = mint_token(SECRET, subscribe=["private-science"])
    assert secured.get(f"/realtime/private-ops?token={other}").status_code == 403
    # Public channels stay open to subscribers; several channels need every private one allowed.
    assert first_events(secured, "/realtime/news", 0) == []
    assert secured.get(f"/realtime?channel=news&channel=private-ops&token={other}").status_code == 403


@pytest.mark.parametrize(
    ("binds", "secret", "refused"),
    [
        (["127.0.0.1:8000"], None, False),
        (["localhost:8000"], None, False),
        (["[::1]:8000"], None, False),
        (["unix:/run/rover.sock"], None, False),
        (["0.0.0.0:8000"], None, True),
        (["192.168.1.5:80"], None, True),
        (["example.org:80"], None, True),
        (["127.0.0.1:8000", "[::]:8000"], None, True),
        (["0.0.0.0:8000"], SECRET, False),
    ],
)
def test_an_open_server_only_binds_to_loopback(binds: list[str], secret: str | None, refused: bool) -> None:
    problem = exposure_problem(binds, secret)
    assert (problem is not None) == refused
    if problem:
        assert "ROVER_SECRET_KEY" in problem


def test_token_command(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from rover_stream.cli import main

    monkeypatch.setenv("ROVER_SECRET_KEY", SECRET)
    assert main(["token", "--publish", "news", "--subscribe", "private-*", "--expires", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["publish"] == ["news"] and claims["subscribe"] == ["private-*"]
    assert 55 <= claims["exp"] - time.time() <= 61
    monkeypatch.delenv("ROVER_SECRET_KEY")
    assert main(["token", "--publish", "x"]) == 2


def test_publishing_faster_than_the_rate_gets_429_with_retry_after(tmp_path: Any) -> None:
    app = rs.create_app({"ROVER_DEMO": False, "ROVER_DATA_DIR": str(tmp_path), "ROVER_PUBLISH_RATE": 5})
    client = app.test_client()
    answers = [client.post("/api/broadcast", json={"channel": "news", "data": i}) for i in range(12)]
    statuses = [a.status_code for a in answers]
    assert statuses[:10] == [200] * 10  # a burst of twice the rate
    limited = answers[10]
    assert limited.status_code == 429 and limited.json is not None
    assert limited.json["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert len(rs.get_hub(app).history("news")) == 10  # nothing published beyond the limit
    other = client.post("/api/broadcast", json={"channel": "news", "data": "x"},
                        environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # another client has its own allowance
