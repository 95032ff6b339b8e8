"""Channel names: what is allowed, and which channels are private.

One privacy rule, which every way into a channel goes through (``/realtime``, rooms, their member lists):
a channel whose name starts with ``private-`` needs a token whose ``subscribe`` claim covers it, and a
room's hub channel (``room.<room>``) is exactly as private as the room, with the same token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import ApiError
from ..settings import CHANNEL_NAME

PRIVATE_PREFIX = "private-"
#: The hub channel of each WebSocket room is ``room.<room>``.
ROOM_PREFIX = "room."
ALLOWED = "1 to 100 characters from A-Z a-z 0-9 _ . -, starting with a letter or a digit"


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise a 400 :class:`ApiError` that says why."""
    if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
        raise ApiError(f"Invalid channel name {name!r}: use {ALLOWED}.", code="invalid_channel")
    return name


#: A pattern subscription: a channel name with ``*`` standing for any run of characters (dots included, as
#: in token claims): ``sensors.*`` follows ``sensors.temp`` and ``sensors.temp.raw``.
PATTERN = re.compile(r"[A-Za-z0-9*][A-Za-z0-9_.\-*]{0,99}")


def is_pattern(name: str) -> bool:
    return "*" in name


def validate_pattern(name: object) -> str:
    """Return ``name`` if it is a valid channel pattern (a channel name with at least one ``*``), else a
    400 :class:`ApiError` that says why."""
    if not isinstance(name, str) or "*" not in name or not PATTERN.fullmatch(name):
        raise ApiError(f"Invalid channel pattern {name!r}: use {ALLOWED}, with * for any run of characters.",
                       code="invalid_channel")
    return name


def pattern_matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression matching the channel names any of ``patterns`` matches."""
    return re.compile("|".join("".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", p))
                               for p in patterns))


def room_channel(room: str) -> str:
    return ROOM_PREFIX + room


def guarded_name(channel: str) -> str | None:
    """The name a subscribe token must cover to read ``channel`` (a room's channel: the room's name), or
    None when the channel is public."""
    name = channel[len(ROOM_PREFIX):] if channel.startswith(ROOM_PREFIX) else channel
    return name if name.startswith(PRIVATE_PREFIX) else None


def is_private(channel: str) -> bool:
    return guarded_name(channel) is not None


def guarded_names(channels: Iterable[str]) -> list[str]:
    """What a subscribe token must cover to read all of ``channels`` (see :func:`guarded_name`)."""
    return [name for name in map(guarded_name, channels) if name is not None]
