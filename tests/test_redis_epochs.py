"""Ids the server can no longer honour are announced, never a silent hole or an error.

1. Epochs. A channel's Redis history has an epoch (ids are ``<epoch>-<n>``). When Redis restarts without
   persistence it has forgotten the channel; the next event starts a new epoch, and a client that comes
   back with an id of the old one gets ``event: reset`` (``unknown``) before what the history holds. With
   the append-only file on, the same restart keeps the epoch, and the client gets exactly what it missed.
2. Bounded ids. ``Last-Event-ID`` values that are no id (out of range for Redis, malformed) get the same
   ``event: reset`` from both engines: never a 5xx, and never a Redis marked down in /health. An error reply
   from Redis (a key of the wrong type) is a ``redis_error``, not Redis being unreachable.

The engine-level tests talk to a redis-server of their own with the reader switched off; the ``live`` ones
start gunicorn on loopback.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import pytest

from rover_stream.hub import Hub
from rover_stream.hub.engines import redis as redis_engine_module
from rover_stream.hub.engines.redis import RedisEngine
from rover_stream.hub.message import ID_PART_MAX, Key, format_id, parse_id
from tests.wire_helpers import Publisher, SSEReader, get_json, request, subscribe

#: Last-Event-ID values that are no id: beyond what a Redis Stream id holds, or not ``<digits>-<digits>``.
BAD_IDS = [
    "99999999999999999999-1",  # the review's example: 20 digits, above 2**64
    f"{ID_PART_MAX + 1}-0",
    f"1-{ID_PART_MAX + 1}",
    "1-" + "9" * 40,
    "garbage",
    "1-2-3",
    "-1",
    "1-",
    "0x10-1",
    "1 -2",
    "+1-2",
]


# -- the engine, against a real redis-server (no reader: every step is explicit) ----------------------------


@pytest.fixture
def engine(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> RedisEngine:
    monkeypatch.setattr(redis_engine_module, "spawn", lambda target, name="": None)  # no reader, no counts
    return RedisEngine(redis_server.url, history_size=5, history_ttl=3600)


def key(text: str) -> Key:
    parsed = parse_id(text)
    assert parsed is not None, text
    return parsed


def publish(engine: RedisEngine, channel: str, count: int, start: int = 0) -> list[str]:
    return [engine.publish(channel, None, n, b"data: %d\n\n" % n)[0].id for n in range(start, start + count)]


def test_ids_are_epoch_and_number_and_exact_replays_count_what_was_lost(engine: RedisEngine) -> None:
    """Ids are ``<epoch>-<n>`` with n = 1, 2, 3...; a replay within the epoch is exact, and one beyond the
    history (5 events here) says how many events are gone, as the in-process engine does."""
    head = engine.head("exact")  # subscribing first creates the epoch: even "<epoch>-0" can be checked
    assert head[1] == 0
    ids = publish(engine, "exact", 8)
    keys = [key(i) for i in ids]
    assert [k[1] for k in keys] == list(range(1, 9)) and {k[0] for k in keys} == {head[0]}
    assert engine.head("exact") == keys[-1]
    replay = engine.after("exact", keys[4])
    assert (replay.reset, [m.id for m in replay.messages]) == (None, ids[5:])
    assert engine.after("exact", keys[-1]).messages == [] and engine.after("exact", keys[-1]).reset is None
    beyond = engine.after("exact", keys[0])
    assert (beyond.reset, beyond.missed, [m.id for m in beyond.messages]) == ("expired", 2, ids[3:])
    assert engine.after("exact", head).missed == 3  # "<epoch>-0": saw nothing, the first three are gone
    never = engine.after("exact", (head[0], 9))  # a number this epoch never gave out
    assert (never.reset, never.missed, len(never.messages)) == ("unknown", None, 5)


def test_an_id_of_a_lost_history_gets_a_reset_after_redis_forgot_the_channel(redis_server: Any,
                                                                               engine: RedisEngine) -> None:
    """Redis loses the channel (FLUSHALL, as a restart without persistence does): the next event starts a
    new epoch, above the old one, and the old ids are ``unknown``, whatever their number."""
    old = [key(i) for i in publish(engine, "lost", 3)]
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    new = [key(i) for i in publish(engine, "lost", 5, start=3)]
    assert new[0][1] == 1 and new[0][0] > old[0][0]
    assert new[0] > old[-1]  # ids keep increasing: live cursors go on, nothing is taken for a duplicate
    for old_key in old + [(old[0][0], 1), (old[0][0], 4)]:
        replay = engine.after("lost", old_key)
        assert replay.reset == "unknown" and [m.key for m in replay.messages] == new
    # Lost, and nothing published since: a new subscriber's head starts the new epoch.
    quiet = key(publish(engine, "lost-quiet", 2)[-1])
    redis_server.command("FLUSHALL")
    head = engine.head("lost-quiet")
    assert head[1] == 0 and head[0] > quiet[0]
    replay = engine.after("lost-quiet", quiet)
    assert (replay.reset, replay.messages) == ("unknown", [])


def test_the_epoch_stays_above_the_stream_whatever_happened_to_its_hash(redis_server: Any,
                                                                      engine: RedisEngine) -> None:
    """The epoch's hash gone while the stream stays (evicted, deleted by hand), or a stream written by a
    version whose ids began with the time: the next event starts a new epoch above every id the stream
    had, so XADD never refuses it and ids keep increasing."""
    ids = publish(engine, "healed", 2)
    redis_server.command("DEL", "rover:epoch:healed")
    again = key(publish(engine, "healed", 1, start=2)[0])
    assert again[1] == 1 and again > key(ids[-1])
    assert engine.after("healed", key(ids[-1])).reset == "unknown"
    # A stream of the previous format (ids "<ms>-<seq>" from the clock, a counter "n" in each entry), and
    # one whose newest id is ahead of the clock.
    for channel, top in (("legacy", int(time.time() * 1000)), ("ahead", int(time.time() * 1_000_000) + 10**9)):
        redis_server.command("XADD", f"rover:ch:{channel}", f"{top}-0", "b", "data: old\n\n", "d", '"old"',
                             "e", "", "n", "1")
        new = key(publish(engine, channel, 1)[0])
        assert new[0] > top and new[1] == 1
        replay = engine.after(channel, (top, 0))
        assert replay.reset == "unknown" and [m.data for m in replay.messages] == ["old", 0]


def test_epochs_live_as_long_as_their_stream_or_their_subscribers(redis_server: Any, engine: RedisEngine) -> None:
    """An epoch created by a subscriber (no event yet) lives seconds, not the history's hour: subscribing to
    made-up channels leaves nothing lasting in Redis. Its first event gives the epoch and the stream the
    history's expiry, together. Workers with subscribers keep the epoch alive, never shorten it, and never
    create one."""

    def ttl(key: str) -> int:
        return int(redis_server.command("TTL", key).strip().lstrip(b":"))

    engine.head("quiet")
    assert 0 < ttl("rover:epoch:quiet") <= redis_engine_module.EPOCH_KEEP
    publish(engine, "quiet", 1)
    assert ttl("rover:epoch:quiet") > 3000 and ttl("rover:ch:quiet") > 3000
    redis_server.command("HSET", "rover:epoch:short", "e", "5", "n", "0")
    redis_server.command("EXPIRE", "rover:epoch:short", "2")
    with engine.client().pipeline(transaction=False) as pipe:
        engine._keep_epochs(pipe, ["quiet", "short", "none"])
        pipe.execute()
    assert ttl("rover:epoch:quiet") > 3000  # not shortened
    assert 2 < ttl("rover:epoch:short") <= redis_engine_module.EPOCH_KEEP  # kept alive
    assert ttl("rover:epoch:none") == -2  # not created


def test_the_reader_ends_streams_at_a_gap_and_goes_on_across_a_new_epoch(engine: RedisEngine) -> None:
    """The reader's checks, fed by hand: numbers that jump within an epoch end the channel's streams (the
    entries were trimmed before this worker read them); a new epoch starting at 1 goes on (what Redis
    forgot cannot be known: SECURITY.md); one starting above 1 was trimmed too."""

    class RecordingHub:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def deliver(self, messages: list[Any]) -> int:
            self.calls.append([m.id for m in messages])
            return len(messages)

        def lost_history(self, channel: str, missed: int) -> int:
            self.calls.append(("lost", channel, missed))
            return 0

    hub = RecordingHub()
    engine.attach(hub)
    engine._ensure_started()
    engine.track("c", (100, 2))
    engine._local["c"] = 1

    def entry(epoch: int, number: int) -> tuple[bytes, dict[bytes, bytes]]:
        return f"{epoch}-{number}".encode(), {b"b": b"data: x\n\n", b"d": b'"x"', b"e": b"", b"t": b"1000"}

    engine._deliver_entries("c", [entry(100, 3), entry(100, 4)])
    engine._deliver_entries("c", [entry(100, 5), entry(100, 9)])
    engine._deliver_entries("c", [entry(200, 1), entry(200, 2)])
    engine._deliver_entries("c", [entry(300, 4)])
    assert hub.calls == [["100-3", "100-4"], ["100-5"], ("lost", "c", 3), ["100-9"], ["200-1", "200-2"],
                         ("lost", "c", 3), ["300-4"]]


def test_bad_ids_get_the_same_reset_from_both_engines(engine: RedisEngine) -> None:
    from rover_stream.hub import MemoryEngine

    for hub in (Hub(MemoryEngine(5, 3600)), Hub(engine)):
        for n in range(3):
            hub.publish("bad", n)
        for bad in BAD_IDS + ["a:" + BAD_IDS[0], "bad:1-99999999999999999999999"]:
            assert parse_id(bad) is None or ":" in bad
            subscription = hub.subscribe("bad", last_event_id=bad)
            resets = [json.loads(p.decode().split("data: ", 1)[1]) for p in subscription.preamble
                      if p.startswith(b"event: reset")]
            assert resets == [{"channel": "bad", "reason": "unknown", "last_event_id": bad, "missed": None,
                               "replayed": 3}], (hub.engine.name, bad)
            subscription.close()
    assert engine.connected and engine.last_error is None


def test_the_id_parser_is_bounded() -> None:
    assert parse_id("1795263245123-17") == (1795263245123, 17)
    assert parse_id(f"{ID_PART_MAX}-{ID_PART_MAX}") == (ID_PART_MAX, ID_PART_MAX)
    assert parse_id("007-1") == (7, 1) and format_id((7, 1)) == "7-1"
    for bad in BAD_IDS + ["", "-", "1", "\u0661-1", "\u00b2-1", "1-\u0662", "1-2\n", "1-2\x00", " 1-2", "1-2 "]:
        assert parse_id(bad) is None, bad


# -- live: gunicorn on Redis ---------------------------------------------------------------------------------


def redis_env(redis_server: Any, **extra: str) -> dict[str, str]:
    return {"ROVER_REDIS_URL": redis_server.url, "ROVER_HEARTBEAT_INTERVAL": "0.5", "ROVER_DEMO": "0",
            "ROVER_METRICS_INTERVAL": "0", "ROVER_REDIS_TIMEOUT": "1", **extra}


def publish_all(port: int, channel: str, numbers: range, deadline: float) -> list[str]:
    """Publish each number, retrying (until ``deadline``) while the pool reconnects after a Redis restart;
    every id returned was answered 200."""
    publisher = Publisher(port)
    ids: list[str] = []
    try:
        for n in numbers:
            while True:
                try:
                    ids.append(publisher(channel, {"n": n})["id"])
                    break
                except AssertionError:  # 503 while a pool connection is re-established
                    assert time.monotonic() < deadline, f"publishing {n} never succeeded"
                    time.sleep(0.05)
    finally:
        publisher.close()
    return ids


def restart_redis(redis_server: Any, server: Any, deadline: float) -> None:
    redis_server.kill()
    while get_json(server.port, "/health").get("redis") == "ok":  # the reader saw it go
        assert time.monotonic() < deadline, "the reader did not notice Redis going away"
        time.sleep(0.05)
    redis_server.start()
    while get_json(server.port, "/health").get("redis") != "ok":  # the reader is back
        assert time.monotonic() < deadline, "the reader did not reconnect"
        time.sleep(0.05)


def away_across_a_restart(live_server: Any, redis_server: Any) -> tuple[list[str], list[str], list[str], SSEReader]:
    """A subscriber reads 3 events and leaves; 102 more are published; Redis restarts; 3 more are published;
    the subscriber comes back with its Last-Event-ID. Returns (seen, missed, after, reader)."""
    server = live_server(env=redis_env(redis_server))
    deadline = time.monotonic() + 60
    reader = subscribe(server.port, "away")
    seen = publish_all(server.port, "away", range(3), deadline)
    assert [e.last_event_id for e in reader.events(3)] == seen
    last_id = reader.parser.last_event_id
    reader.response.close()
    missed = publish_all(server.port, "away", range(3, 105), deadline)  # all answered 200
    restart_redis(redis_server, server, deadline)
    after = publish_all(server.port, "away", range(105, 108), deadline)
    back = subscribe(server.port, "away", last_event_id=last_id)
    back.until(f"id: {after[-1]}\n".encode(), timeout=10)
    return seen, missed, after, back


@pytest.mark.live
def test_a_reader_away_while_redis_restarts_without_persistence_gets_a_reset(live_server: Any,
                                                                             redis_server: Any) -> None:
    """The review's hole. By hand: ``redis-server --save '' --appendonly no``; ``ROVER_REDIS_URL=redis://
    127.0.0.1:6379/0 rover-stream serve``; ``curl -N localhost:8000/realtime/away`` and note the last ``id:``;
    stop curl; publish 102 events (``curl -d '{"channel":"away","data":1}' -H 'Content-Type:
    application/json' localhost:8000/api/broadcast``, all 200); restart redis-server; publish 3 more; then
    ``curl -N -H 'Last-Event-ID: <the id>' localhost:8000/realtime/away``. Before epochs: the 3 new events
    and nothing else (102 lost in silence). Now: ``event: reset`` (reason ``unknown``) first, then them."""
    seen, missed, after, back = away_across_a_restart(live_server, redis_server)
    try:
        events = [e for e in back.dispatched if e.data]
        assert events[0].event == "reset", [e.event for e in events]
        reset = json.loads(events[0].data)
        assert reset == {"channel": "away", "reason": "unknown", "last_event_id": seen[-1], "missed": None,
                         "replayed": 3}
        assert [e.last_event_id for e in events[1:]] == after
        assert [json.loads(e.data)["n"] for e in events[1:]] == [105, 106, 107]
        assert key(after[0])[0] != key(seen[0])[0]  # a new epoch
        assert key(after[0])[1] == 1 and key(after[0]) > key(missed[-1])
    finally:
        back.response.close()


@pytest.mark.live
def test_with_the_append_only_file_the_same_restart_loses_nothing_and_resets_nothing(live_server: Any,
                                                                                    redis_server: Any) -> None:
    """The regression guard: with ``--appendonly yes --appendfsync always`` the restart keeps the stream and
    its epoch, and the returning subscriber gets the 102 events it missed, then the 3 new ones, no reset."""
    redis_server.kill()
    redis_server.extra = ["--appendonly", "yes", "--appendfsync", "always"]
    redis_server.start()
    seen, missed, after, back = away_across_a_restart(live_server, redis_server)
    try:
        events = [e for e in back.dispatched if e.data]
        assert all(e.event != "reset" for e in events), events[0]
        # The history keeps 1,000 events by default: all 105 are there.
        assert [e.last_event_id for e in events] == missed + after
        assert {key(i)[0] for i in seen + missed + after} == {key(seen[0])[0]}
    finally:
        back.response.close()


def resets_of(port: int, path: str, headers: dict[str, str], channels: list[str], replayed: int) -> list[Any]:
    """GET ``path`` (an SSE stream), expect 200 and one reset per channel before the replay; return the
    events that followed the resets."""
    response = request(port, path, headers, timeout=10)
    assert response.status == 200, (path, headers, response.status, response.buffer[:300])
    reader = SSEReader(response)
    try:
        deadline = time.monotonic() + 10
        while len([e for e in reader.dispatched if e.data]) < len(channels) + replayed:
            assert time.monotonic() < deadline, reader.raw[-500:]
            reader.events(1, timeout=max(0.1, deadline - time.monotonic()))
        events = [e for e in reader.dispatched if e.data]
        resets = [json.loads(e.data) for e in events[:len(channels)]]
        assert all(e.event == "reset" for e in events[:len(channels)]), events
        assert sorted(r["channel"] for r in resets) == sorted(channels)
        for reset in resets:
            assert reset["reason"] == "unknown" and reset["missed"] is None, reset
        return events[len(channels):]
    finally:
        response.close()


@pytest.mark.live
@pytest.mark.parametrize("engine_name", ["redis", "memory"])
def test_out_of_range_and_malformed_ids_get_a_reset_never_an_error(live_server: Any, redis_server: Any,
                                                                   engine_name: str) -> None:
    """By hand, on Redis: ``curl -i -H 'Last-Event-ID: 99999999999999999999-1' localhost:8000/realtime/x``.
    Before: 503 ``redis_unavailable`` (Redis refused the id as a stream id, and the engine took the error
    reply for an outage), and /health said Redis was unavailable. Now, as with the in-process engine: 200,
    ``event: reset`` (``unknown``), the history; /health says ``ok``."""
    env = redis_env(redis_server) if engine_name == "redis" else {"ROVER_DEMO": "0", "ROVER_METRICS_INTERVAL": "0"}
    server = live_server(env=env)
    deadline = time.monotonic() + 30
    published = {name: publish_all(server.port, name, range(2), deadline) for name in ("a", "b")}
    for bad in BAD_IDS:
        single = resets_of(server.port, "/realtime/a", {"Last-Event-ID": bad}, ["a"], 2)
        assert [e.last_event_id for e in single[:2]] == published["a"]
        resets_of(server.port, "/realtime?channel=a&channel=b", {"Last-Event-ID": bad}, ["a", "b"], 4)
        cursor = f"a:{bad},b:{bad}"
        resets_of(server.port, "/realtime?channel=a&channel=b", {"Last-Event-ID": cursor}, ["a", "b"], 4)
    # Not even Latin-1: as a query parameter (EventSource's first connection).
    for bad in ["\u0661\u0662-3", "1-\u00b2"]:
        query = urllib.parse.quote(bad)
        resets_of(server.port, f"/realtime/a?last_event_id={query}", {}, ["a"], 2)
    health = get_json(server.port, "/health")
    assert health["status"] == "healthy"
    if engine_name == "redis":
        assert health["redis"] == "ok", health
    assert publish_all(server.port, "a", range(2, 3), deadline)  # and publishing goes on


@pytest.mark.live
def test_a_redis_error_reply_is_not_taken_for_redis_being_down(live_server: Any, redis_server: Any) -> None:
    """By hand: ``redis-cli SET rover:ch:broken x``, then ``curl -i localhost:8000/realtime/broken`` and a
    publish on ``broken``: Redis answers WRONGTYPE. That is 503 ``redis_error`` (Redis is there, it refused),
    not ``redis_unavailable``; /health still says ``ok``, and other channels' streams go on."""
    server = live_server(env=redis_env(redis_server))
    deadline = time.monotonic() + 30
    fine = subscribe(server.port, "fine")
    try:
        redis_server.command("SET", "rover:ch:broken", "not a stream")
        response = request(server.port, "/realtime/broken", timeout=10)
        try:
            body = json.loads(response.body())
        finally:
            response.close()
        assert response.status == 503 and body["error"] == "redis_error", body
        publisher = Publisher(server.port)
        try:
            publisher.connection.request("POST", "/api/broadcast", json.dumps({"channel": "broken", "data": 1}),
                                         {"Content-Type": "application/json"})
            answer = publisher.connection.getresponse()
            body = json.loads(answer.read())
        finally:
            publisher.close()
        assert answer.status == 503 and body["error"] == "redis_error", body
        assert get_json(server.port, "/health")["redis"] == "ok"
        ids = publish_all(server.port, "fine", range(3), deadline)
        assert [e.last_event_id for e in fine.events(3, timeout=10)] == ids
        assert get_json(server.port, "/health")["redis"] == "ok"
    finally:
        fine.response.close()
