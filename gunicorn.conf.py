# gunicorn configuration for rover_stream.
#
# Start it with `rover-stream serve`, or by hand:
#
#     gunicorn -c gunicorn.conf.py wsgi:app
#
# Every value below comes from a ROVER_... setting declared once in rover_stream/settings.py (see
# docs/settings.md), so the server and the app always agree; a command-line flag given to gunicorn still
# wins over this file.

import glob
import os
import resource
import shutil
import tempfile

from rover_stream import settings as _settings

_s = _settings.load()

# Metrics shared by the workers
#
#   prometheus_client's multiprocess mode: every worker writes its metrics to files in this directory and
#   whichever worker answers /metrics or /admin/stream-stats reads them all. Set here, before any worker
#   (or a preloaded app) imports prometheus_client; a fresh directory per server unless
#   PROMETHEUS_MULTIPROC_DIR is set (its old files are then removed at start).

_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rover-stream-metrics-")

# Server socket
#
#   bind - The socket to bind: 'HOST:PORT', '[IPv6]:PORT' or 'unix:PATH'. Loopback by default: put nginx
#       (deploy/) in front for the outside world.
#   backlog - Connections the kernel queues while every greenlet is busy.

bind = [_s["BIND"]]
backlog = 2048

# Worker processes
#
#   workers - Worker processes. One gevent worker serves thousands of streams; more than one needs the
#       Redis engine (ROVER_REDIS_URL) so that every worker sees every event.
#   worker_class - gunicorn's gevent worker (one greenlet per connection, and the standard library
#       monkey-patched so that plain `def` views and `time.sleep` in generators are cooperative), with one
#       change: it lets go at once of a connection that a parked SSE stream took over (see
#       rover_stream/worker.py). Plain "gevent" works too; parked connections then linger `keepalive`
#       seconds in gunicorn.
#   worker_connections - Greenlets per worker: the most simultaneous connections. rover_stream caps open
#       streams below this (ROVER_MAX_STREAMS, 90% by default) so /health and short requests always get in.
#   timeout - A worker silent for this long is killed and restarted. Streams do not count: the gevent
#       worker notifies the master from its own loop; only CPU-bound code that never yields trips it.
#   graceful_timeout - Upper bound after SIGTERM. rover_stream ends its streams at once with a final
#       event, so workers normally exit within a few seconds (see post_worker_init below).
#   keepalive - Seconds to wait for the next request on a keep-alive connection.

workers = _s["WORKERS"]
worker_class = "rover_stream.worker.Worker"
worker_connections = _s["WORKER_CONNECTIONS"]
timeout = _s["TIMEOUT"]
graceful_timeout = _s["GRACEFUL_TIMEOUT"]
keepalive = _s["KEEPALIVE"]

# Logging
#
#   loglevel - debug, info, warning, error, critical.
#   accesslog - '-' for stderr; one line per request (a stream logs when it ends).

loglevel = _s["LOG_LEVEL"]
errorlog = "-"
accesslog = "-"
# The path without its query string: tokens may travel in '?token=' (EventSource cannot send headers).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'

# Process naming and control
#
#   control_socket_disable - gunicorn 27's control socket sits at one path per user
#       (~/.gunicorn/gunicorn.ctl), so several servers on one host (tests, benchmarks, blue/green) would
#       fight over it. rover_stream does not use it.

proc_name = "rover-stream"
control_socket_disable = True

# Server hooks
#
#   on_starting - Called in the master before it forks. Refuses to serve an open hub (no ROVER_SECRET_KEY)
#       beyond loopback, and warns when it runs open on loopback. Raises the open-file limit to its hard
#       maximum: every stream holds a socket, and the usual soft limit (1024) is far below
#       worker_connections.
#
#   post_worker_init - Called in each worker after it has set up (and, for gevent, monkey-patched). Starts
#       a greenlet that watches worker.alive: on SIGTERM gunicorn only stops accepting and then waits up to
#       graceful_timeout for requests to end, which endless streams never do. The watcher tells
#       rover_stream to end every stream now (SSE streams send a final `event: shutdown` with a short
#       `retry:`), so the worker exits within a few seconds.


def on_starting(server):
    from rover_stream.auth import exposure_problem

    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)

    problem = exposure_problem(server.cfg.bind, _s["SECRET_KEY"])
    if problem:
        server.log.error(problem)
        raise SystemExit(problem)
    if not _s["SECRET_KEY"]:
        server.log.warning("ROVER_SECRET_KEY is not set: anyone who can reach %s may publish and read every "
                           "channel. Fine on loopback for development; set a secret for anything else.",
                           ", ".join(server.cfg.bind))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            server.log.warning("Could not raise the open-file limit from %s: %s", soft, exc)


def post_worker_init(worker):
    from rover_stream.lifecycle import watch_worker
    from rover_stream.logs import configure_logging
    from rover_stream.runtime import start_all_producers

    configure_logging(_s["LOG_LEVEL"], _s["LOG_FORMAT"])
    watch_worker(worker)
    start_all_producers()  # the app's producers run from the worker's start, not its first request


def worker_int(worker):
    worker.log.info("worker %s interrupted", os.getpid())


def child_exit(server, worker):
    # The dead worker's gauges (open streams, subscribers) leave the totals; its counters stay in them.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
