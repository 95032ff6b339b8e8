"""Access tokens over their life, against a real gunicorn (gevent worker): a stream or room member let in
by a token is ended when the token expires (``event: token-expired``; WebSocket close code 4401) and comes
back with a new one losing nothing; tokens signed by another service's private key (RS256 with a PEM public
key, ES256 from a JWKS file, rotated while the server runs) are accepted, forgeries are not. Keys are made
at run time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import simple_websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rover_stream import ConfigError, mint_token
from rover_stream import settings as settings_module
from tests.wire_helpers import Publisher, SSEReader, request, wait_for, ws_client_class

pytestmark = pytest.mark.live

SECRET = "token-lifecycle-secret-of-at-least-32-chars"


def sse(port: int, path: str, token: str | None = None, last_event_id: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return request(port, path, headers, timeout=10)


def subscribed(port: int, path: str, token: str, last_event_id: str | None = None) -> SSEReader:
    response = sse(port, path, token, last_event_id)
    assert response.status == 200, response.buffer[:300]
    reader = SSEReader(response)
    reader.until(b"\n\nid: ")
    return reader


def refused(port: int, path: str, token: str) -> dict[str, Any]:
    response = sse(port, path, token)
    try:
        assert response.status == 401, (response.status, response.buffer[:300])
        return json.loads(response.body())  # type: ignore[no-any-return]
    finally:
        response.close()


def test_a_stream_ends_when_its_token_expires_and_resumes_with_a_new_one(live_server: Any) -> None:
    server = live_server(env={"ROVER_SECRET_KEY": SECRET, "ROVER_HEARTBEAT_INTERVAL": "0.5"})
    publish = Publisher(server.port, token=mint_token(SECRET, publish=["*"]))
    short = mint_token(SECRET, subscribe=["private-*"], expires_in=3)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    reader = subscribed(server.port, "/realtime/private-ops", short)
    try:
        first = [publish("private-ops", {"n": n})["id"] for n in range(3)]
        assert [e.last_event_id for e in reader.events(3)] == first
        # The stream ends at the expiry (exp is whole seconds: within one second of the token's last one).
        raw = reader.until(b"event: token-expired", timeout=6)
        ended_at = time.time()
        assert expires - 0.1 <= ended_at <= expires + 1.5, (expires, ended_at)
        last = reader.dispatched[-1]
        assert last.event == "token-expired"
        assert json.loads(last.data) == {"reason": "token-expired", "expired_at": expires}
        assert reader.response.read_chunk(timeout=3) == b"", "the stream goes on after token-expired"
        assert raw.count(b"event: token-expired") == 1
    finally:
        reader.response.close()
    # What was published meanwhile is not lost: the old token is refused, a new one resumes exactly.
    missed = [publish("private-ops", {"n": n})["id"] for n in range(3, 6)]
    assert refused(server.port, "/realtime/private-ops", short)["error"] == "token_expired"
    fresh = mint_token(SECRET, subscribe=["private-*"], expires_in=60)
    again = subscribed(server.port, "/realtime/private-ops", fresh, last_event_id=first[-1])
    try:
        again.until(f"id: {missed[-1]}\n".encode())
        assert [e.last_event_id for e in again.dispatched if e.data] == missed
    finally:
        again.response.close()
        publish.close()


def test_a_public_stream_is_not_ended_by_a_token_it_did_not_need(live_server: Any) -> None:
    server = live_server(env={"ROVER_SECRET_KEY": SECRET, "ROVER_HEARTBEAT_INTERVAL": "0.5"})
    short = mint_token(SECRET, subscribe=["*"], expires_in=1)
    reader = subscribed(server.port, "/realtime/news", short)
    try:
        time.sleep(2.5)
        publish = Publisher(server.port, token=mint_token(SECRET, publish=["*"]))
        sent = publish("news", "still here")["id"]
        publish.close()
        assert reader.events(1)[0].last_event_id == sent
        assert b"token-expired" not in reader.raw
    finally:
        reader.response.close()


def test_a_room_member_is_closed_with_4401_when_its_token_expires(live_server: Any) -> None:
    server = live_server(env={"ROVER_SECRET_KEY": SECRET})
    client_class = ws_client_class()
    short = mint_token(SECRET, subscribe=["private-crew"], subject="ada", expires_in=3)
    lasting = mint_token(SECRET, subscribe=["private-crew"], subject="grace", expires_in=60)
    url = f"ws://127.0.0.1:{server.port}/ws/comms/private-crew?token="
    ada = client_class.connect(url + short)
    grace = client_class.connect(url + lasting)
    try:
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + 8
        while ada.connected and time.monotonic() < deadline:
            try:
                raw = ada.receive(0.2)
            except simple_websocket.ConnectionClosed:
                break
            if raw is not None:
                frames.append(json.loads(raw))
        assert ada.close_reason == 4401, (ada.close_reason, frames)
        assert frames[-1]["type"] == "error" and frames[-1]["error"] == "token_expired", frames
        # The room goes on for the member whose token is still good, and it sees ada leave.
        assert wait_for(lambda: any(json.loads(f).get("type") == "leave"
                                    for f in iter(lambda: grace.receive(0.2), None)), timeout=5)
        grace.send(json.dumps({"text": "still here"}))
        while True:
            frame = json.loads(grace.receive(5) or "{}")
            assert frame, "no echo for the member whose token is good"
            if frame.get("type") == "message":
                assert frame["text"] == "still here" and frame["user"] == "grace"
                break
    finally:
        for client in (ada, grace):
            if client.connected:
                client.close()
            client.sock.close()  # a connection the server closed leaves its socket to us


# -- tokens signed by another service ---------------------------------------------------------------------------


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iat": now, "exp": now + 60, "subscribe": ["private-*"], "publish": ["private-*"], **extra}


def test_rs256_tokens_from_a_public_key_file(live_server: Any, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "auth.pub.pem"
    public.write_bytes(_pem(key.public_key()))
    server = live_server(env={"ROVER_JWT_PUBLIC_KEY": str(public)})  # no shared secret at all
    good = jwt.encode(_claims(), key, algorithm="RS256")
    reader = subscribed(server.port, "/realtime/private-keys", good)
    publish = Publisher(server.port, token=good)
    try:
        published = publish("private-keys", {"signed": "RS256"})
        assert reader.events(1)[0].last_event_id == published["id"]
    finally:
        reader.response.close()
        publish.close()
    # Signed by another key; the HS256 "key confusion" forgery (the public key used as a shared secret);
    # an unsigned token; an HS256 token when the server has no secret: all refused.
    forged = [jwt.encode(_claims(), other, algorithm="RS256"),
              _hs256_with_key_text(_claims(), public.read_bytes()),
              jwt.encode(_claims(), "", algorithm="none"),
              mint_token(SECRET, subscribe=["*"])]
    for token in forged:
        assert refused(server.port, "/realtime/private-keys", token)["error"] == "invalid_token"
    # Without any token, a private channel still needs one.
    response = sse(server.port, "/realtime/private-keys")
    assert response.status == 401
    response.close()


def _hs256_with_key_text(claims: dict[str, Any], secret: bytes) -> str:
    """A token signed with HMAC keyed by the public key's PEM text (PyJWT refuses to make one)."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": "ES256", "use": "sig"}


