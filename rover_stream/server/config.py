"""The gunicorn configuration of rover_stream: ``gunicorn -c python:rover_stream.server.config APP``.

Every value comes from a ``ROVER_...`` setting declared once in :mod:`rover_stream.settings` (with the
platform conventions ``HOST``/``PORT``, ``WEB_CONCURRENCY`` and ``LOG_LEVEL`` when the ``ROVER_`` names are
unset), so the server and the app always agree; a command-line flag given to gunicorn still wins. The
checkout's ``gunicorn.conf.py`` imports this module and explains each value for operators.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import tempfile
from typing import Any

from rover_stream import settings as _settings
from rover_stream.auth import exposure_problem
from rover_stream.logs import configure_logging
from rover_stream.runtime import start_all_producers

from .checks import split_hub_problem
from .lifecycle import watch_worker

_s = _settings.load()

# prometheus_client's multiprocess mode: every worker writes its metrics to files in this directory and
# whichever worker answers /metrics or /admin/stream-stats reads them all. It must be set before any worker
# (or a preloaded app) imports prometheus_client; a fresh directory per server unless
# PROMETHEUS_MULTIPROC_DIR is set (its old files are then removed at start).
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rover-stream-metrics-")

bind = [_s["BIND"]]
backlog = 2048
workers = _s["WORKERS"]
worker_class = "rover_stream.server.worker.Worker"
worker_connections = _s["WORKER_CONNECTIONS"]
timeout = _s["TIMEOUT"]
graceful_timeout = _s["GRACEFUL_TIMEOUT"]
keepalive = _s["KEEPALIVE"]

loglevel = _s["LOG_LEVEL"]
errorlog = "-"
accesslog = "-"
# gunicorn's logger, with control characters in the access log's fields escaped: a path cannot forge lines.
logger_class = "rover_stream.server.accesslog.AccessLogger"
# The path without its query string: tokens may travel in '?token=' (EventSource cannot send headers).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'

proc_name = "rover-stream"
# gunicorn 27's control socket sits at one path per user (~/.gunicorn/gunicorn.ctl), so several servers on
# one host (tests, benchmarks, blue/green) would fight over it. rover_stream does not use it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """In the master, before it forks: refuse an open hub beyond loopback and a split hub, and raise the
    open-file limit (every stream holds a socket; the usual soft limit of 1024 is far below
    worker_connections)."""
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)
    problem = exposure_problem(server.cfg.bind, _s.checks_tokens) or split_hub_problem(server.cfg.workers,
                                                                                      _s["REDIS_URL"])
    if problem:
        server.log.error(problem)
        raise SystemExit(problem)
    if not _s.checks_tokens:
        server.log.warning("ROVER_SECRET_KEY is not set (nor a public key): anyone who can reach %s may "
                           "publish and read every channel. Fine on loopback for development; set a secret for "
                           "anything else.",
                           ", ".join(server.cfg.bind))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            server.log.warning("Could not raise the open-file limit from %s: %s", soft, exc)


def post_worker_init(worker: Any) -> None:
    """In each worker, once it has set up (and gevent has patched): the app's log lines, the shutdown
    watcher (on SIGTERM gunicorn only stops accepting and waits for requests to end, which endless streams
    never do), and the app's producers, from the worker's start rather than its first request."""
    configure_logging(_s["LOG_LEVEL"], _s["LOG_FORMAT"])
    watch_worker(worker)
    start_all_producers()


def worker_int(worker: Any) -> None:
    worker.log.info("worker %s interrupted", os.getpid())


def child_exit(server: Any, worker: Any) -> None:
    """The dead worker's gauges (open streams, subscribers) leave the totals; its counters stay in them."""
    # Imported here, not above: prometheus_client chooses its storage when first imported, which must come
    # after PROMETHEUS_MULTIPROC_DIR is set.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
