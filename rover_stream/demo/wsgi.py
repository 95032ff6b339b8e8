"""Mission Control on the full server: ``gunicorn -c python:rover_stream.server.config
rover_stream.demo.wsgi:app`` (what ``rover-stream serve`` runs by default)."""

from rover_stream.demo import create_demo_app

app = create_demo_app()
