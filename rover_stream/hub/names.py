"""Channel names: what is allowed, and which channels are private."""

from __future__ import annotations

from ..errors import ApiError
from ..settings import CHANNEL_NAME

PRIVATE_PREFIX = "private-"
ALLOWED = "1 to 100 characters from A-Z a-z 0-9 _ . -, starting with a letter or a digit"


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise a 400 :class:`ApiError` that says why."""
    if not isinstance(name, str) or not CHANNEL_NAME.match(name):
        raise ApiError(f"Invalid channel name {name!r}: use {ALLOWED}.", code="invalid_channel")
    return name


def is_private(channel: str) -> bool:
    return channel.startswith(PRIVATE_PREFIX)
