"""The Redis Cluster engine against a real cluster (3 primaries, 3 replicas on loopback ports): channels
spread over the shards, replay by Last-Event-ID on any host, presence, the producer lease, subscriber
counts, and a primary failing over while events are published."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rover_stream.errors import ConfigError
from rover_stream.settings import load, parse_cluster_url
from tests.clusterlab import RedisCluster
from tests.wire_helpers import Publisher, get_json, next_message, subscribe, wait_for, ws_client_class

pytestmark = pytest.mark.live


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    lab = RedisCluster(tmp_path / "cluster")
    try:
        yield lab
    finally:
        lab.stop()


def cluster_env(cluster: RedisCluster, **extra: str) -> dict[str, str]:
    return {"ROVER_REDIS_URL": cluster.url, "ROVER_HEARTBEAT_INTERVAL": "0.5", "ROVER_REDIS_TIMEOUT": "1",
            **extra}


def test_the_cluster_url_form() -> None:
    assert parse_cluster_url("redis+cluster://:s3cret@10.0.0.1:7000,[::1]:7001/") == {
        "nodes": [("10.0.0.1", 7000), ("::1", 7001)], "username": None, "password": "s3cret", "ssl": False}
    assert parse_cluster_url("rediss+cluster://ops:pw@h:1")["ssl"] is True
    for bad in ("redis+cluster://", "redis+cluster://host", "redis+cluster://h:0", "redis+cluster://h:1,h2:x"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load(environ={"ROVER_REDIS_URL": "redis+cluster://h:99999"})


def test_channels_spread_over_the_shards_and_every_event_arrives_in_order_on_two_hosts(
        live_server: Any, cluster: RedisCluster) -> None:
    channels = [f"spread{n}" for n in range(9)]
    shards = {cluster.primary_for(f"rover:ch:{{{c}}}") for c in channels}
    assert len(shards) >= 2, "the test's channels should live on several shards"
    host_a = live_server(env=cluster_env(cluster, ROVER_WORKERS="2"))
    host_b = live_server(env=cluster_env(cluster))
    readers = {(host, c): subscribe(host.port, c) for host in (host_a, host_b) for c in channels}
    publish_a, publish_b = Publisher(host_a.port), Publisher(host_b.port)
    sent: dict[str, list[str]] = {c: [] for c in channels}
    for n in range(20):
        for c in channels:
            sent[c].append((publish_a if n % 2 else publish_b)(c, {"n": n})["id"])
    for (host, c), reader in readers.items():
        got = [e.last_event_id for e in reader.events(20, timeout=10)]
        assert got == sent[c], f"{c} on port {host.port}: out of order, missing or doubled"
        assert [json.loads(e.data)["n"] for e in reader.dispatched] == list(range(20))
    # Every worker counts its subscribers in the channel's slot: the publish answer sums all hosts.
    assert wait_for(lambda: publish_a(channels[0], "count")["subscribers"] == 2, timeout=12)
    info = get_json(host_b.port, f"/api/channels/{channels[1]}")
    assert info["subscribers"] == 2 and info["last_id"] == sent[channels[1]][-1] and info["history"] == 20
    for reader in readers.values():
        reader.response.close()
    publish_a.close()
    publish_b.close()


def test_resume_on_the_other_host_is_exact_and_an_unknown_id_is_a_reset(
        live_server: Any, cluster: RedisCluster) -> None:
    host_a = live_server(env=cluster_env(cluster))
    host_b = live_server(env=cluster_env(cluster, ROVER_HISTORY_SIZE="5"))
    publish = Publisher(host_a.port)
    on_a = subscribe(host_a.port, "resume")
    first = [publish("resume", n)["id"] for n in range(3)]
    assert [e.last_event_id for e in on_a.events(3)] == first
    on_a.response.close()
    missed = [publish("resume", n)["id"] for n in range(3, 6)]
    back = subscribe(host_b.port, "resume", last_event_id=first[-1])
    later = publish("resume", 6)["id"]
    back.until(f"id: {later}".encode(), timeout=5)
    assert [e.last_event_id for e in back.dispatched] == [*missed, later]
    back.response.close()
    # An id from another history (Redis lost the channel, or never gave it) gets a reset, then the history.
    stranger = subscribe(host_b.port, "resume", last_event_id="12345-3")
    assert b"event: reset" in stranger.raw
    assert b'"reason":"unknown"' in stranger.raw
    stranger.response.close()
    # Further behind than the history (5 events on host B's side): an "expired" reset with the count lost.
    far = subscribe(host_b.port, "resume", last_event_id=first[0])
    assert b"event: reset" in far.raw and b'"reason":"expired"' in far.raw
    far.response.close()
    publish.close()


def test_room_members_on_two_hosts_see_each_other_and_each_others_messages(
        live_server: Any, cluster: RedisCluster) -> None:
    host_a = live_server(env=cluster_env(cluster))
    host_b = live_server(env=cluster_env(cluster))
    client = ws_client_class()
    ada = client.connect(f"ws://127.0.0.1:{host_a.port}/ws/comms/geology?user=ada")
    grace = client.connect(f"ws://127.0.0.1:{host_b.port}/ws/comms/geology?user=grace")
    try:
        members = wait_for(lambda: get_json(host_a.port, "/api/rooms/geology")["members"] == ["ada", "grace"],
                           timeout=5)
        assert members, get_json(host_a.port, "/api/rooms/geology")
        ada.send("sample 7 looks odd")
        heard = next_message(grace, text="sample 7 looks odd")
        assert heard["user"] == "ada" and heard["room"] == "geology"
    finally:
        ada.close()
        grace.close()


def test_a_deployment_producer_runs_once_across_hosts(live_server: Any, cluster: RedisCluster) -> None:
    """The demo's telemetry producer holds a lease in the cluster: one process of the deployment runs it."""
    hosts = [live_server(app="wsgi:app", env=cluster_env(cluster, ROVER_DEMO="1")) for _ in range(2)]

    def states() -> list[str]:
        return [get_json(h.port, "/health")["producers"].get("rover-telemetry") for h in hosts]

    assert wait_for(lambda: sorted(states()) == ["running", "standby"], timeout=15), states()


