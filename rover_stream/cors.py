"""CORS: which other sites' pages may read our responses (``ROVER_CORS_ORIGINS``).

A browser lets a page of ``https://a.example`` read a response from us -- an EventSource stream, a fetch
of the API, a download -- only when the response names that origin in ``Access-Control-Allow-Origin``.
Requests that are not "simple" (``Authorization``, JSON bodies, ``Last-Event-ID`` from a script) are first
asked about with a preflight ``OPTIONS``.

- An origin in the list gets ``Access-Control-Allow-Origin: <origin>`` and
  ``Access-Control-Allow-Credentials: true`` (so ``EventSource(url, {withCredentials: true})`` and the
  ``rover_token`` cookie work), and can read the headers clients need (``Content-Disposition``,
  ``Retry-After``, ``X-Request-ID``...). ``*`` in the list lets every origin read, without credentials.
- Any other origin gets no CORS headers: the browser keeps the response from the page. Its preflight is
  answered 403 with a JSON body that says so.
- Requests without ``Origin`` (curl, servers, same-origin navigation) are unaffected.

WebSocket upgrades are not covered by CORS; ``ROVER_WS_ALLOWED_ORIGINS`` guards them (see rooms.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, request

from .errors import error_response

ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOWED_HEADERS = ("authorization", "content-type", "last-event-id", "x-request-id", "range", "if-range",
                   "if-none-match", "if-modified-since", "cache-control")
EXPOSED_HEADERS = ("Content-Disposition, Content-Range, Accept-Ranges, ETag, Retry-After, X-Request-ID, "
                   "Content-Length")
PREFLIGHT_MAX_AGE = "600"


def init_cors(scope: Flask | Blueprint, origins: tuple[str, ...]) -> None:
    """CORS for the requests of ``scope``: an app, or a blueprint's routes (the host app's own routes and
    its own CORS are then left alone)."""
    listed = frozenset(origins)
    anyone = "*" in listed

    def allowed(origin: str) -> bool:
        return anyone or origin in listed

    @scope.before_request
    def _preflight() -> Any:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin", "")
        if not origin or not allowed(origin):
            return error_response(403, "origin_not_allowed",
                                  f"Pages of {origin or 'this origin'} may not call this server "
                                  "(ROVER_CORS_ORIGINS).")
        asked = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
                 if h.strip()]
        refused = [h for h in asked if h not in ALLOWED_HEADERS]
        if refused:
            return error_response(403, "header_not_allowed",
                                  f"These request headers are not allowed here: {', '.join(refused)}.")
        response = current_app.response_class(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        if asked:
            response.headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response

    if not listed:
        return  # nobody may: responses do not depend on Origin (and the common case costs nothing)

    @scope.after_request
    def _allow(response: Any) -> Any:
        response.headers.add("Vary", "Origin")  # caches must not hand one origin's answer to another
        origin = request.headers.get("Origin")
        if origin and allowed(origin):
            if origin in listed:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Allow-Credentials"] = "true"
            else:
                response.headers["Access-Control-Allow-Origin"] = "*"
            if request.method != "OPTIONS":
                response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response
