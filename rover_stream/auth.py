"""Access tokens: JWTs carrying the channels a client may use.

Claims: ``publish`` and ``subscribe`` are lists of channel patterns (``fnmatch`` style: ``news``,
``private-team-*``, ``*``); ``exp`` is the expiry; ``sub`` names the holder; ``admin`` opens the operations
endpoints. PyJWT does the signing and checking: a well-kept library beats code of our own for anything
cryptographic.

Tokens are checked with :class:`Keys`: the shared ``ROVER_SECRET_KEY`` (HS256, what ``rover-stream token``
signs with), and/or public keys of another service that signs with its private key (RS256, ES256...):
a PEM file (``ROVER_JWT_PUBLIC_KEY``) or a JWKS file (``ROVER_JWKS_FILE``, whose key is picked by the
token's ``kid``). A token is checked with the kind of key its algorithm names, never another (an RS256
public key is never taken for an HS256 secret).

A token is good until its ``exp``: a stream or room member it let in is ended then (``event:
token-expired``, WebSocket close code 4401), and the client comes back with a new one.

Without any key, the server is open -- publishing and private channels need no token -- which is only
allowed on a loopback address (:func:`exposure_problem`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flask import request

from .errors import ApiError

ALGORITHM = "HS256"
COOKIE_NAME = "rover_token"
QUERY_PARAMETER = "token"
#: How often, at most, the JWKS file is looked at for a change.
JWKS_RECHECK = 1.0
#: The algorithms a public key may check, by key type: what the token's header names must be one of them.
_RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_EC_ALGORITHMS = {"secp256r1": ["ES256"], "secp384r1": ["ES384"], "secp521r1": ["ES512"]}


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


class Keys:
    """What access tokens are checked with: a shared secret (HS256), a PEM public key, a JWKS file. False
    when there is none (the server is open). Public keys are read at their first use, in the worker."""

    def __init__(self, secret: str | None = None, *, public_key_file: str | None = None,
                 jwks_file: str | None = None, audience: str | None = None) -> None:
        self.secret = secret
        self.public_key_file = public_key_file
        self.jwks_file = jwks_file
        self.audience = audience
        self._public: tuple[Any, list[str]] | None = None
        self._jwks: dict[str, Any] = {}
        self._jwks_stamp: tuple[float, int] | None = None
        self._jwks_checked = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> Keys:
        return cls(settings["SECRET_KEY"], public_key_file=settings["JWT_PUBLIC_KEY"],
                   jwks_file=settings["JWKS_FILE"], audience=settings["JWT_AUDIENCE"])

    def __bool__(self) -> bool:
        return bool(self.secret or self.public_key_file or self.jwks_file)

    def key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key that checks ``token`` and the algorithms it may be signed with, chosen by the token's
        header; :class:`AuthError` when no key of this server fits it."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"The access token is not valid: {exc}.", code="invalid_token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise AuthError("The access token is not signed.", code="invalid_token")
        if algorithm.startswith("HS"):
            if self.secret is None:
                raise AuthError("This server does not take tokens signed with a shared secret (HS256).",
                                code="invalid_token")
            return self.secret, [ALGORITHM]
        kid = header.get("kid")
        if self.jwks_file is not None:
            keys = self._jwks_keys()
            if isinstance(kid, str) and kid in keys:
                key = keys[kid]
                return key, [key.algorithm_name]
            if kid is None and len(keys) == 1 and self.public_key_file is None:
                key = next(iter(keys.values()))
                return key, [key.algorithm_name]
        if self.public_key_file is not None:
            return self._public_key()
        if self.jwks_file is not None:
            raise AuthError(f"No key of this server's JWKS has the token's key id {kid!r}.", code="invalid_token")
        raise AuthError(f"This server does not take tokens signed with {algorithm}.", code="invalid_token")

    def _public_key(self) -> tuple[Any, list[str]]:
        if self._public is None:
            from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            assert self.public_key_file is not None
            with open(self.public_key_file, "rb") as file:
                key = load_pem_public_key(file.read())
            if isinstance(key, rsa.RSAPublicKey):
                algorithms = _RSA_ALGORITHMS
            elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
                algorithms = _EC_ALGORITHMS[key.curve.name]
            elif isinstance(key, ed25519.Ed25519PublicKey):
                algorithms = ["EdDSA"]
            else:
                raise AuthError("The server's public key is of a kind it cannot check tokens with.", status=500,
                                code="bad_key")
            self._public = (key, algorithms)
        return self._public

    def _jwks_keys(self) -> dict[str, Any]:
        """The JWKS file's keys by kid, read again when the file changed (looked at once a second)."""
        import jwt

        now = time.monotonic()
        if self._jwks_stamp is not None and now - self._jwks_checked < JWKS_RECHECK:
            return self._jwks
        self._jwks_checked = now
        assert self.jwks_file is not None
        try:
            info = os.stat(self.jwks_file)
            stamp = (info.st_mtime, info.st_size)
            if stamp != self._jwks_stamp:
                with open(self.jwks_file, encoding="utf-8") as file:
                    keyset = jwt.PyJWKSet.from_dict(json.load(file))
                self._jwks = {key.key_id or f"#{n}": key for n, key in enumerate(keyset.keys)}
                self._jwks_stamp = stamp
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            # Keep the keys last read: a file half rewritten must not lock every client out.
            if self._jwks_stamp is None:
                raise AuthError(f"The server's JWKS file cannot be read: {exc}.", status=500,
                                code="bad_key") from None
        return self._jwks


