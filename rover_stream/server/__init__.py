"""rover_stream under gunicorn: everything the server process needs, inside the package.

- :mod:`.config` -- the gunicorn configuration (``gunicorn -c python:rover_stream.server.config``): every
  value from a ``ROVER_...`` setting, and the hooks (open-file limit, exposure and worker-count checks,
  producers started with the worker, SIGTERM turned into "end every stream now").
- :mod:`.worker` -- the gevent worker that lets go of parked connections at once and waits for them at exit.
- :mod:`.lifecycle` -- the watcher that notices a worker stopping.
- :mod:`.accesslog` -- gunicorn's logger with the access log's fields escaped.
- :mod:`.checks` -- start-up checks shared with ``rover-stream serve`` (a split hub).
- :mod:`.wsgi` -- ``app = create_app()``: the library's full server without the demo.

``rover-stream serve`` runs gunicorn with these, so an installed wheel needs no source checkout. The
checkout's top-level ``gunicorn.conf.py`` is the operator's commented copy, built on :mod:`.config`.
"""
