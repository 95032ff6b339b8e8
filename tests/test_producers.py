"""Producers (rs.add_producer) in a plain process (threads), and the library without its demo."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import rover_stream as rs


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def bare_app(tmp_path: Any) -> Any:
    return rs.create_app({"ROVER_DEMO": False, "ROVER_DATA_DIR": str(tmp_path)})


def test_a_producer_publishes_until_stopped(bare_app: Any) -> None:
    stopped = threading.Event()

    def run(stop: threading.Event) -> None:
        n = 0
        while not stop.wait(0.01):
            rs.get_hub(bare_app).publish("ticks", n)
            n += 1
        stopped.set()

    producer = rs.add_producer(bare_app, "ticker", run)
    assert producer.state == "stopped" and not rs.get_hub(bare_app).history("ticks")
    bare_app.test_client().get("/health")  # outside gunicorn, producers start with the first request
    assert wait_until(lambda: len(rs.get_hub(bare_app).history("ticks")) >= 3)
    assert bare_app.test_client().get("/health").json["producers"]["ticker"] == "running"
    producer.stop()
    assert stopped.wait(2) and producer.state == "stopped"


def test_a_failing_producer_is_reported_and_restarted(bare_app: Any, monkeypatch: Any) -> None:
    from rover_stream import producers

    monkeypatch.setattr(producers, "RESTART_AFTER", 0.1)
    calls = []

    def run(stop: threading.Event) -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("sensor offline")
        stop.wait()

    producer = rs.add_producer(bare_app, "flaky", run)
    rs.get_runtime(bare_app).start_producers()
    assert wait_until(lambda: producer.state == "failed")
    assert producer.status()["error"] == "RuntimeError: sensor offline"
    assert wait_until(lambda: len(calls) >= 3 and producer.state == "running", timeout=10)
    producer.stop()


def test_producers_registered_late_start_at_once_and_names_are_unique(bare_app: Any) -> None:
    rs.get_runtime(bare_app).start_producers()
    started = threading.Event()

    def late(stop: threading.Event) -> None:
        started.set()
        stop.wait()

    producer = rs.add_producer(bare_app, "late", late)
    assert started.wait(2)
    with pytest.raises(ValueError, match="already registered"):
        rs.add_producer(bare_app, "late", lambda stop: None)
    with pytest.raises(ValueError, match="scope"):
        rs.add_producer(bare_app, "odd", lambda stop: None, scope="galaxy")
    producer.stop()


def test_shutdown_stops_producers(bare_app: Any) -> None:
    stopped = threading.Event()

    def bye(stop: threading.Event) -> None:
        stop.wait()
        stopped.set()

    rs.add_producer(bare_app, "bye", bye)
    runtime = rs.get_runtime(bare_app)
    runtime.start_producers()
    runtime.begin_shutdown()
    assert stopped.wait(3)


def test_the_library_works_without_its_demo() -> None:
    """Deleting rover_stream/demo must not break the library: here it cannot be imported at all."""
    script = """
import sys
sys.modules["rover_stream.demo"] = None  # as if the package were deleted
import rover_stream as rs
app = rs.create_app({"ROVER_DEMO": False})
client = app.test_client()
assert client.get("/health").json["status"] == "healthy"
assert client.get("/").status_code == 404
answer = client.post("/api/broadcast", json={"channel": "news", "data": 1})
assert answer.status_code == 200, answer.json
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
