# gunicorn configuration for rover_stream: the operator's copy.
#
# `rover-stream serve` runs gunicorn with the same configuration from inside the package
# (python:rover_stream.server.config), so an installed wheel needs no file of its own. This file is for
# running gunicorn by hand from a checkout, or for copying next to your own app and adjusting:
#
#     gunicorn -c gunicorn.conf.py wsgi:app
#     gunicorn -c gunicorn.conf.py yourapp:app          # your Flask app with RoverStream(app)
#
# Every value comes from a ROVER_... setting declared once in rover_stream/settings.py (see
# docs/settings.md), so the server and the app always agree. The values and hooks are imported below and
# explained after; to change one, assign it at the end of this file (`workers = 4`, `bind = [...]`), or
# give gunicorn a command-line flag, which wins over this file.

from rover_stream.server.config import *  # noqa: F403 (gunicorn reads this module's names)

# Metrics shared by the workers
#
#   prometheus_client's multiprocess mode: the imported configuration sets PROMETHEUS_MULTIPROC_DIR to a
#   fresh directory per server unless it is already set (its old files are then removed at start).

# Server socket
#
#   bind - The socket to bind: 'HOST:PORT', '[IPv6]:PORT' or 'unix:PATH'. ROVER_BIND; without it HOST and
#       PORT, as hosting platforms set them; else 127.0.0.1:8000. Loopback by default: put nginx (deploy/)
#       in front for the outside world.
#   backlog - Connections the kernel queues while every greenlet is busy.

# Worker processes
#
#   workers - Worker processes (ROVER_WORKERS, else WEB_CONCURRENCY, else 1). One gevent worker serves
#       thousands of streams; more than one needs the Redis engine (ROVER_REDIS_URL) so that every worker
#       sees every event: the server refuses to start otherwise.
#   worker_class - gunicorn's gevent worker (one greenlet per connection, and the standard library
#       monkey-patched so that plain `def` views and `time.sleep` in generators are cooperative), with one
#       change: it lets go at once of a connection that a parked SSE stream took over (see
#       rover_stream/server/worker.py). Plain "gevent" works too; parked connections then linger
#       `keepalive` seconds in gunicorn.
#   worker_connections - Greenlets per worker: the most simultaneous connections. rover_stream caps open
#       streams below this (ROVER_MAX_STREAMS, 90% by default) so /health and short requests always get in.
#   timeout - A worker silent for this long is killed and restarted. Streams do not count: the gevent
#       worker notifies the master from its own loop; only CPU-bound code that never yields trips it.
#   graceful_timeout - Upper bound after SIGTERM. rover_stream ends its streams at once with a final
#       event, so workers normally exit within a few seconds (see post_worker_init below).
#   keepalive - Seconds to wait for the next request on a keep-alive connection.

# Logging
#
#   loglevel - debug, info, warning, error, critical (ROVER_LOG_LEVEL, else LOG_LEVEL).
#   accesslog - '-' for stderr; one line per request (a stream logs when it ends). The path is logged
#       without its query string: tokens may travel in '?token=' (EventSource cannot send headers).
#   logger_class - gunicorn's logger with control characters, '"' and '\' of the access log's fields
#       written as \xNN, so that a request path cannot forge log lines.

# Process naming and control
#
#   control_socket_disable - gunicorn 27's control socket sits at one path per user
#       (~/.gunicorn/gunicorn.ctl), so several servers on one host (tests, benchmarks, blue/green) would
#       fight over it. rover_stream does not use it.

# Server hooks (imported above). To add to one, keep the imported function under another name first:
#     from rover_stream.server.config import on_starting as rover_on_starting
#     def on_starting(server):
#         rover_on_starting(server)
#         ...
#
#   on_starting - In the master before it forks. Refuses to serve an open hub (no ROVER_SECRET_KEY) beyond
#       loopback, and more than one worker without ROVER_REDIS_URL (a split hub); warns when it runs open
#       on loopback. Raises the open-file limit to its hard maximum: every stream holds a socket, and the
#       usual soft limit (1024) is far below worker_connections.
#   post_worker_init - In each worker after it has set up (and, for gevent, monkey-patched). Starts a
#       greenlet that watches worker.alive: on SIGTERM gunicorn only stops accepting and then waits up to
#       graceful_timeout for requests to end, which endless streams never do. The watcher tells
#       rover_stream to end every stream now (SSE streams send a final `event: shutdown` with a short
#       `retry:`), so the worker exits within a few seconds. Then starts the app's producers.
#   child_exit - The dead worker's gauges leave the shared metrics.
#   on_exit - Removes the metrics directory the configuration made.
