"""The hub with real threads: ordering, encode-once, exact replay, resets, slow subscribers, signals."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from rover_stream import signals
from rover_stream.errors import ApiError
from rover_stream.hub import Hub, MemoryEngine, Subscription
from rover_stream.hub.message import parse_id
from rover_stream.transport.pipe import FeedEnded
from rover_stream.wire.sse_parser import EventStreamParser


def make_hub(history: int = 1000, ttl: float = 3600, queue_size: int = 256, policy: str = "disconnect",
             **kwargs: Any) -> Hub:
    return Hub(MemoryEngine(history, ttl), queue_size=queue_size, policy=policy, **kwargs)


def drain(subscription: Subscription, parser: EventStreamParser | None = None,
          timeout: float = 0.05) -> list[Any]:
    """Everything the subscription has for its client now, parsed as a browser would."""
    parser = parser or EventStreamParser()
    events = []
    while True:
        try:
            parts = subscription.take(timeout)
        except FeedEnded:
            break
        if parts is None:
            break
        for part in parts:
            events.extend(parser.feed(part))
    return events


def test_fan_out_in_order_with_bytes_encoded_once() -> None:
    hub = make_hub()
    subscriptions = [hub.subscribe("news") for _ in range(50)]
    for s in subscriptions:
        s.take(0.01)  # the position block
    for i in range(20):
        assert hub.publish("news", {"n": i}, event="tick").subscribers == 50
    batches = [s.take(0.1) or [] for s in subscriptions]
    assert all(len(b) == 20 for b in batches)  # everything waiting comes in one take: one write
    for i in range(20):
        assert len({id(b[i]) for b in batches}) == 1  # the same bytes object for every subscriber
    events = EventStreamParser().feed(b"".join(batches[0]))
    assert [e.data for e in events] == [f'{{"n":{i}}}' for i in range(20)]
    assert {e.event for e in events} == {"tick"}


def test_ids_increase_per_channel() -> None:
    hub = make_hub()
    ids = [parse_id(hub.publish("a", i).message.id) for i in range(5)]
    assert None not in ids
    assert ids == sorted(key for key in ids if key) and len(set(ids)) == 5
    first_of_b = parse_id(hub.publish("b", 0).message.id)
    assert first_of_b is not None and first_of_b[1] == 1  # numbering is per channel


def test_position_block_lets_a_client_resume_before_its_first_event() -> None:
    hub = make_hub()
    hub.publish("news", "before")
    parser = EventStreamParser()
    first = hub.subscribe("news")
    assert drain(first, parser) == []
    position = parser.last_event_id
    first.close()
    hub.publish("news", "missed while away")
    again = hub.subscribe("news", last_event_id=position)
    assert [e.data for e in drain(again)] == ["missed while away"]


def test_replay_then_live_without_gap_or_duplicate() -> None:
    hub = make_hub()
    ids = [hub.publish("news", f"m{i}").message.id for i in range(10)]
    subscription = hub.subscribe("news", last_event_id=ids[3])
    hub.publish("news", "m10")
    assert [e.data for e in drain(subscription)] == [f"m{i}" for i in range(4, 11)]


def test_replay_exact_under_concurrent_publishing_and_random_reconnects() -> None:
    """Clients drop at random points (or are dropped as slow) and reconnect with their Last-Event-ID while
    a thread publishes: each ends up with exactly the published sequence."""
    import time

    hub = make_hub(history=100_000, queue_size=64)
    total = 5000

    def publisher() -> None:
        for i in range(total):
            hub.publish("live", i)
            if i % 100 == 0:
                time.sleep(0.001)

    rng = random.Random(7)
    clients = 4
    received: list[list[int]] = [[] for _ in range(clients)]
    cursors: list[str | None] = [None] * clients
    subscriptions = [hub.subscribe("live") for _ in range(clients)]
    thread = threading.Thread(target=publisher)
    thread.start()
    deadline = time.monotonic() + 30
    reconnects = 0
    while any(len(r) < total for r in received):
        assert time.monotonic() < deadline, [len(r) for r in received]
        for n in range(clients):
            parser = EventStreamParser()
            parser.last_event_id = cursors[n] or ""
            try:
                for _ in range(rng.randint(1, 5)):
                    for part in subscriptions[n].take(0.005) or []:
                        received[n].extend(int(e.data) for e in parser.feed(part))
            except FeedEnded:
                pass  # dropped as a slow client
            cursors[n] = parser.last_event_id or cursors[n]
            subscriptions[n].close()  # the connection drops at a random point
            subscriptions[n] = hub.subscribe("live", last_event_id=cursors[n])
            reconnects += 1
    thread.join()
    assert reconnects > 20
    for r in received:
        assert r == list(range(total)), "gap or duplicate"


@pytest.mark.parametrize("last_event_id", ["garbage", "1-1", "99999999999999-5", "99999999999999999999-1",
                                           f"1-{2**64}", "1-\u00b2", "\u0661-1"])
def test_unknown_id_gets_a_reset_then_the_history(last_event_id: str) -> None:
    hub = make_hub()
    for i in range(3):
        hub.publish("news", i)
    received: list[Any] = []
    with signals.replay_reset.connected_to(lambda sender, **kw: received.append(kw)):
        events = drain(hub.subscribe("news", last_event_id=last_event_id))
    assert events[0].event == "reset"
    import json

    info = json.loads(events[0].data)
    assert info == {"channel": "news", "reason": "unknown", "last_event_id": last_event_id, "missed": None,
                    "replayed": 3}
    assert [e.data for e in events[1:]] == ["0", "1", "2"]
    assert [(kw["channel"], kw["reason"], kw["missed"]) for kw in received] == [("news", "unknown", None)]


def test_expired_id_says_how_many_were_lost() -> None:
    hub = make_hub(history=5)
    ids = [hub.publish("news", i).message.id for i in range(20)]
    events = drain(hub.subscribe("news", last_event_id=ids[2]))
    import json

    assert events[0].event == "reset"
    info = json.loads(events[0].data)
    assert info["reason"] == "expired" and info["missed"] == 12 and info["replayed"] == 5
    assert [e.data for e in events[1:]] == [str(i) for i in range(15, 20)]
    assert hub.stats()["resets"] == 1


def test_history_age_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import rover_stream.hub.engines.memory as memory

    now = [1000.0]
    monkeypatch.setattr(memory.time, "time", lambda: now[0])
    hub = make_hub(ttl=60)
    first = hub.publish("news", "old").message.id
    now[0] += 61
    hub.publish("news", "fresh")
    assert [m.data for m in hub.history("news")] == ["fresh"]
    events = drain(hub.subscribe("news", last_event_id=first))
    assert [e.data for e in events] == ["fresh"]  # the client saw "old": nothing was lost


def test_frozen_subscriber_is_disconnected_and_others_get_everything() -> None:
    hub = make_hub(queue_size=10)
    frozen = hub.subscribe("news")
    fast = hub.subscribe("news")
    fast_events = []
    dropped: list[Any] = []
    with signals.subscriber_dropped.connected_to(lambda sender, **kw: dropped.append(kw)):
        for i in range(100):
            hub.publish("news", i)
            fast_events.extend(drain(fast, timeout=0))
    assert [e.data for e in fast_events] == [str(i) for i in range(100)]
    assert frozen.dropped == "slow_client" and frozen.queue.qsize() <= 1  # its memory was freed
    assert dropped and dropped[0]["policy"] == "disconnect"
    stats = hub.stats()
    assert stats["subscribers"] == 1 and stats["slow_subscribers_disconnected"] == 1
    frozen.take(0)  # the position block
    with pytest.raises(FeedEnded):
        frozen.take(0.1)  # its stream ends; the client reconnects with Last-Event-ID


def test_drop_oldest_policy_keeps_the_newest() -> None:
    hub = make_hub(queue_size=5, policy="drop-oldest")
    slow = hub.subscribe("news")
    slow.take(0)
    for i in range(12):
        hub.publish("news", i)
    assert [e.data for e in drain(slow)] == ["7", "8", "9", "10", "11"]
    assert slow.lost == 7 and hub.stats()["events_dropped"] == 7


def test_multi_channel_cursor_resumes_every_channel() -> None:
    hub = make_hub()
    parser = EventStreamParser()
    both = hub.subscribe(["a", "b"])
    hub.publish("a", "a1")
    hub.publish("b", "b1")
    events = drain(both, parser)
    assert [(e.data) for e in events] == ['{"channel":"a","data":"a1"}', '{"channel":"b","data":"b1"}']
    cursor = parser.last_event_id
    both.close()
    hub.publish("b", "b2")
    hub.publish("a", "a2")
    again = hub.subscribe(["a", "b"], last_event_id=cursor)
    assert [e.data for e in drain(again)] == ['{"channel":"b","data":"b2"}', '{"channel":"a","data":"a2"}']


def test_signals_and_unsubscribe() -> None:
    hub = make_hub()
    seen: list[str] = []
    with signals.subscribed.connected_to(lambda s, **kw: seen.append("subscribed")), \
            signals.message_published.connected_to(lambda s, **kw: seen.append(f"published:{kw['subscribers']}")), \
            signals.unsubscribed.connected_to(lambda s, **kw: seen.append("unsubscribed")):
        subscription = hub.subscribe("x")
        hub.publish("x", 1)
        subscription.close()
        hub.publish("x", 2)
    assert seen == ["subscribed", "published:1", "unsubscribed", "published:0"]


def test_a_failing_receiver_does_not_stop_the_others() -> None:
    hub = make_hub()
    seen = []

    def broken(sender: Any, **kw: Any) -> None:
        raise RuntimeError("receiver bug")

    with signals.message_published.connected_to(broken), \
            signals.message_published.connected_to(lambda s, **kw: seen.append(1)):
        hub.publish("x", 1)
    assert seen == [1]


def test_channel_names_and_limits() -> None:
    hub = make_hub(max_channels=3, max_channels_per_stream=2)
    for bad in ["", "a b", "-x", "x" * 101, "a/b", "é", "a\nb"]:
        with pytest.raises(ApiError):
            hub.publish(bad, 1)
    with pytest.raises(ApiError, match="at most 2"):
        hub.subscribe(["a", "b", "c"])
    keep = [hub.subscribe(name) for name in ("a", "b", "c")]
    with pytest.raises(ApiError, match="maximum of 3 channels"):
        hub.subscribe("d")
    keep[0].close()
    hub.subscribe("d")  # the idle channel is forgotten to make room


def test_creating_a_hub_starts_no_thread() -> None:
    before = threading.active_count()
    make_hub().subscribe("x")
    assert threading.active_count() == before
