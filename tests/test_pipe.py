"""The producer/consumer pipe, with real threads (the gevent side is covered by the live tests).

No test sleeps and then counts: each waits, with a deadline, for the state it needs (a producer blocked in
``push`` shows as ``would_block(0)``: more than ``limit`` units waiting), and time limits are far from the
timeouts they tell apart, so a busy machine does not fail them.
"""

from __future__ import annotations

import threading
import time

import pytest

from rover_stream.transport.pipe import FeedEnded, Pipe, PipeClosed
from tests.wire_helpers import wait_for

#: Longest wait for another thread to reach a state; only a broken pipe makes a test wait this long.
DEADLINE = 10.0


def test_order_and_completeness_under_contention() -> None:
    pipe = Pipe(limit=16)
    count = 50_000

    def produce() -> None:
        for i in range(count):
            pipe.push(i)
        pipe.finish()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    received: list[int] = []
    with pytest.raises(FeedEnded):
        while True:
            received.extend(pipe.take(1.0) or [])
    assert received == list(range(count))
    thread.join(DEADLINE)


def test_producer_blocks_at_the_limit_until_the_consumer_takes() -> None:
    pipe = Pipe(limit=4)
    pushed: list[int] = []

    def produce() -> None:
        for i in range(10):
            pipe.push(i)
            pushed.append(i)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    # The push of 4 went over the limit: it waits for the consumer, and waits for good until it takes.
    assert wait_for(lambda: pipe.would_block(0), timeout=DEADLINE)
    assert len(pushed) == 4 and thread.is_alive()
    assert pipe.take(1.0) == [0, 1, 2, 3, 4]
    # 5..8 went in; 9 is over the limit again.
    assert wait_for(lambda: len(pushed) == 9 and pipe.would_block(0), timeout=DEADLINE), pushed
    assert thread.is_alive()
    assert pipe.take(1.0) == [5, 6, 7, 8, 9]
    thread.join(DEADLINE)
    assert len(pushed) == 10 and not thread.is_alive()


def test_take_times_out_with_none_and_wake_returns_early() -> None:
    pipe = Pipe(limit=4)
    started = time.monotonic()
    assert pipe.take(0.2) is None
    assert time.monotonic() - started >= 0.19  # it waited its timeout (a lower bound: load only adds)
    threading.Timer(0.1, pipe.wake).start()
    started = time.monotonic()
    assert pipe.take(20.0) is None
    assert time.monotonic() - started < 10.0  # woken, not timed out: the timeout is twice this


def test_byte_counting_wakes_at_a_batch_and_partial_batches_wait_for_the_timeout() -> None:
    pipe = Pipe(limit=1000, wake_at=100, count_bytes=True)
    pipe.push(b"x" * 10)
    started = time.monotonic()
    assert pipe.take(20.0) == [b"x" * 10]  # under wake_at, yet taken at once: it was already there
    assert time.monotonic() - started < 10.0  # not after the timeout


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
    assert wait_for(lambda: pipe.would_block(0), timeout=DEADLINE)  # the producer waits in push
    assert outcome == [] and thread.is_alive()
    pipe.close()
    thread.join(DEADLINE)
    assert outcome == ["closed"] and not thread.is_alive()
