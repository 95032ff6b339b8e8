"""The WSGI entry point gunicorn loads (``wsgi:app``)."""

from rover_stream import create_app

app = create_app()
