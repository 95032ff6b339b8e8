"""rover_stream's gunicorn worker: gunicorn's gevent worker, letting go of parked connections at once.

A parked SSE stream (see :mod:`rover_stream.transport.parked`) takes its connection over and answers gunicorn with
``ALREADY_HANDLED``. The stock worker then waits up to ``keepalive`` seconds for another request on that
connection, holding a greenlet and its buffers for every new stream. gunicorn's own comment on
``is_already_handled`` invites workers to raise ``StopIteration`` there instead, which ends its handling of
the connection at once; the parked stream keeps its own descriptor.

For the same reason the stock worker, which on shutdown waits for its open requests only, would exit before
parked streams have sent their final event or close frame: :meth:`Worker.run` waits for them too.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.workers.base_async import ALREADY_HANDLED
from gunicorn.workers.ggevent import GeventWorker

from ..runtime import drain_streams

#: Longest wait for parked streams to end after the server stopped (they are cut after FORCE_CLOSE_AFTER).
DRAIN_TIMEOUT = 3.0


class Worker(GeventWorker):  # type: ignore[misc]  # gunicorn ships no type information
    def init_process(self) -> None:
        # Every log record asks for its thread's name, and under gevent each greenlet that logs gets a
        # dummy Thread object made for it: a tenth of the cost of a stream's two log lines. Greenlets are
        # all one thread, so the name says nothing; records here carry none (%(threadName)s is empty).
        logging.logThreads = False
        super().init_process()

    def run(self) -> None:
        super().run()
        left = drain_streams(DRAIN_TIMEOUT)
        if left:
            self.log.warning("%d streams were still open at exit", left)

    def is_already_handled(self, respiter: Any) -> bool:
        if respiter is ALREADY_HANDLED:
            raise StopIteration()
        return False
