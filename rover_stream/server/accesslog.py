"""gunicorn's logger, with every access-log field escaped.

A request path may carry any byte once percent-decoded (``/x%0D%0Afake line``): written as it is, it
would forge a line of the access log, or end the quoted request field early. Control characters (C0 and
C1: a path is decoded as latin-1, so bytes 0x80-0x9f arrive as the C1 controls), ``"`` and ``\\`` are
written as ``\\xNN``.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def escape(text: str) -> str:
    return _UNSAFE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type information
    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {key: escape(value) if isinstance(value, str) else value for key, value in atoms.items()}
