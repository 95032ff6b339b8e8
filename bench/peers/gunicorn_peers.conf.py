"""gunicorn configuration for the gevent peers of ``bench/fanout.py`` (``handwritten_gevent`` and ``flasksse_app``).

It mirrors the values the project's ``gunicorn.conf.py`` gives rover_stream in the benchmark (one gevent worker,
the same backlog, keep-alive, log level and access log), without importing rover_stream: the peers run in their
own virtual environment (``bench/.venv-peers``), where rover_stream is not installed.
"""

import os
import resource

workers = 1
worker_class = "gevent"
worker_connections = int(os.environ.get("BENCH_WORKER_CONNECTIONS", "12000"))
backlog = 2048
timeout = 30
graceful_timeout = 2  # the streams never end by themselves: do not wait for them
keepalive = 5

loglevel = "info"  # gunicorn logs "Listening at: http://127.0.0.1:PORT" at info; bench/fanout.py reads it
errorlog = "-"
accesslog = "-"  # one line per request, as rover_stream's gunicorn.conf.py does
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(L)ss'

proc_name = "bench-peer"
control_socket_disable = True


def on_starting(server):  # type: ignore[no-untyped-def]
    """Raise the open-file limit to its hard maximum: every subscriber holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            server.log.warning("Could not raise the open-file limit from %s: %s", soft, exc)