def verify_token(keys: Keys | str, token: str) -> dict[str, Any]:
    """The token's claims, or :class:`AuthError` (401) saying what is wrong with it. ``keys`` may be the
    shared secret itself."""
    # Imported here: PyJWT imports ssl, which must not happen in gunicorn's master before gevent patches it.
    import jwt

    if isinstance(keys, str):
        keys = Keys(keys)
    key, algorithms = keys.key_for(token)
    try:
        claims = jwt.decode(token, key, algorithms=algorithms, audience=keys.audience,
                            options={"require": ["exp"], "verify_aud": keys.audience is not None})
    except jwt.ExpiredSignatureError:
        raise AuthError("The access token has expired.", code="token_expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("The access token's signature is not valid.", code="invalid_token") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"The access token's algorithm is not one of {', '.join(algorithms)}, which its key "
                        "checks.", code="invalid_token") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"The access token is not valid: {exc}.", code="invalid_token") from None
    for claim in ("publish", "subscribe"):
        value = claims.get(claim, [])
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise AuthError(f"The access token's {claim!r} claim must be a list of channel patterns.",
                            code="invalid_token")
    return claims


def expiry_of(claims: dict[str, Any] | None) -> float | None:
    """When the token these claims came from expires (time.time()), or None (no token)."""
    if not claims:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


def token_from_request() -> str | None:
    """The bearer token of the current request: ``Authorization: Bearer``, else the ``token`` query
    parameter or the ``rover_token`` cookie (EventSource cannot set headers)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.args.get(QUERY_PARAMETER) or request.cookies.get(COOKIE_NAME) or None


def allows(patterns: Sequence[str], channel: str) -> bool:
    """Whether a claim of ``patterns`` covers ``channel``; or, for a pattern subscription (``sensors.*``),
    every channel it can match: a claim covers it when it matches the pattern read literally, and only a
    claim without ``?`` and ``[...]`` can (``sensors.?`` matches the text ``sensors.*`` but not
    ``sensors.temp``)."""
    if "*" in channel:
        patterns = [p for p in patterns if "?" not in p and "[" not in p]
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


def _request_claims(secret: Keys | str, missing: str) -> dict[str, Any]:
    """The verified claims of the current request's token; 401 (``missing`` ...) without one."""
    token = token_from_request()
    if token is None:
        raise AuthError(f"{missing} (Authorization header, '{QUERY_PARAMETER}' query parameter or "
                        f"'{COOKIE_NAME}' cookie).", code="token_required")
    return verify_token(secret, token)


def require(secret: Keys | str | None, action: str, channels: Iterable[str]) -> dict[str, Any] | None:
    """Check the current request may ``action`` ("publish" or "subscribe") on every one of ``channels``:
    401 without a valid token, 403 when the token does not cover a channel. No secret: open."""
    channels = list(channels)
    if not secret or not channels:
        return None
    claims = _request_claims(secret, f"A bearer token is required to {action} here")
    for channel in channels:
        if not allows(claims.get(action, []), channel):
            raise AuthError(f"The access token does not allow you to {action} on channel {channel!r}.",
                            status=403, code="forbidden")
    return claims


def require_token(secret: Keys | str | None, action: str) -> dict[str, Any] | None:
    """401 unless the current request carries a valid token (which channels it covers is checked later,
    once they are known). No secret: open."""
    if not secret:
        return None
    return _request_claims(secret, f"A bearer token is required to {action} here")


def presented_claims(secret: Keys | str | None) -> dict[str, Any] | None:
    """The verified claims of the token the current request carries, or None (no secret, no token, or a
    token that does not verify: where no token is needed, a stale one is no reason to refuse)."""
    token = token_from_request() if secret else None
    if token is None or not secret:
        return None
    try:
        return verify_token(secret, token)
    except AuthError:
        return None


def require_admin(secret: Keys | str | None) -> dict[str, Any] | None:
    """Check the current request carries an admin token (``rover-stream token --admin``): 401 without a
    valid token, 403 with one that is not an admin's. No secret: open."""
    if not secret:
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


def exposure_problem(binds: Iterable[str], secret: Any) -> str | None:
    """Why the server must not start (an open server bound beyond loopback), or None. ``secret`` is
    whatever checks tokens (a secret, :class:`Keys`): anything true."""
    if secret:
        return None
    exposed = [b for b in binds if not _is_loopback(b)]
    if exposed:
        return (f"Refusing to listen on {', '.join(exposed)} without ROVER_SECRET_KEY: anyone could publish "
                "and read private channels. Set ROVER_SECRET_KEY (32+ characters), ROVER_JWT_PUBLIC_KEY or "
                "ROVER_JWKS_FILE, or bind to 127.0.0.1.")
    return None
