"""The bounded hand-off between a producer and the response body that writes to the socket.

A *feed* is anything the body can wait on for its next bytes: :meth:`Feed.take` returns the chunks that are
ready, or ``None`` when nothing arrived within the timeout (the SSE body then sends a heartbeat), and raises
:class:`FeedEnded` when the producer is done (or re-raises the producer's error). A :class:`Pipe` is the feed
behind a producer that runs in its own greenlet or thread: the route author's generator, a writer function,
rows being turned into CSV. The hub's subscriptions are feeds too, with no producer task at all.

The pipe is lock-free: the producer appends to a deque and counts what it produced, the consumer pops and
counts what it consumed, each counter written by one side only. Two events carry the wake-ups: *ready* (the
consumer has something to take) and *space* (the producer may go on). When more than ``limit`` units are
waiting, :meth:`Pipe.push` blocks: a slow client slows its producer, and memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Protocol


class FeedEnded(Exception):
    """The producer has finished; the body should end the response normally."""


class PipeClosed(Exception):
    """Raised in the producer when the consumer has gone away (client disconnected, server shutting down)."""


class Feed(Protocol):
    def take(self, timeout: float) -> list[Any] | None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


_DONE = object()


class Pipe:
    """A bounded, batching producer-to-consumer hand-off.

    ``limit`` is the most units that may wait: items, or with ``count_bytes`` the ``len()`` of the items
    (bytes or str). The producer wakes the consumer once ``wake_at`` units are waiting; the consumer also
    takes whatever is there when its ``take`` timeout expires, so a partial batch waits no longer than that.
    """

    def __init__(self, limit: int, wake_at: int = 1, count_bytes: bool = False) -> None:
        self._items: deque[Any] = deque()
        self._produced = 0  # written by the producer only
        self._consumed = 0  # written by the consumer only
        self._limit = limit
        self._wake_at = wake_at
        self._count_bytes = count_bytes
        self._ready = threading.Event()
        self._space = threading.Event()
        self._end: Any = None  # _DONE, or the producer's exception
        self._woken = False
        self.closed = False

    # -- producer side ---------------------------------------------------------------------------------------

    def push(self, item: Any) -> None:
        """Hand ``item`` to the consumer; blocks while the pipe is over its limit."""
        if self.closed:
            raise PipeClosed
        self._items.append(item)
        self._produced += len(item) if self._count_bytes else 1
        waiting = self._produced - self._consumed
        if waiting >= self._wake_at:
            self._ready.set()
            while waiting > self._limit:
                self._space.wait()
                self._space.clear()
                if self.closed:
                    raise PipeClosed
                waiting = self._produced - self._consumed

    def would_block(self, size: int) -> bool:
        """True if pushing ``size`` more units now would block until the consumer takes some."""
        return self._produced - self._consumed + size > self._limit

    def flush(self) -> None:
        """Wake the consumer now, whatever is waiting."""
        self._ready.set()

    def finish(self, error: BaseException | None = None) -> None:
        """The producer is done: the consumer takes what is left, then gets FeedEnded or ``error``."""
        self._end = error if error is not None else _DONE
        self._ready.set()

    # -- consumer side ---------------------------------------------------------------------------------------

    def take(self, timeout: float) -> list[Any] | None:
        deadline = 0.0
        while True:
            end = self._end  # read before the items: a push and finish between the two reads lose nothing
            if self._items:
                items = self._items
                taken = [items.popleft() for _ in range(len(items))]
                self._consumed += sum(map(len, taken)) if self._count_bytes else len(taken)
                self._space.set()
                return taken
            if end is not None:
                if end is _DONE:
                    raise FeedEnded
                raise end
            if self._woken:
                self._woken = False
                return None
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            elif now >= deadline:
                return None
            # Clear, then look again before waiting, so that a push between the two is never missed.
            self._ready.clear()
            if not (self._items or self._end is not None or self._woken):
                self._ready.wait(deadline - now)

    def wake(self) -> None:
        """Make a waiting :meth:`take` return now, with ``None`` if nothing is ready (used on shutdown)."""
        self._woken = True
        self._ready.set()

    def close(self) -> None:
        """The consumer is gone: the producer's next push raises PipeClosed."""
        self.closed = True
        self._space.set()