def test_a_primary_failing_over_loses_nothing_unannounced(live_server: Any, cluster: RedisCluster) -> None:
    """Numbered events published at a steady rate; the primary of their channel is killed; its replica takes
    over. Every subscriber (resuming with Last-Event-ID when its stream ends) must receive every
    acknowledged event in order, without duplicates -- or be told with ``event: reset`` that some are gone."""
    server = live_server(env=cluster_env(cluster, ROVER_WORKERS="2"))
    channel = "failover"
    victim = cluster.primary_for(f"rover:ch:{{{channel}}}")
    acknowledged: list[int] = []
    refused = 0
    timeline: list[tuple[float, int]] = []  # (when, HTTP status or 0 for no answer)
    stop = threading.Event()

    def publish_steadily() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                connection.request("POST", "/api/broadcast", json.dumps({"channel": channel, "data": {"n": n}}),
                                   {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                timeline.append((time.monotonic(), answer.status))
                if answer.status == 200:
                    acknowledged.append(n)
                else:
                    refused += 1
            except OSError:
                timeline.append((time.monotonic(), 0))
                refused += 1  # no answer: not acknowledged
            finally:
                connection.close()
            n += 1
            time.sleep(0.02)

    # Per subscriber, the numbers received, in runs: a reset (the history starts over for the client)
    # begins a new run.
    runs: list[list[list[int]]] = [[[]] for _ in range(4)]

    def received(index: int) -> set[int]:
        return {n for run in runs[index] for n in run}

    def follow(index: int) -> None:
        last_id = None
        while not (stop.is_set() and (set(acknowledged) <= received(index) or deadline_passed())):
            try:
                reader = subscribe(server.port, channel, last_event_id=last_id)
            except (AssertionError, OSError):
                time.sleep(0.2)
                continue
            try:
                arrived = list(reader.dispatched)  # what came with the response's first bytes (a reset...)
                while not (stop.is_set() and set(acknowledged) <= received(index)):
                    for event in arrived or reader.events(1, timeout=3):
                        if event.event == "reset":
                            runs[index].append([])
                        elif event.event == "message" and event.data:
                            runs[index][-1].append(json.loads(event.data)["n"])
                        last_id = event.last_event_id or last_id
                    arrived = []
            except (TimeoutError, ConnectionError, OSError):
                pass
            finally:
                reader.response.close()

    finish_by = [0.0]

    def deadline_passed() -> bool:
        return finish_by[0] > 0 and time.monotonic() > finish_by[0]

    followers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(4)]
    publisher = threading.Thread(target=publish_steadily, daemon=True)
    for thread in followers:
        thread.start()
    time.sleep(1.0)
    publisher.start()
    time.sleep(2.0)
    killed_at = time.monotonic()
    cluster.kill(victim)
    cluster.wait_healthy(timeout=30)
    promoted_after = time.monotonic() - killed_at
    # Publishing works again once the replica has taken over; it goes on for a few seconds more.
    assert wait_for(lambda: any(when > killed_at + promoted_after and status == 200 for when, status in timeline[-5:]),
                    timeout=30), "publishing did not resume after the failover"
    resumed_after = time.monotonic() - killed_at
    time.sleep(3.0)
    stop.set()
    publisher.join(10)
    finish_by[0] = time.monotonic() + 15
    for thread in followers:
        thread.join(20)
    figures = []
    for index in range(4):
        for run in runs[index]:
            assert run == sorted(set(run)), f"subscriber {index}: out of order or doubled without a reset: {run}"
        resets = len(runs[index]) - 1
        lost = sorted(set(acknowledged) - received(index))
        figures.append({"received": sum(len(r) for r in runs[index]), "lost": len(lost), "resets": resets})
        assert not lost or resets > 0, f"subscriber {index}: {len(lost)} acknowledged events lost without a " \
                                       f"reset: {lost[:10]}"
    refusals = [when - killed_at for when, status in timeline if status != 200]
    print(f"\nrefusals from {min(refusals, default=0):.2f} s to {max(refusals, default=0):.2f} s after the kill; "
          f"statuses {sorted({s for _, s in timeline})}")
    print(f"failover: primary killed, replica serving after {promoted_after:.1f} s, publishing acknowledged "
          f"again after {resumed_after:.1f} s; "
          f"{len(acknowledged)} events acknowledged, {refused} refused (503) meanwhile; per subscriber: {figures}")
    assert len(acknowledged) > 100


def test_an_unreachable_cluster_is_a_503_and_not_ready(live_server: Any, tmp_path: Path) -> None:
    """No node of the cluster answers (all down, or a wrong address): publishing and subscribing answer
    503 ``redis_unavailable`` with Retry-After, /ready says why, and the server stays up."""
    from tests.clusterlab import _free_ports

    nowhere = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    server = live_server(env={"ROVER_REDIS_URL": f"redis+cluster://{nowhere}", "ROVER_REDIS_TIMEOUT": "0.5"})
    published = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    published.request("POST", "/api/broadcast", json.dumps({"channel": "news", "data": 1}),
                      {"Content-Type": "application/json"})
    answer = published.getresponse()
    assert answer.status == 503 and answer.getheader("Retry-After")
    assert json.loads(answer.read())["error"] == "redis_unavailable"
    published.close()
    with pytest.raises(AssertionError, match="503"):
        subscribe(server.port, "news")
    ready = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    ready.request("GET", "/ready")
    state = ready.getresponse()
    assert state.status == 503 and json.loads(state.read())["checks"]["redis"]["ok"] is False
    ready.close()
