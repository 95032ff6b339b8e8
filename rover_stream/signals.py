"""Signals that route authors, the metrics code and the server hooks can connect to.

All are declared here, in one private namespace, as Flask does. blinker holds weak references by default:
connect a closure or lambda with ``weak=False`` or it is collected at once and never fires.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent by the server hooks when the worker must stop (SIGTERM): every app's streams end themselves.
shutdown_requested = _signals.signal("shutdown-requested")

#: Sent with the stream body as sender when a stream is admitted (``kind=`` "sse", "stream" or "file").
stream_opened = _signals.signal("stream-opened")

#: Sent when a stream ends, with ``reason=`` "complete", "disconnect", "shutdown" or "error", and
#: ``bytes_sent=`` and ``duration=`` (seconds).
stream_closed = _signals.signal("stream-closed")

#: Sent when a new stream is refused with 503 because the worker is at its stream cap or shutting down.
stream_rejected = _signals.signal("stream-rejected")
