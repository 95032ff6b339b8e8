"""Graceful shutdown under gunicorn.

On SIGTERM gunicorn's gevent worker sets ``worker.alive = False``, stops accepting, and waits up to
``graceful_timeout`` for open requests to finish -- which endless streams never do; they are then cut
without their ``finally`` running. :func:`watch_worker`, called from ``post_worker_init``
(:mod:`rover_stream.server.config`), starts a watcher (a greenlet under gevent) that notices
``alive`` turning false and calls :func:`rover_stream.runtime.request_shutdown`: every open stream then
ends at once, SSE streams with a final ``shutdown`` event carrying a short ``retry:``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..runtime import request_shutdown

#: How often the watcher looks at ``worker.alive``: the delay between SIGTERM and the streams ending.
WATCH_INTERVAL = 0.1


def watch_worker(worker: Any) -> threading.Thread:
    def watch() -> None:
        while worker.alive:
            time.sleep(WATCH_INTERVAL)
        worker.log.info("Worker stopping: ending open streams")
        request_shutdown()

    watcher = threading.Thread(target=watch, name="rover-stream-shutdown-watcher", daemon=True)
    watcher.start()
    return watcher
