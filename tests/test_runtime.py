"""The stream registry (rover_stream.runtime) on its own, and the metrics it reports to."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import rover_stream as rs
from rover_stream import runtime as runtime_module
from rover_stream.errors import ServiceUnavailable
from rover_stream.hub import create_hub
from rover_stream.runtime import StreamRuntime
from rover_stream.settings import load
from tests.wire_helpers import wait_for


class Body:
    """A stream as the runtime sees it."""

    kind = "test"

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_counted = 0
        self.log_context: dict[str, Any] = {}
        self.woken = threading.Event()
        self.forced = threading.Event()

    @property
    def duration(self) -> float:
        return 1.5

    def wake(self) -> None:
        self.woken.set()

    def force_close(self) -> None:
        self.forced.set()


class Counters:
    requests = 0
    latency = None

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def opened(self, kind: str) -> None:
        self.seen.append(("opened", kind))

    def rejected(self, reason: str) -> None:
        self.seen.append(("rejected", reason))

    def released(self, body: Any, reason: str) -> None:
        self.seen.append(("released", reason))

    def count_request(self) -> None: ...

    def sync(self) -> None: ...

    def run_sync(self, stop: threading.Event) -> None: ...


def make_runtime(**settings: Any) -> tuple[StreamRuntime, Counters]:
    loaded = load({"METRICS_INTERVAL": 0, **settings}, environ={})
    runtime = StreamRuntime(loaded, create_hub(loaded))
    counters = Counters()
    runtime.count_with(counters)
    return runtime, counters


def test_admission_up_to_the_cap_then_503_with_retry_after() -> None:
    runtime, counters = make_runtime(MAX_STREAMS=2, RETRY_MS=4000)
    first, second, third = Body(), Body(), Body()
    runtime.admit(first)
    runtime.admit(second)
    with pytest.raises(ServiceUnavailable) as refused:
        runtime.admit(third)
    assert refused.value.code == "too_many_streams" and refused.value.headers["Retry-After"] == "4"
    assert runtime.open_streams == 2 and runtime.streams_rejected == 1
    runtime.release(first, "complete")
    runtime.release(first, "complete")  # once only
    runtime.admit(third)
    assert counters.seen == [("opened", "test"), ("opened", "test"), ("rejected", "too_many_streams"),
                             ("released", "complete"), ("opened", "test")]
    assert runtime.stream_seconds == 1.5 and set(runtime.open_bodies()) == {second, third}


def test_shutdown_refuses_new_streams_wakes_the_open_ones_then_cuts_the_stragglers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "FORCE_CLOSE_AFTER", 0.05)
    runtime, counters = make_runtime()
    body = Body()
    runtime.admit(body)
    runtime.begin_shutdown()
    assert body.woken.is_set()
    assert wait_for(body.forced.is_set, 5)  # it did not end by itself
    with pytest.raises(ServiceUnavailable) as refused:
        runtime.admit(Body())
    assert refused.value.code == "shutting_down"
    assert runtime.refusal() is not None and ("rejected", "shutting_down") in counters.seen


def test_errors_are_counted_and_bytes_added_up() -> None:
    runtime, _ = make_runtime()
    body = Body()
    runtime.admit(body)
    body.bytes_sent = 1000
    assert runtime.stats()["bytes_sent"] == 1000
    runtime.release(body, "error")
    stats = runtime.stats()
    assert stats["bytes_sent"] == 1000 and stats["stream_errors"] == 1 and stats["open_streams"] == 0


def test_metrics_sync_reports_streams_and_bytes(tmp_path: Path) -> None:
    """The metrics sync moves a worker's plain counters into the Prometheus instruments that
    streaming_stats() reads."""
    app = rs.create_app({"ROVER_METRICS_INTERVAL": 0, "ROVER_DATA_DIR": str(tmp_path)})
    before = rs.streaming_stats(app)
    client = app.test_client()
    response = client.get("/realtime/news", buffered=False)
    first = bytes(next(iter(response.response)))  # type: ignore[arg-type]
    assert first.startswith(b"retry:")
    rs.get_runtime(app).metrics.sync()
    during = rs.streaming_stats(app)
    assert during.active_streams >= before.active_streams + 1
    response.close()
    rs.get_runtime(app).metrics.sync()
    after = rs.streaming_stats(app)
    assert after.streams_opened >= before.streams_opened + 1
    assert after.total_bytes_streamed > before.total_bytes_streamed
    assert after.active_streams == before.active_streams
