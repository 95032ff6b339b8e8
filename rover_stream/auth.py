"""Access tokens: JWT (HS256) signed with ``ROVER_SECRET_KEY``, carrying the channels a client may use.

Claims: ``publish`` and ``subscribe`` are lists of channel patterns (``fnmatch`` style: ``news``,
``private-team-*``, ``*``); ``exp`` is the expiry; ``sub`` names the holder. PyJWT does the signing and
checking: a well-kept library beats code of our own for anything cryptographic.

Without a secret, the server is open -- publishing and private channels need no token -- which is only
allowed on a loopback address (:func:`exposure_problem`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flask import request

from .errors import ApiError

ALGORITHM = "HS256"
COOKIE_NAME = "rover_token"
QUERY_PARAMETER = "token"


class AuthError(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, status: int = 401, code: str = "unauthorized") -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="rover_stream"'} if status == 401 else None
        super().__init__(message, status=status, code=code, headers=headers)


def mint_token(secret: str, *, publish: Iterable[str] = (), subscribe: Iterable[str] = (),
               expires_in: float = 3600, subject: str | None = None, admin: bool = False) -> str:
    """A signed token allowing ``publish`` and ``subscribe`` on the channels matching those patterns, and
    the ``/admin`` endpoints when ``admin``."""
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + int(expires_in),
                              "publish": list(publish), "subscribe": list(subscribe)}
    if subject:
        claims["sub"] = subject
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> dict[str, Any]:
    """The token's claims, or :class:`AuthError` (401) saying what is wrong with it."""
    # Imported here: PyJWT imports ssl, which must not happen in gunicorn's master before gevent patches it.
    import jwt

    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("The access token has expired.", code="token_expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("The access token's signature is not valid.", code="invalid_token") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"The access token is not valid: {exc}.", code="invalid_token") from None
    for claim in ("publish", "subscribe"):
        value = claims.get(claim, [])
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise AuthError(f"The access token's {claim!r} claim must be a list of channel patterns.",
                            code="invalid_token")
    return claims


def token_from_request() -> str | None:
    """The bearer token of the current request: ``Authorization: Bearer``, else the ``token`` query
    parameter or the ``rover_token`` cookie (EventSource cannot set headers)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.args.get(QUERY_PARAMETER) or request.cookies.get(COOKIE_NAME) or None


def allows(patterns: Sequence[str], channel: str) -> bool:
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


def _request_claims(secret: str, missing: str) -> dict[str, Any]:
    """The verified claims of the current request's token; 401 (``missing`` ...) without one."""
    token = token_from_request()
    if token is None:
        raise AuthError(f"{missing} (Authorization header, '{QUERY_PARAMETER}' query parameter or "
                        f"'{COOKIE_NAME}' cookie).", code="token_required")
    return verify_token(secret, token)


def require(secret: str | None, action: str, channels: Iterable[str]) -> dict[str, Any] | None:
    """Check the current request may ``action`` ("publish" or "subscribe") on every one of ``channels``:
    401 without a valid token, 403 when the token does not cover a channel. No secret: open."""
    channels = list(channels)
    if secret is None or not channels:
        return None
    claims = _request_claims(secret, f"A bearer token is required to {action} here")
    for channel in channels:
        if not allows(claims.get(action, []), channel):
            raise AuthError(f"The access token does not allow you to {action} on channel {channel!r}.",
                            status=403, code="forbidden")
    return claims


def require_token(secret: str | None, action: str) -> dict[str, Any] | None:
    """401 unless the current request carries a valid token (which channels it covers is checked later,
    once they are known). No secret: open."""
    if secret is None:
        return None
    return _request_claims(secret, f"A bearer token is required to {action} here")


def presented_claims(secret: str | None) -> dict[str, Any] | None:
    """The verified claims of the token the current request carries, or None (no secret, no token, or a
    token that does not verify: where no token is needed, a stale one is no reason to refuse)."""
    token = token_from_request() if secret else None
    if token is None or secret is None:
        return None
    try:
        return verify_token(secret, token)
    except AuthError:
        return None


def require_admin(secret: str | None) -> dict[str, Any] | None:
    """Check the current request carries an admin token (``rover-stream token --admin``): 401 without a
    valid token, 403 with one that is not an admin's. No secret: open."""
    if secret is None:
        return None
    claims = _request_claims(secret, "An admin token is required here")
    if claims.get("admin") is not True:
        raise AuthError("The access token is not an admin token.", status=403, code="forbidden")
    return claims


def _is_loopback(address: str) -> bool:
    if address.startswith("unix:") or address.startswith("fd://"):
        return True  # not reachable from the network by itself
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable


def exposure_problem(binds: Iterable[str], secret: str | None) -> str | None:
    """Why the server must not start (an open server bound beyond loopback), or None."""
    if secret:
        return None
    exposed = [b for b in binds if not _is_loopback(b)]
    if exposed:
        return (f"Refusing to listen on {', '.join(exposed)} without ROVER_SECRET_KEY: anyone could publish "
                "and read private channels. Set ROVER_SECRET_KEY (32+ characters) or bind to 127.0.0.1.")
    return None
