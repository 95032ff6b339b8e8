"""Parsing what clients send, with bounds: JSON (request bodies, room frames) and numeric event ids.

Every parse either returns a value the rest of the server can use as it is -- re-encode, relay to
browsers, nest inside another event -- or raises :class:`Rejected` with a sentence that says what was
wrong, never another exception. The bounds:

- JSON is RFC 8259 JSON: ``NaN``, ``Infinity`` and numbers that overflow a float (``1e999``) are refused
  (Python's parser accepts them, and relays them as tokens no other JSON parser reads); so are integers of
  more than 4,300 digits (Python refuses to convert them) and values nested more than ``MAX_DEPTH`` levels
  deep (a deep value parses, then fails when it is encoded again inside an event).
- A numeric event id is a non-negative integer below 2**63 written with at most 19 digits.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting of arrays and objects accepted in client JSON.
MAX_DEPTH = 64
#: The largest numeric event id (ids are counters: 2**63 is far beyond any stream).
MAX_EVENT_NUMBER = 2**63 - 1


class Rejected(ValueError):
    """Client input that is not acceptable; the message says why, for a 400 answer or a close reason."""


def _refuse_constant(name: str) -> Any:
    raise Rejected(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Rejected(f"the number {text[:40]} is too large for a float")
    return value


def parse_json(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``raw`` (UTF-8, as RFC 8259 requires of JSON between systems) as a JSON value within the bounds
    above, or :class:`Rejected`."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except Rejected:
        raise
    except RecursionError:
        raise Rejected(f"it is nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise Rejected("it is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise Rejected(f"it is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        if "digits" in str(exc):
            raise Rejected("a number in it has more than 4300 digits") from None
        raise Rejected(f"it is not valid JSON: {exc}") from None
    if _depth_exceeds(value, max_depth):
        raise Rejected(f"it is nested more than {max_depth} levels deep")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (iteratively: no recursion to exhaust)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_event_number(text: str | None) -> int | None:
    """A numeric event id (``Last-Event-ID: 41``) as an int, or None when ``text`` is not one: absent,
    negative, not decimal ASCII digits, or beyond :data:`MAX_EVENT_NUMBER`."""
    if text is None or not 0 < len(text) <= 19 or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number <= MAX_EVENT_NUMBER else None
