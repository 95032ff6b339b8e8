"""The few concurrency primitives rover_stream needs, correct under gevent *and* real threads.

Under gunicorn's gevent worker the standard library is monkey-patched, so ``threading.Event`` and
``threading.Thread`` are already cooperative. What differs is what a real thread cannot do: be killed while
blocked. :func:`spawn` returns a handle whose :meth:`Task.cancel` kills a greenlet at once (raising
``GreenletExit`` where it waits, so ``finally`` blocks run) and, for a thread, leaves it to notice at its
next hand-off. Nothing here creates a lock, thread or greenlet at import time (they would not survive fork
or ``--preload``).
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def gevent_active() -> bool:
    """True when the process runs under gevent's monkey-patching (gunicorn's gevent worker)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


class Task:
    """A running producer: a greenlet under gevent, a daemon thread otherwise."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        context = contextvars.copy_context()
        self._greenlet: Any = None
        self._thread: threading.Thread | None = None
        if gevent_active():
            import gevent

            self._greenlet = gevent.spawn(context.run, target)
            self._greenlet.name = name
        else:
            self._thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
            self._thread.start()

    def cancel(self) -> None:
        """Stop the task as soon as the runtime allows: at once for a greenlet; a thread stops at its next
        hand-off to the consumer, which refuses it."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def join(self, timeout: float | None = None) -> None:
        if self._greenlet is not None:
            self._greenlet.join(timeout)
        elif self._thread is not None:
            self._thread.join(timeout)


def spawn(target: Callable[[], Any], name: str = "rover-stream-producer") -> Task:
    """Run ``target`` concurrently, with a copy of the caller's context (so ``current_app`` works)."""
    return Task(target, name)


class Timer:
    """A call scheduled by :func:`call_later`; :meth:`cancel` it when it is no longer wanted."""

    def __init__(self, delay: float, function: Callable[[], Any]) -> None:
        self._watcher: Any = None
        self._thread: threading.Timer | None = None
        if gevent_active():
            import gevent

            # A loop timer, not a greenlet per call: thousands of them cost little while they wait. The
            # callback runs in the event loop, where nothing may block: it starts a greenlet.
            self._watcher = gevent.get_hub().loop.timer(max(0.0, delay))
            self._watcher.start(gevent.spawn, function)
        else:
            self._thread = threading.Timer(max(0.0, delay), function)
            self._thread.daemon = True
            self._thread.start()

    def cancel(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        elif self._thread is not None:
            self._thread.cancel()


def call_later(delay: float, function: Callable[[], Any]) -> Timer:
    """Call ``function`` in ``delay`` seconds, in a greenlet of its own (a thread outside gevent)."""
    return Timer(delay, function)


def cooperate() -> None:
    """Under gevent, let the greenlets that are ready run before going on (nothing elsewhere).

    Publishing queues events for subscribers without ever blocking, so a publisher that is never made to
    wait -- requests arriving back to back on busy keep-alive connections, a reader handing over a batch
    from Redis -- would keep the writers of those subscribers from running until every queue had
    overflowed. Publishers call this after each event: the writers get their turn, queues stay short.
    """
    if "gevent" in sys.modules and gevent_active():
        import gevent

        gevent.sleep(0)


def run_blocking(function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy or blocking C code without stalling the event loop: in gevent's thread pool under
    gevent (every other connection keeps being served meanwhile), directly otherwise."""
    if gevent_active():
        from gevent import get_hub

        return get_hub().threadpool.apply(function, args)  # type: ignore[no-any-return]
    return function(*args)
