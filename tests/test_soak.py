"""Soak: connect / receive / disconnect cycles of SSE subscribers and WebSocket members mixed with steady
publishing, for ``ROVER_SOAK_SECONDS`` (20 s here; longer by setting it). Every client must get every event
published while it was subscribed, in order; afterwards the worker's open descriptors, streams and
subscribers are back to their baseline and its memory has not drifted beyond a stated tolerance."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import Publisher, get_json, subscribe, wait_for, ws_client_class

pytestmark = pytest.mark.live

SECONDS = float(os.environ.get("ROVER_SOAK_SECONDS", "20"))
FD_TOLERANCE = 8  # descriptors (the metrics files, Redis-less: nothing else grows)
RSS_TOLERANCE_MB = 12.0  # the allocator keeps some of what the cycles used


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# simple_websocket's client leaves its socket to the garbage collector when a handshake fails
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(SECONDS + 100)  # the run, then the checks (setup.cfg's 120 s is for ordinary tests)
def test_soak_leaves_no_drift_and_loses_nothing(live_server: Any) -> None:
    server = live_server(env={"ROVER_METRICS_INTERVAL": "0", "ROVER_DEMO": "0", "ROVER_WS_MESSAGE_RATE": "100"})
    (pid,) = server.worker_pids()
    stop = threading.Event()  # the clients'
    stop_publishing = threading.Event()  # set once every client has finished its last cycle
    problems: list[str] = []
    counts = {"sse": 0, "ws": 0, "events": 0, "published": 0, "handshake_failures": 0}
    lock = threading.Lock()

    def publisher() -> None:
        publish = Publisher(server.port)
        try:
            n = 0
            while not stop_publishing.is_set():
                publish("soak", {"n": n})
                n += 1
                with lock:
                    counts["published"] = n
                time.sleep(0.02)
        finally:
            publish.close()

    def sse_cycles(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            reader = subscribe(server.port, "soak")
            try:
                wanted = rng.randint(1, 6)
                reader.events(wanted, timeout=10)
                numbers = [json.loads(e.data)["n"] for e in reader.dispatched]  # all it got, in order
                if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
                    problems.append(f"gap or disorder in {numbers}")
                with lock:
                    counts["sse"] += 1
                    counts["events"] += len(numbers)
            except Exception as exc:  # noqa: BLE001 (collected, the test fails below)
                problems.append(f"sse: {type(exc).__name__}: {exc}")
            finally:
                reader.response.close()

    def ws_cycles(seed: int) -> None:
        client_class = ws_client_class()
        while not stop.is_set():
            user = f"m{seed}-{counts['ws']}"
            time.sleep(0.002)  # a few hundred joins a second, not a connect flood (test_hostile has that)
            try:
                member = client_class.connect(f"ws://127.0.0.1:{server.port}/ws/comms/soak-room?user={user}")
            except Exception:  # noqa: BLE001 (a handshake that failed: counted, bounded below)
                with lock:
                    counts["handshake_failures"] += 1
                continue
            try:
                try:
                    member.send(f"hello from {user}")
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        raw = member.receive(deadline - time.monotonic())
                        frame = json.loads(raw) if raw else {}
                        if frame.get("type") == "message" and frame.get("user") == user:
                            break
                    else:
                        problems.append(f"{user} never got its own message")
                finally:
                    member.close()
                with lock:
                    counts["ws"] += 1
            except Exception as exc:  # noqa: BLE001
                problems.append(f"ws: {type(exc).__name__}: {exc}")

    # warm up once, then take the baseline
    warm = subscribe(server.port, "soak")
    warm.response.close()
    assert wait_for(lambda: get_json(server.port, "/admin/stream-stats")["active_streams"] == 0, timeout=5)
    time.sleep(1.5)
    base_fds, base_rss = fds(pid), rss_mb(pid)
    threads = [threading.Thread(target=publisher)]
    threads += [threading.Thread(target=sse_cycles, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=ws_cycles, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads[1:]:
        thread.join(30)
    stop_publishing.set()
    threads[0].join(10)
    assert not problems, problems[:5]
    settled = wait_for(lambda: (lambda s: s["active_streams"] == 0 and not s["subscribers_per_channel"]
                                and not s["members_per_room"])(get_json(server.port, "/admin/stream-stats")),
                       timeout=10)
    assert settled, get_json(server.port, "/admin/stream-stats")
    time.sleep(1.0)
    drift_fds, drift_rss = fds(pid) - base_fds, rss_mb(pid) - base_rss
    print(f"soak: {SECONDS:g} s, {counts['handshake_failures']} failed handshakes, {counts['sse']} SSE cycles "
          f"({counts['events']} events checked), {counts['ws']} "
          f"WebSocket cycles, {counts['published']} published; drift: {drift_fds:+d} descriptors, "
          f"{drift_rss:+.1f} MB RSS")
    assert counts["sse"] >= 10 and counts["ws"] >= 10
    assert counts["handshake_failures"] <= max(3, counts["ws"] // 1000), counts
    assert drift_fds <= FD_TOLERANCE, f"{drift_fds} more descriptors than before"
    assert drift_rss <= RSS_TOLERANCE_MB, f"RSS grew by {drift_rss:.1f} MB"
