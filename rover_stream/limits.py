"""Rate limits that protect the server: publishing (429 with Retry-After), and room messages (close 1008,
in :mod:`rover_stream.rooms`): one token bucket for both.

Each client -- the token's subject when there is one, else its address -- may publish ``ROVER_PUBLISH_RATE``
events a second, in bursts of twice that (a token bucket). Buckets live in the worker process (a client
spread over several workers gets each worker's allowance) and the least recently used are forgotten
beyond :data:`MAX_CLIENTS`, so a flood of addresses cannot grow memory without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from flask import current_app, request

from .errors import ApiError
from .runtime import get_runtime

MAX_CLIENTS = 10_000


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class TokenBucket:
    """``rate`` actions a second, in bursts of twice that (at least one)."""

    __slots__ = ("rate", "burst", "allowance", "last")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 2)
        self.allowance = self.burst
        self.last = time.monotonic()

    def take(self, count: int = 1) -> float:
        """Take ``count`` tokens: 0 when the actions may go on, else the seconds until they may (nothing
        taken). More than a burst at once is allowed when the bucket is full, and repaid before the next."""
        now = time.monotonic()
        self.allowance = min(self.burst, self.allowance + (now - self.last) * self.rate)
        self.last = now
        needed = min(count, self.burst)
        if self.allowance >= needed:
            self.allowance -= count
            return 0.0
        return (needed - self.allowance) / self.rate


class RateLimiter:
    """A token bucket per client key; the least recently used are forgotten beyond :data:`MAX_CLIENTS`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, count: int = 1) -> float:
        """0 when ``key`` may go on (with ``count`` actions), else the seconds until it may."""
        with self._lock:
            bucket = self._buckets.pop(key, None) or TokenBucket(self.rate)
            wait = bucket.take(count)
            self._buckets[key] = bucket
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return wait


def check_publish_rate(claims: dict[str, object] | None = None, count: int = 1) -> None:
    """Raise 429 when the current client publishes faster than ``ROVER_PUBLISH_RATE`` (0: no limit); a
    batch counts each of its ``count`` events."""
    runtime = get_runtime()
    rate: float = runtime.settings["PUBLISH_RATE"]
    if not rate:
        return
    limiter: RateLimiter | None = current_app.extensions.get("rover_stream_publish_limiter")
    if limiter is None or limiter.rate != rate:
        limiter = current_app.extensions["rover_stream_publish_limiter"] = RateLimiter(rate)
    subject = claims.get("sub") if claims else None
    key = f"sub:{subject}" if isinstance(subject, str) else f"addr:{request.remote_addr}"
    wait = limiter.allow(key, count)
    if wait:
        raise TooManyRequests(f"Publishing is limited to {rate:g} events a second per client; "
                              f"retry in {wait:.2f} s.", retry_after=wait)
