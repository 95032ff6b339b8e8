"""The producer/consumer pipe, with real threads (the gevent side is covered by the live tests)."""

from __future__ import annotations

import threading
import time

import pytest

from rover_stream.pipe import FeedEnded, Pipe, PipeClosed


def test_order_and_completeness_under_contention() -> None:
    pipe = Pipe(limit=16)
    count = 50_000

    def produce() -> None:
        for i in range(count):
            pipe.push(i)
        pipe.finish()

    threading.Thread(target=produce).start()
    received: list[int] = []
    with pytest.raises(FeedEnded):
        while True:
            received.extend(pipe.take(1.0) or [])
    assert received == list(range(count))


def test_producer_blocks_at_the_limit_until_the_consumer_takes() -> None:
    pipe = Pipe(limit=4)
    pushed: list[int] = []

    def produce() -> None:
        for i in range(10):
            pipe.push(i)
            pushed.append(i)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert len(pushed) == 4  # the push that went over the limit waits for the consumer
    assert pipe.take(1.0) == [0, 1, 2, 3, 4]
    time.sleep(0.2)
    assert len(pushed) == 9  # 5..8 went in; 9 is over the limit again
    assert pipe.take(1.0) == [5, 6, 7, 8, 9]
    thread.join(2)
    assert len(pushed) == 10


def test_take_times_out_with_none_and_wake_returns_early() -> None:
    pipe = Pipe(limit=4)
    started = time.monotonic()
    assert pipe.take(0.2) is None
    assert time.monotonic() - started >= 0.19
    threading.Timer(0.1, pipe.wake).start()
    started = time.monotonic()
    assert pipe.take(5.0) is None
    assert time.monotonic() - started < 1.0


def test_byte_counting_wakes_at_a_batch_and_partial_batches_wait_for_the_timeout() -> None:
    pipe = Pipe(limit=1000, wake_at=100, count_bytes=True)
    pipe.push(b"x" * 10)
    started = time.monotonic()
    assert pipe.take(0.3) == [b"x" * 10]  # under wake_at, yet taken at once: it was already there
    assert time.monotonic() - started < 0.1


def test_producer_error_reaches_the_consumer_after_the_data() -> None:
    pipe = Pipe(limit=4)
    pipe.push("a")
    pipe.finish(ValueError("boom"))
    assert pipe.take(1.0) == ["a"]
    with pytest.raises(ValueError, match="boom"):
        pipe.take(1.0)


def test_close_stops_a_blocked_producer() -> None:
    pipe = Pipe(limit=1)
    outcome: list[str] = []

    def produce() -> None:
        try:
            while True:
                pipe.push("x")
        except PipeClosed:
            outcome.append("closed")

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(0.1)
    pipe.close()
    thread.join(2)
    assert outcome == ["closed"]
