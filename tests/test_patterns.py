"""Pattern subscriptions (``GET /realtime?channel=sensors.*``) against a real gunicorn (gevent worker), on the
in-process hub and on a real redis-server: channels that exist and channels that begin later, exact resume
by the stream's id, the bound on followed channels, and private channels kept private."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rover_stream import mint_token
from tests.wire_helpers import Publisher, SSEReader, request, wait_for

pytestmark = pytest.mark.live

SECRET = "pattern-subscriptions-secret-of-32-chars!"


def open_stream(port: int, query: str, last_event_id: str | None = None, token: str | None = None) -> SSEReader:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = request(port, f"/realtime?{query}", headers, timeout=10)
    assert response.status == 200, (response.status, response.buffer[:300])
    reader = SSEReader(response)
    reader.until(b"\n\nid: ")
    return reader


def received(reader: SSEReader, count: int, timeout: float = 10) -> list[tuple[str, Any]]:
    """(channel, data) of the first ``count`` data events (resets apart), waiting for them."""
    def data_events() -> list[Any]:
        return [e for e in reader.dispatched if e.data and e.event in (None, "message")]

    def enough() -> bool:
        return len(data_events()) >= count or read_more(reader) or len(data_events()) >= count

    assert wait_for(enough, timeout=timeout), [e.data for e in reader.dispatched]
    return [(json.loads(e.data)["channel"], json.loads(e.data)["data"]) for e in data_events()[:count]]


def read_more(reader: SSEReader) -> bool:
    """Read what arrives within 0.2 s (for wait_for, which looks again after it); always False."""
    try:
        reader.events(1, timeout=0.2)
    except TimeoutError:
        pass
    return False


def resets(reader: SSEReader) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in reader.dispatched if e.event == "reset"]


def check_patterns_follow_channels_as_they_begin(port: int, publish_port: int | None = None) -> None:
    publish = Publisher(publish_port or port)
    try:
        publish("sensors.before", {"n": 0})  # exists before the subscription: followed from now on
        reader = open_stream(port, "channel=sensors.*")
        try:
            publish("sensors.before", {"n": 1})
            publish("sensors.temp", {"n": 2})  # begins after: followed from its first event
            publish("weather.temp", {"n": 3})  # does not match
            publish("sensors.temp.raw", {"n": 4})  # * spans dots, as in token claims
            assert received(reader, 3) == [("sensors.before", {"n": 1}), ("sensors.temp", {"n": 2}),
                                           ("sensors.temp.raw", {"n": 4})]
            last_id = [e for e in reader.dispatched if e.data][-1].last_event_id
        finally:
            reader.response.close()
        # Away: events on channels it followed, and on one that began meanwhile; back with its id.
        publish("sensors.temp", {"n": 5})
        publish("sensors.new", {"n": 6})
        publish("sensors.new", {"n": 7})
        again = open_stream(port, "channel=sensors.*", last_event_id=last_id)
        try:
            got = received(again, 3)
            assert sorted(got, key=lambda item: item[1]["n"]) == [
                ("sensors.temp", {"n": 5}), ("sensors.new", {"n": 6}), ("sensors.new", {"n": 7})]
            assert resets(again) == []
            publish("sensors.temp", {"n": 8})
            assert received(again, 4)[3] == ("sensors.temp", {"n": 8})  # live after the replay, no repeat
        finally:
            again.response.close()
    finally:
        publish.close()


def test_patterns_on_the_in_process_hub(live_server: Any) -> None:
    server = live_server()
    check_patterns_follow_channels_as_they_begin(server.port)


def test_patterns_on_redis_across_hosts(live_server: Any, redis_server: Any) -> None:
    env = {"ROVER_REDIS_URL": redis_server.url, "ROVER_HEARTBEAT_INTERVAL": "0.5"}
    host_a, host_b = live_server(env=env), live_server(env=env)
    check_patterns_follow_channels_as_they_begin(host_a.port, publish_port=host_b.port)


def test_a_pattern_follows_at_most_the_bound_and_says_so(live_server: Any) -> None:
    server = live_server(env={"ROVER_MAX_CHANNELS_PER_STREAM": "3"})
    publish = Publisher(server.port)
    reader = open_stream(server.port, "channel=fleet.*")
    try:
        for n in range(5):
            publish(f"fleet.rover{n}", {"n": n})
        got = received(reader, 3)
        assert [channel for channel, _ in got] == ["fleet.rover0", "fleet.rover1", "fleet.rover2"]
        assert wait_for(lambda: len(resets(reader)) == 2 or read_more(reader), timeout=5)
        assert [(r["channel"], r["reason"], r["limit"]) for r in resets(reader)] == [
            ("fleet.rover3", "too_many_channels", 3), ("fleet.rover4", "too_many_channels", 3)]
        publish("fleet.rover4", {"n": 9})  # not followed, and not announced twice
        publish("fleet.rover1", {"n": 10})
        assert received(reader, 4)[3] == ("fleet.rover1", {"n": 10})
        assert len(resets(reader)) == 2
    finally:
        reader.response.close()
        publish.close()


def test_patterns_keep_private_channels_private(live_server: Any) -> None:
    server = live_server(env={"ROVER_SECRET_KEY": SECRET})
    publish = Publisher(server.port, token=mint_token(SECRET, publish=["*"]))
    team = mint_token(SECRET, subscribe=["private-team-*"])
    try:
        # A pattern that names private channels needs a token that covers all it can match.
        for token, status in ((None, 401), (team, 403), (mint_token(SECRET, subscribe=["private-team-?"]), 403)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = request(server.port, "/realtime?channel=private-*", headers, timeout=10)
            assert response.status == status, (token, response.status)
            response.close()
        covered = open_stream(server.port, "channel=private-team-*", token=team)
        covered.response.close()
        # A public pattern that happens to match private channels reads only those the token covers.
        anonymous = open_stream(server.port, "channel=*")
        holder = open_stream(server.port, "channel=*", token=team)
        try:
            publish("private-secret", {"n": 1})
            publish("private-team-a", {"n": 2})
            publish("news", {"n": 3})
            assert received(anonymous, 1) == [("news", {"n": 3})]
            assert received(holder, 2) == [("private-team-a", {"n": 2}), ("news", {"n": 3})]
            assert b"private-secret" not in anonymous.raw + holder.raw
        finally:
            anonymous.response.close()
            holder.response.close()
    finally:
        publish.close()


def test_bad_patterns_are_refused(live_server: Any) -> None:
    server = live_server()
    for query in ("channel=sens%3Fors.*", "channel=*.*%20x", "channel=" + "a" * 101 + "*"):
        response = request(server.port, f"/realtime?{query}", timeout=10)
        assert response.status == 400, (query, response.status)
        assert json.loads(response.body())["error"] == "invalid_channel"
        response.close()
