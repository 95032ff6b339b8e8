"""The browser client, ``rover-stream.js``, served at ``/rover-stream.js``.

One ES module shipped inside the package (``rover_stream/js/``), mounted with the extension's other routes,
under its ``url_prefix``: the module finds ``/realtime`` and ``/ws/comms`` next to where it was loaded from.
Pages import it as is (``import { subscribe } from "/rover-stream.js"``): no build step, no CDN. See
docs/js-client.md.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from flask import Blueprint, Response, request
from werkzeug.wrappers import Response as BaseResponse

browser = Blueprint("browser", __name__)

FILENAME = "rover-stream.js"
#: The URL carries no version, so browsers revalidate it on every use: a 304 with its ETag is a few bytes.
CACHE_CONTROL = "no-cache"


@lru_cache(maxsize=1)
def library() -> tuple[bytes, str]:
    """The module's bytes and their ETag (a hash of the content: the same on every worker and host)."""
    source = resources.files(__package__).joinpath("js").joinpath(FILENAME).read_bytes()
    return source, hashlib.sha256(source).hexdigest()[:32]


@browser.get("/" + FILENAME)
def client_library() -> BaseResponse:
    body, etag = library()
    response = Response(body, content_type="text/javascript; charset=utf-8")
    response.set_etag(etag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response.make_conditional(request)
