"""The WSGI entry point of a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Mission Control on the full server, or the server alone with ``ROVER_DEMO=false``.
"""

from rover_stream import create_app, settings

if settings.load()["DEMO"]:
    from rover_stream.demo import create_demo_app

    app = create_demo_app()
else:
    app = create_app()
