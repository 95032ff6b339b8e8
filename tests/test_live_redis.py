"""The Redis engine against a real redis-server: many workers, two "hosts", resume anywhere, Redis dying
and coming back, and a constant number of Redis connections per worker."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest

from tests.wire_helpers import Publisher, SSEReader, get_json, request, subscribe, wait_for

pytestmark = pytest.mark.live


def redis_env(redis_server: Any, **extra: str) -> dict[str, str]:
    return {"ROVER_REDIS_URL": redis_server.url, "ROVER_HEARTBEAT_INTERVAL": "0.5", **extra}


def published_ids(port: int, channel: str, count: int, start: int = 0) -> list[str]:
    publish = Publisher(port)
    try:
        return [publish(channel, {"n": n})["id"] for n in range(start, start + count)]
    finally:
        publish.close()


def test_three_workers_deliver_every_event_in_order(live_server: Any, redis_server: Any) -> None:
    server = live_server(env=redis_env(redis_server, ROVER_WORKERS="3"))
    # Connect until the subscribers really are spread over the workers (each worker registers its
    # subscriber count in Redis; which worker accepts a connection is up to the kernel).
    readers: list[Any] = []
    try:
        def workers_with_subscribers() -> int:
            return len(json_fields(redis_server.command("HGETALL", "rover:subs:spread")))

        while len(readers) < 30 or (workers_with_subscribers() < 3 and len(readers) < 150):
            readers.append(subscribe(server.port, "spread"))
            time.sleep(0.02)
        assert wait_for(lambda: workers_with_subscribers() >= 2, timeout=5), "all subscribers on one worker"
        # A publish answers how many subscribers it reached, over all workers.
        probe = Publisher(server.port)
        assert wait_for(lambda: probe("spread-count", 0)["subscribers"] == 0, timeout=1)
        probe.close()

        def counted() -> int:  # every worker's count, as written to Redis (at once, then at most every 0.2 s)
            counts = redis_server.command("HGETALL", "rover:subs:spread").split(b"\r\n")[2::2][1::2]
            return sum(int(v.split(b":")[0]) for v in counts)

        assert wait_for(lambda: counted() == len(readers), timeout=3), (counted(), len(readers))
        # Publish through several connections, so that publishes land on different workers too.
        ids: list[str] = []
        for batch in range(5):
            ids += published_ids(server.port, "spread", 20, start=batch * 20)
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        for reader in readers:
            events = reader.events(100, timeout=10)
            assert [e.last_event_id for e in events] == ids
            assert [json.loads(e.data)["n"] for e in events] == list(range(100))
    finally:  # a failure must not leave 30 sockets for the next test's garbage collector to warn about
        for reader in readers:
            reader.response.close()


def json_fields(raw: bytes) -> list[bytes]:
    """The field names of a raw HGETALL reply."""
    parts = raw.split(b"\r\n")
    values = [parts[i] for i in range(2, len(parts), 2)]
    return values[0::2]


def test_two_hosts_share_one_redis_and_resume_on_either(live_server: Any, redis_server: Any) -> None:
    host_a = live_server(env=redis_env(redis_server))
    host_b = live_server(env=redis_env(redis_server))
    on_a = subscribe(host_a.port, "shared")
    on_b = subscribe(host_b.port, "shared")
    first = published_ids(host_b.port, "shared", 5)
    assert [e.last_event_id for e in on_a.events(5)] == first
    assert [e.last_event_id for e in on_b.events(5)] == first
    # The client on A loses its connection; events go on; it comes back on host B with its Last-Event-ID.
    last_seen = on_a.parser.last_event_id
    on_a.response.close()
    missed = published_ids(host_a.port, "shared", 5, start=5)
    back = subscribe(host_b.port, "shared", last_event_id=last_seen)
    later = published_ids(host_a.port, "shared", 3, start=10)
    back.until(f"id: {later[-1]}".encode(), timeout=5)
    got = [e.last_event_id for e in back.dispatched]
    assert got == missed + later, "gap or duplicate after resuming on the other host"
    back.response.close()
    on_b.response.close()


def test_resume_after_a_server_restart(live_server: Any, redis_server: Any) -> None:
    server = live_server(env=redis_env(redis_server))
    reader = subscribe(server.port, "durable")
    first = published_ids(server.port, "durable", 3)
    reader.events(3)
    last_seen = reader.parser.last_event_id
    reader.response.close()
    server.stop()
    again = live_server(env=redis_env(redis_server))
    more = published_ids(again.port, "durable", 2, start=3)
    back = subscribe(again.port, "durable", last_event_id=last_seen)
    back.until(f"id: {more[-1]}".encode())
    assert [e.last_event_id for e in back.dispatched] == more
    assert first[-1] == last_seen
    back.response.close()


def test_redis_dying_and_returning_loses_nothing(live_server: Any, redis_server: Any) -> None:
    server = live_server(env=redis_env(redis_server, ROVER_REDIS_TIMEOUT="1"))
    readers = [subscribe(server.port, "faults") for _ in range(5)]
    before = published_ids(server.port, "faults", 10)
    for reader in readers:
        reader.events(10)

    redis_server.kill()
    publish = Publisher(server.port)
    started = time.monotonic()
    publish.connection.request("POST", "/api/broadcast", json.dumps({"channel": "faults", "data": "x"}),
                               {"Content-Type": "application/json"})
    answer = publish.connection.getresponse()
    body = json.loads(answer.read())
    assert answer.status == 503 and body["error"] == "redis_unavailable"
    assert time.monotonic() - started < 3.5, "publishing hung while Redis was down"
    assert answer.getheader("Retry-After")
    health = get_json(server.port, "/health")
    assert health["redis"] == "unavailable"
    for reader in readers:  # the streams stay open: heartbeats go on
        reader.until(b": ping\n\n: ping\n\n", timeout=3)

    redis_server.start()
    wait_for(lambda: get_json(server.port, "/health")["redis"] == "ok", timeout=10)
    after: list[Any] = []
    deadline = time.monotonic() + 10
    while len(after) < 10:  # the first publishes may meet a pool connection still being re-established
        assert time.monotonic() < deadline
        try:
            after.append(publish("faults", len(after))["id"])
        except AssertionError:
            time.sleep(0.2)
    publish.close()
    for reader in readers:
        reader.until(f"id: {after[-1]}".encode(), timeout=10)
        ids = [e.last_event_id for e in reader.dispatched if e.event == "message"]
        assert ids == before + after, "an event was lost or sent twice"
        reader.response.close()


def test_reader_resumes_from_its_last_id_after_its_connection_is_killed(live_server: Any, redis_server: Any) -> None:
    server = live_server(env=redis_env(redis_server))
    reader = subscribe(server.port, "killed")
    first = published_ids(server.port, "killed", 3)
    reader.events(3)
    redis_server.command("CLIENT", "KILL", "TYPE", "normal")
    more = published_ids(server.port, "killed", 20, start=3)  # published while the reader reconnects
    reader.until(f"id: {more[-1]}".encode(), timeout=10)
    assert [e.last_event_id for e in reader.dispatched] == first + more
    reader.response.close()


def test_redis_connections_stay_constant_with_a_thousand_subscribers(live_server: Any, redis_server: Any) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    server = live_server(env=redis_env(redis_server, ROVER_WORKER_CONNECTIONS="4000"))

    def connections() -> int:
        clients = redis_server.command("CLIENT", "LIST").decode(errors="replace")
        return len([line for line in clients.splitlines() if "cmd=client|list" not in line and "id=" in line])

    few = [subscribe(server.port, f"c{i % 50}") for i in range(10)]
    published_ids(server.port, "c0", 1)
    baseline = connections()
    many: list[Any] = []
    lock = threading.Lock()

    def connect(count: int) -> None:
        for i in range(count):
            reader = subscribe(server.port, f"c{i % 50}")
            with lock:
                many.append(reader)

    threads = [threading.Thread(target=connect, args=(248,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published_ids(server.port, "c0", 3)
    assert get_json(server.port, "/test/state")["hub"]["subscribers"] == 1002
    assert connections() <= max(baseline, 10), f"Redis connections grew from {baseline} to {connections()}"
    assert re.search(rb"name=|id=", redis_server.command("CLIENT", "LIST"))
    for reader in few + many:
        reader.response.close()


def test_threaded_server_on_redis(live_server: Any, redis_server: Any) -> None:
    server = live_server(kind="threaded", env=redis_env(redis_server, ROVER_DEMO="0", ROVER_METRICS_INTERVAL="0"))
    reader = subscribe(server.port, "threads")
    ids = published_ids(server.port, "threads", 10)
    assert [e.last_event_id for e in reader.events(10)] == ids
    reader.response.close()


def test_redis_unreachable_at_subscribe_is_503(live_server: Any, redis_server: Any) -> None:
    server = live_server(env=redis_env(redis_server, ROVER_REDIS_TIMEOUT="1"))
    redis_server.kill()
    response = request(server.port, "/realtime/nowhere", timeout=10)
    assert response.status == 503
    assert json.loads(response.body())["error"] == "redis_unavailable"
    response.close()
    SSEReader  # noqa: B018  (imported for the helpers' types)


def test_concurrent_publishes_share_round_trips_and_keep_every_event(live_server: Any, redis_server: Any) -> None:
    """Eight clients publishing at once on one worker (their publishes go to Redis in shared pipelines),
    and Redis forgetting the publishing script halfway (SCRIPT FLUSH, as a restart does): every publish is
    answered with its own id, and a subscriber gets every event once, in the order of those ids."""
    server = live_server(env=redis_env(redis_server, ROVER_WORKERS="1"))
    reader = subscribe(server.port, "piped")
    answers: dict[int, list[str]] = {}
    flushed = threading.Event()

    def publish_many(client: int) -> None:
        publish = Publisher(server.port)
        try:
            answers[client] = []
            for n in range(50):
                if client == 0 and n == 25:
                    assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
                    flushed.set()
                answers[client].append(publish("piped", {"client": client, "n": n})["id"])
        finally:
            publish.close()

    try:
        threads = [threading.Thread(target=publish_many, args=(c,)) for c in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert flushed.is_set() and sorted(answers) == list(range(8))
        ids = [i for client in answers.values() for i in client]
        assert len(set(ids)) == 400
        for client in answers.values():  # each client's own publishes are numbered in its order
            assert client == sorted(client, key=lambda i: tuple(map(int, i.split("-"))))
        events = reader.events(400, timeout=15)
        got = [e.last_event_id for e in events]
        assert got == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        per_client: dict[int, list[int]] = {}
        for event in events:
            data = json.loads(event.data)
            per_client.setdefault(data["client"], []).append(data["n"])
        assert per_client == {c: list(range(50)) for c in range(8)}
    finally:
        reader.response.close()
