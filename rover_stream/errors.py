"""The package's exceptions, and the one JSON shape every HTTP error takes.

Every error body is ``{"error": CODE, "message": SENTENCE, "status": HTTP_STATUS}``, where ``CODE`` is a
stable snake_case name clients may switch on and ``message`` is a sentence for people.
"""

from __future__ import annotations

import errno
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException


class RoverStreamError(Exception):
    """Base class of every exception rover_stream raises on purpose."""


class ConfigError(RoverStreamError):
    """A setting has a value that is not allowed; the message names the setting, the value and what is
    allowed."""


class EncodeError(RoverStreamError, ValueError):
    """A route author asked for an event that cannot be encoded faithfully (a newline in an id, say)."""


class StreamAborted(RoverStreamError):
    """Raised from a response body when its producer failed mid-stream. The server then closes the
    connection without the final chunk, so the client sees a failed transfer rather than a short, complete
    looking one."""


class ApiError(RoverStreamError):
    """An error answered to the client as JSON with an HTTP status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.headers)


class ServiceUnavailable(ApiError):
    """The server cannot take this request now (stream cap reached, shutting down); try again later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(ApiError):
    """The server's disk is full (ENOSPC, EDQUOT): the request needed to write and could not."""

    status = 507
    code = "insufficient_storage"

    def __init__(self, message: str, *, retry_after: int = 60) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


#: The errno values that mean "the disk is full" (no space, quota exceeded).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error=code, message=message, status=status)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(scope: Flask | Blueprint) -> None:
    """Answer every error of ``scope`` (an app, or a blueprint's routes), ours and Werkzeug's, with the
    JSON shape above."""

    @scope.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return exc.to_response()

    @scope.errorhandler(OSError)
    def _os_error(exc: OSError) -> Any:
        if exc.errno in DISK_FULL:
            current_app.logger.error("disk full while answering a request: %s", exc)
            return InsufficientStorage("The server's disk is full: it could not write what this request "
                                       "needs. Nothing was changed; try again later.").to_response()
        current_app.logger.exception("unexpected error")
        return error_response(500, "internal_server_error", "The server met an unexpected error.")

    @scope.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        response = error_response(status, _http_code(exc), exc.description or exc.name or "Error")
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
