"""CORS (ROVER_CORS_ORIGINS): which other sites' pages may read our responses. Flask test client here;
tests/test_browser.py checks the same rules in Chromium, which is what enforces them."""

from __future__ import annotations

from typing import Any

import pytest

import rover_stream as rs
from rover_stream.demo import create_demo_app

GOOD, EVIL = "https://mission.example", "https://evil.example"


def make(tmp_path: Any, origins: str) -> Any:
    (tmp_path / "uploads").mkdir(exist_ok=True)
    (tmp_path / "uploads" / "log.txt").write_text("telemetry")
    return create_demo_app({"TESTING": True, "ROVER_CORS_ORIGINS": origins, "ROVER_METRICS_INTERVAL": 0,
                          "ROVER_UPLOADS_DIR": str(tmp_path / "uploads"), "ROVER_DATA_DIR": str(tmp_path)})


@pytest.fixture
def client(tmp_path: Any) -> Any:
    return make(tmp_path, GOOD).test_client()


def test_a_listed_origin_may_read_with_credentials(client: Any) -> None:
    answer = client.get("/health", headers={"Origin": GOOD})
    assert answer.headers["Access-Control-Allow-Origin"] == GOOD
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    assert "Origin" in answer.headers["Vary"]


def test_another_origin_gets_no_cors_headers(client: Any) -> None:
    answer = client.get("/health", headers={"Origin": EVIL})
    assert answer.status_code == 200  # the server answers; the browser keeps it from the page
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert "Origin" in answer.headers["Vary"]


def test_no_origin_no_cors_headers(client: Any) -> None:
    answer = client.get("/health")
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_preflight_for_a_listed_origin(client: Any) -> None:
    answer = client.options("/api/broadcast", headers={
        "Origin": GOOD, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type, Authorization"})
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == GOOD
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert int(answer.headers["Access-Control-Max-Age"]) > 0


def test_preflight_for_another_origin_is_refused_with_json(client: Any) -> None:
    answer = client.options("/api/broadcast", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert answer.status_code == 403
    assert answer.get_json()["error"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_preflight_asking_for_an_unknown_header_is_refused(client: Any) -> None:
    answer = client.options("/api/broadcast", headers={
        "Origin": GOOD, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-Evil"})
    assert answer.status_code == 403 and answer.get_json()["error"] == "header_not_allowed"
    assert "x-evil" in answer.get_json()["message"]


def test_streams_and_errors_carry_the_headers_too(client: Any) -> None:
    stream = client.get("/realtime/news", headers={"Origin": GOOD}, buffered=False)
    try:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Access-Control-Allow-Origin"] == GOOD
    finally:
        stream.close()
    missing = client.get("/download/nope.txt", headers={"Origin": GOOD})
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == GOOD
    download = client.get("/download/log.txt", headers={"Origin": GOOD})
    assert "Content-Disposition" in download.headers["Access-Control-Expose-Headers"]


def test_a_wildcard_lets_anyone_read_without_credentials(tmp_path: Any) -> None:
    answer = make(tmp_path, "*").test_client().get("/health", headers={"Origin": EVIL})
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_by_default_no_other_site_may_read(tmp_path: Any) -> None:
    app = create_demo_app({"TESTING": True, "ROVER_METRICS_INTERVAL": 0, "ROVER_DATA_DIR": str(tmp_path)})
    client = app.test_client()
    assert "Access-Control-Allow-Origin" not in client.get("/health", headers={"Origin": GOOD}).headers
    preflight = client.options("/health", headers={"Origin": GOOD, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 403


def test_bad_origins_in_the_setting_are_refused_at_start(tmp_path: Any) -> None:
    with pytest.raises(rs.ConfigError, match="CORS_ORIGINS"):
        make(tmp_path, "mission.example/path")