def test_es256_tokens_from_a_jwks_file_rotated_while_running(live_server: Any, tmp_path: Path) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(first, "k1")]}))
    server = live_server(env={"ROVER_JWKS_FILE": str(jwks), "ROVER_SECRET_KEY": SECRET})

    def token(key: Any, kid: str) -> str:
        return jwt.encode(_claims(), key, algorithm="ES256", headers={"kid": kid})

    old = token(first, "k1")
    reader = subscribed(server.port, "/realtime/private-jwks", old)
    reader.response.close()
    # HS256 tokens still work beside the JWKS (both are set).
    hs = mint_token(SECRET, subscribe=["private-*"])
    subscribed(server.port, "/realtime/private-jwks", hs).response.close()
    # A key the server does not have yet is refused; once the file holds it, it is taken (no restart).
    new = token(second, "k2")
    assert refused(server.port, "/realtime/private-jwks", new)["error"] == "invalid_token"
    jwks.write_text(json.dumps({"keys": [_jwk(second, "k2")]}))

    def takes(candidate: str) -> bool:
        response = sse(server.port, "/realtime/private-jwks", candidate)
        response.close()
        return response.status == 200

    assert wait_for(lambda: takes(new), timeout=5), "the rotated key was not picked up"
    assert refused(server.port, "/realtime/private-jwks", old)["error"] == "invalid_token"  # k1 is gone
    # A token signed by the new key but naming the old kid is refused too.
    assert refused(server.port, "/realtime/private-jwks", token(second, "k1"))["error"] == "invalid_token"


def test_key_settings_are_checked_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="ROVER_JWT_PUBLIC_KEY"):
        settings_module.load({"JWT_PUBLIC_KEY": str(missing)}, environ={})
    not_jwks = tmp_path / "keys.json"
    not_jwks.write_text('{"keys": []}')
    with pytest.raises(ConfigError, match="ROVER_JWKS_FILE"):
        settings_module.load({"JWKS_FILE": str(not_jwks)}, environ={})
    public = tmp_path / "ok.pem"
    public.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    loaded = settings_module.load({"JWT_PUBLIC_KEY": str(public)}, environ={})
    assert loaded.checks_tokens and not settings_module.load({}, environ={}).checks_tokens
