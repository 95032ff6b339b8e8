"""Channel information: GET /api/channels/<name> (and ?channel=a&channel=b) tells subscribers across
workers and hosts, the last id, how much history a resuming client could get, and its time span."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import rover_stream as rs
from tests.wire_helpers import Publisher, get_json, subscribe, wait_for


@pytest.mark.live
def test_in_process_counts_subscribers_and_history(live_server: Any) -> None:
    server = live_server(env={"ROVER_DEMO": "0", "ROVER_HISTORY_SIZE": "5"})
    readers = [subscribe(server.port, "news") for _ in range(3)]
    publish = Publisher(server.port)
    before = time.time()
    ids = [publish("news", n)["id"] for n in range(8)]
    info = get_json(server.port, "/api/channels/news")
    assert info["channel"] == "news" and info["subscribers"] == 3 and info["last_id"] == ids[-1]
    assert info["history"] == 5  # HISTORY_SIZE: what a client resuming now could be given
    assert before - 1 <= info["oldest"] <= info["newest"] <= time.time() + 1
    quiet = get_json(server.port, "/api/channels/nobody-here")
    assert quiet == {"channel": "nobody-here", "subscribers": 0, "last_id": None, "history": 0, "oldest": None,
                     "newest": None}
    both = get_json(server.port, "/api/channels?channel=news&channel=nobody-here")
    assert [c["channel"] for c in both["channels"]] == ["news", "nobody-here"]
    readers[0].response.close()
    assert wait_for(lambda: get_json(server.port, "/api/channels/news")["subscribers"] == 2, timeout=5)
    for reader in readers[1:]:
        reader.response.close()
    publish.close()


@pytest.mark.live
def test_on_redis_subscribers_are_counted_across_workers_and_hosts(live_server: Any, redis_server: Any) -> None:
    env = {"ROVER_REDIS_URL": redis_server.url, "ROVER_HISTORY_SIZE": "5"}
    host_a = live_server(env={**env, "ROVER_WORKERS": "2"})
    host_b = live_server(env=env)
    readers = [subscribe(host.port, "shared") for host in (host_a, host_a, host_a, host_b)]
    publish = Publisher(host_b.port)
    ids = [publish("shared", {"n": n})["id"] for n in range(20)]

    def info() -> dict[str, Any]:
        return get_json(host_a.port, "/api/channels/shared")

    assert wait_for(lambda: info()["subscribers"] == 4, timeout=10), info()
    now = info()
    assert now["last_id"] == ids[-1] and now["history"] == 5 and now["oldest"] <= now["newest"]
    assert get_json(host_b.port, "/api/channels/shared") == now | {"subscribers": 4}
    for reader in readers:
        reader.response.close()
    assert wait_for(lambda: info()["subscribers"] == 0, timeout=10), info()
    publish.close()


def test_with_a_secret_only_listeners_may_ask(tmp_path: Path) -> None:
    secret = "s" * 32
    app = rs.create_app({"ROVER_SECRET_KEY": secret, "ROVER_METRICS_INTERVAL": 0, "ROVER_DATA_DIR": str(tmp_path)})
    client = app.test_client()
    assert client.get("/api/channels/news").status_code == 401
    news = {"Authorization": "Bearer " + rs.mint_token(secret, subscribe=["news"])}
    assert client.get("/api/channels/news", headers=news).status_code == 200
    assert client.get("/api/channels?channel=news&channel=private-ops", headers=news).status_code == 403
    admin = {"Authorization": "Bearer " + rs.mint_token(secret, admin=True)}
    answer = client.get("/api/channels?channels=news,private-ops", headers=admin)
    assert answer.status_code == 200 and answer.json is not None and len(answer.json["channels"]) == 2
    bad = client.get("/api/channels/no%20spaces", headers=admin)
    assert bad.status_code == 400 and bad.json is not None and bad.json["error"] == "invalid_channel"
    assert client.get("/api/channels", headers=admin).status_code == 400
