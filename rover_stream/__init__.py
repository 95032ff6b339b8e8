"""rover_stream: synchronous-first streaming for Flask on gunicorn + gevent.

Route authors write plain ``def`` views that return streaming responses, in their own Flask app::

    from flask import Flask
    from rover_stream import Event, RoverStream, sse_response

    app = Flask(__name__)
    streams = RoverStream(app, url_prefix="/rt")   # the hub API, rooms and /rt/health under /rt

    @app.get("/ticks")
    def ticks():
        def events():
            for n in itertools.count():
                yield Event(data={"n": n}, id=n)
                time.sleep(1)
        return sse_response(events())

``create_app()`` is the same in one line, for an app that is all rover_stream. Serve either with
``rover-stream serve --app module:app`` (gunicorn with gevent workers).

The public API is re-exported here; the packages are: ``wire`` (pure encoders and bounded parsing),
``transport`` (bodies, SSE responses, files, parked connections), ``hub`` (pub/sub and its engines),
``server`` (the gunicorn integration), ``client`` (the Python client), and the modules ``runtime`` (stream
cap, shutdown), ``body`` (request bodies), ``settings``, ``extension`` (:class:`RoverStream`).
"""

__version__ = "0.1.0.dev0"

from .app import create_app
from .auth import Keys, mint_token, require, require_admin
from .body import json_body, read_body
from .concurrency import run_blocking
from .errors import ApiError, ConfigError, EncodeError, RoverStreamError, ServiceUnavailable, StreamAborted
from .extension import RoverStream
from .hub import Hub, Message, Subscription
from .limits import check_publish_rate
from .metrics import METRICS_CHANNEL, StreamingStats, streaming_stats
from .producers import add_producer
from .runtime import get_hub, get_runtime, publish, token_keys
from .transport.event_stream import last_event_id, last_event_number, sse_response
from .transport.files import send_file, send_from_directory
from .transport.pipe import FeedEnded, PipeClosed
from .transport.streaming import StreamingResponse, StreamingWriter, csv_response, ndjson_response
from .wire.sse import Event, encode
from .wire.tabular import FLUSH

__all__ = [
    "ApiError", "ConfigError", "EncodeError", "Event", "FLUSH", "FeedEnded", "Hub", "Keys", "METRICS_CHANNEL",
    "Message", "PipeClosed", "RoverStream", "RoverStreamError", "ServiceUnavailable", "StreamAborted",
    "StreamingResponse", "StreamingStats", "StreamingWriter", "Subscription", "add_producer", "check_publish_rate",
    "create_app", "csv_response", "encode", "get_hub", "get_runtime", "json_body", "last_event_id",
    "last_event_number", "mint_token", "ndjson_response", "publish", "read_body", "require", "require_admin",
    "run_blocking", "send_file", "send_from_directory", "sse_response", "streaming_stats", "token_keys",
]
