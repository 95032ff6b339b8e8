"""The HTTP API of the hub: subscribe over SSE, publish with a JSON POST.

- ``GET /realtime/<channel>``: one channel. ``GET /realtime?channel=a&channel=b`` (or ``channels=a,b``):
  several on one connection (browsers allow six connections per origin); each event's data is then
  ``{"channel": ..., "data": ...}`` and its id a cursor over all of them.
- ``POST /api/broadcast``: ``{"channel": "...", "event": "...", "data": <any JSON>}``; or the SSE API's
  ``{"message": "...", "timestamp": "..."}``, published whole on ``ROVER_DEFAULT_CHANNEL``. Answers
  ``{"id": ..., "channel": ..., "subscribers": N}``. A JSON array of such objects (at most
  ``ROVER_MAX_BATCH``) is a batch: every event is checked first (nothing is published if one is refused:
  the error names its ``index``), then they are published in order, and the answer is
  ``{"events": [{"id", "channel", "subscribers"}, ...]}``.

- ``GET /api/channels/<channel>`` (or ``?channel=a&channel=b``): subscribers across workers and hosts,
  last id, history length and time span.

Bad input is refused before anything is published: 415 for a body that is not ``application/json``, 413
beyond ``ROVER_MAX_BODY_BYTES``, 400 for invalid JSON, a missing or unknown field, or a bad channel or
event name.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from .auth import Keys, allows, expiry_of, presented_claims, require, require_token
from .body import json_body
from .errors import ApiError, EncodeError
from .hub import validate_channel
from .hub.names import guarded_name, guarded_names, is_pattern, validate_pattern
from .limits import check_publish_rate
from .runtime import get_runtime
from .transport.event_stream import last_event_id, sse_response
from .wire.sse import encode

api = Blueprint("api", __name__)

BROADCAST_FIELDS = frozenset(("channel", "event", "data"))
SEED_FIELDS = frozenset(("message", "timestamp"))


def _secret() -> Keys:
    return get_runtime().keys


@api.get("/realtime/<channel>")
@api.get("/realtime")
def realtime(channel: str | None = None) -> Any:
    if channel is not None:
        names = [channel]
    else:
        names = request.args.getlist("channel")
        for group in request.args.getlist("channels"):
            names.extend(part for part in group.split(",") if part)
        if not names:
            raise ApiError("Name the channels: /realtime/<channel>, or /realtime?channel=a&channel=b.",
                           code="invalid_channel")
    for name in names:
        if is_pattern(name):
            validate_pattern(name)
        else:
            validate_channel(name)
    keys = _secret()
    claims = require(keys, "subscribe", guarded_names(names))
    hub = get_runtime().hub
    subscription = hub.subscribe(names, last_event_id=last_event_id(), may_read=_reader(keys, claims, names))
    expires = expiry_of(claims)
    if expires is not None:  # let in by a token: it ends when the token does, and the client gets a new one
        hub.end_at(subscription, expires, "token_expired", token_expired_event(expires))
    return sse_response(subscription)


def _reader(keys: Keys, claims: dict[str, Any] | None, names: list[str]) -> Any:
    """For a stream with patterns: whether it may read a channel its patterns match. A private one needs
    a token that covers it; without keys the server is open."""
    if not keys or not any(is_pattern(name) for name in names):
        return None
    if claims is None:
        claims = presented_claims(keys)
    granted = list(claims.get("subscribe", [])) if claims else []

    def may_read(channel: str) -> bool:
        guarded = guarded_name(channel)
        return guarded is None or allows(granted, guarded)

    return may_read


def token_expired_event(expired_at: float) -> bytes:
    """The last event of a stream whose token expired: EventSource clients reconnect with a new token (the
    old one is refused with 401 ``token_expired``)."""
    return encode(event="token-expired", data={"reason": "token-expired", "expired_at": int(expired_at)})


@api.post("/api/broadcast")
def broadcast() -> Any:
    runtime = get_runtime()
    # Before the body is read: a client without a token must not hold one of the few body-reading slots.
    require_token(_secret(), "publish")
    body = json_body()
    default = runtime.settings["DEFAULT_CHANNEL"]
    if isinstance(body, list):
        return _broadcast_batch(body, default)
    channel, event, data = _broadcast_fields(body, default)
    claims = require(_secret(), "publish", [channel])
    check_publish_rate(claims)
    try:
        result = runtime.hub.publish(channel, data, event=event)
    except EncodeError as exc:
        raise ApiError(str(exc), code="invalid_event") from None
    return jsonify(id=result.message.id, channel=channel, subscribers=result.subscribers)


def _broadcast_batch(items: list[Any], default_channel: str) -> Any:
    """Check every event, then publish them in order. A failure of the store part-way (503) says which
    were published."""
    runtime = get_runtime()
    limit = runtime.settings["MAX_BATCH"]
    if not items or len(items) > limit:
        raise ApiError(f"A batch holds 1 to {limit} events, not {len(items)}.", code="invalid_batch")
    events = []
    for index, item in enumerate(items):
        try:
            channel, event, data = _broadcast_fields(item, default_channel)
            encode("null" if data is None else data, event=event)  # refused now, not half-way through
        except EncodeError as exc:
            raise ApiError(f"Event {index}: {exc}", code="invalid_event") from None
        except ApiError as exc:
            exc.message = f"Event {index}: {exc.message}"
            raise
        events.append((channel, event, data))
    claims = require(_secret(), "publish", sorted({channel for channel, _, _ in events}))
    check_publish_rate(claims, len(events))
    published: list[dict[str, Any]] = []
    for channel, event, data in events:
        try:
            result = runtime.hub.publish(channel, data, event=event)
        except ApiError as exc:
            if published:
                exc.message += f" {len(published)} of the {len(events)} events were published first: " + \
                    ", ".join(p["id"] for p in published) + "."
            raise
        published.append({"id": result.message.id, "channel": channel, "subscribers": result.subscribers})
    return jsonify(events=published)


@api.get("/api/channels/<channel>")
@api.get("/api/channels")
def channel_info(channel: str | None = None) -> Any:
    """What channels hold: ``subscribers`` (every worker and host's), ``last_id``, ``history`` (events a
    resuming client could be given) and its time span (``oldest``, ``newest``: Unix times). One channel:
    ``/api/channels/<name>``; several: ``/api/channels?channel=a&channel=b`` (``{"channels": [...]}``).
    With a secret, a token whose ``subscribe`` claim covers them (or an admin token)."""
    names = [channel] if channel is not None else request.args.getlist("channel")
    for group in request.args.getlist("channels"):
        names.extend(part for part in group.split(",") if part)
    if not names:
        raise ApiError("Name the channels: /api/channels/<channel>, or /api/channels?channel=a&channel=b.",
                       code="invalid_channel")
    limit = get_runtime().hub.max_channels_per_stream
    if len(names) > limit:
        raise ApiError(f"Ask for at most {limit} channels at once, not {len(names)}.", code="too_many_channels")
    for name in names:
        validate_channel(name)
    claims = presented_claims(_secret())
    if not (claims and claims.get("admin") is True):
        require(_secret(), "subscribe", names)  # who listens where is told only to those who may listen
    hub = get_runtime().hub
    infos = [hub.info(name) for name in dict.fromkeys(names)]
    return jsonify(infos[0]) if channel is not None else jsonify(channels=infos)


def _broadcast_fields(body: Any, default_channel: str) -> tuple[str, str | None, Any]:
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object such as {\"channel\": \"news\", \"data\": ...}.",
                       code="invalid_body")
    keys = set(body)
    if "message" in keys and keys <= SEED_FIELDS:
        return default_channel, None, body  # the SSE API's shape: published whole on the default channel
    unknown = keys - BROADCAST_FIELDS
    if unknown:
        raise ApiError(f"Unknown field(s) {sorted(unknown)}; allowed: channel, event, data (or the "
                       "{message, timestamp} shape).", code="invalid_body")
    if "data" not in body:
        raise ApiError("The body needs a 'data' field (any JSON value).", code="missing_field")
    channel = body.get("channel", default_channel)
    validate_channel(channel)
    event = body.get("event")
    if event is not None and (not isinstance(event, str) or not event):
        raise ApiError("'event' must be a non-empty string when given.", code="invalid_event")
    return channel, event, body["data"]
