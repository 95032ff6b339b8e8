"""The library's full server, without the demo: ``gunicorn -c python:rover_stream.server.config
rover_stream.server.wsgi:app`` (what ``rover-stream serve`` runs with ``ROVER_DEMO=false``)."""

from rover_stream import create_app

app = create_app()
