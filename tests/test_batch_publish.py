"""Batch publishing: POST /api/broadcast with a JSON array publishes every event in order, or none."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

import rover_stream as rs
from tests.wire_helpers import subscribe


def post(port: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/api/broadcast", json.dumps(body),
                           {"Content-Type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.live
def test_a_batch_reaches_subscribers_in_order_with_ids_and_counts(live_server: Any) -> None:
    server = live_server(env={"ROVER_DEMO": "0"})
    news, sport = subscribe(server.port, "news"), subscribe(server.port, "sport")
    batch = [{"channel": "news" if n % 3 else "sport", "data": {"n": n}, **({"event": "goal"} if n % 3 == 0 else {})}
             for n in range(100)]
    status, answer = post(server.port, batch)
    assert status == 200, answer
    events = answer["events"]
    assert [e["channel"] for e in events] == [b["channel"] for b in batch]
    assert all(e["subscribers"] == 1 for e in events)
    got_news = news.events(66)
    got_sport = sport.events(34)
    assert [json.loads(e.data)["n"] for e in got_news] == [n for n in range(100) if n % 3]
    assert [json.loads(e.data)["n"] for e in got_sport] == [n for n in range(100) if n % 3 == 0]
    assert {e.event for e in got_sport} == {"goal"}
    assert [e.last_event_id for e in got_news] == [e["id"] for e in events if e["channel"] == "news"]
    news.response.close()
    sport.response.close()


@pytest.mark.live
def test_one_bad_event_refuses_the_whole_batch_and_names_it(live_server: Any) -> None:
    server = live_server(env={"ROVER_DEMO": "0", "ROVER_MAX_BATCH": "10"})
    reader = subscribe(server.port, "news")
    bad_batches = {
        5: [{"channel": "news", "data": n} for n in range(5)] + [{"channel": "no spaces", "data": 5}],
        2: [{"channel": "news", "data": 0}, {"data": 1}, {"channel": "news", "event": "a\nb", "data": 2}],
        1: [{"channel": "news", "data": 0}, "not an object"],
    }
    for index, batch in bad_batches.items():
        status, answer = post(server.port, batch)
        assert status == 400, answer
        assert f"Event {index}" in answer["message"], answer
    status, answer = post(server.port, [{"channel": "news", "data": n} for n in range(11)])
    assert status == 400 and answer["error"] == "invalid_batch" and "1 to 10" in answer["message"]
    status, answer = post(server.port, [])
    assert status == 400 and answer["error"] == "invalid_batch"
    # Nothing of the refused batches was published: the first event the subscriber gets is the next one.
    status, answer = post(server.port, {"channel": "news", "data": "after"})
    assert status == 200
    assert [e.data for e in reader.events(1)] == ["after"]
    assert [e.last_event_id for e in reader.dispatched] == [answer["id"]]
    reader.response.close()


def test_a_batch_needs_a_token_covering_every_channel_and_counts_against_the_rate(tmp_path: Path) -> None:
    secret = "s" * 32
    app = rs.create_app({"ROVER_SECRET_KEY": secret, "ROVER_PUBLISH_RATE": 5, "ROVER_METRICS_INTERVAL": 0,
                         "ROVER_DATA_DIR": str(tmp_path)})
    client = app.test_client()
    hub = rs.get_hub(app)
    news_only = {"Authorization": "Bearer " + rs.mint_token(secret, publish=["news"], subject="ada")}
    both = [{"channel": "news", "data": 1}, {"channel": "sport", "data": 2}]
    answer = client.post("/api/broadcast", json=both, headers=news_only)
    assert answer.status_code == 403, answer.json
    assert hub.history("news") == [] and hub.history("sport") == []
    every = {"Authorization": "Bearer " + rs.mint_token(secret, publish=["*"], subject="grace")}
    # A burst is twice the rate: a batch of 10 passes on a full bucket, and the next event waits its turn.
    answer = client.post("/api/broadcast", json=[{"channel": "news", "data": n} for n in range(10)], headers=every)
    assert answer.status_code == 200 and answer.json is not None and len(answer.json["events"]) == 10
    answer = client.post("/api/broadcast", json={"channel": "news", "data": "more"}, headers=every)
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
    assert [m.data for m in hub.history("news")] == list(range(10))
