"""Signals that route authors, the metrics code and the server hooks can connect to.

All are declared here, in one private namespace, as Flask does. blinker holds weak references by default:
connect a closure or lambda with ``weak=False`` or it is collected at once and never fires.

rover_stream sends them with :func:`emit`, which calls every receiver even if one raises (blinker's own
``send`` stops at the first exception, so one failing receiver would silence the rest) and costs next to
nothing when no one listens.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace, Signal

log = logging.getLogger("rover_stream.signals")

_signals = Namespace()


def emit(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal`` to every receiver; a receiver that raises is logged and the others still run."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception("receiver %r of signal %r failed", receiver, getattr(signal, "name", signal))

#: Sent by the server hooks when the worker must stop (SIGTERM): every app's streams end themselves.
shutdown_requested = _signals.signal("shutdown-requested")

#: Sent with the stream body as sender when a stream is admitted (``kind=`` "sse", "stream" or "file").
stream_opened = _signals.signal("stream-opened")

#: Sent when a stream ends, with ``reason=`` "complete", "disconnect", "shutdown" or "error", and
#: ``bytes_sent=`` and ``duration=`` (seconds).
stream_closed = _signals.signal("stream-closed")

#: Sent when a new stream is refused with 503 because the worker is at its stream cap or shutting down.
stream_rejected = _signals.signal("stream-rejected")

# -- the hub ------------------------------------------------------------------------------------------------

#: A message was published: sender is the hub; ``message=`` (:class:`~rover_stream.hub.Message`),
#: ``subscribers=`` (how many local subscribers it was queued for).
message_published = _signals.signal("message-published")

#: A subscription started: ``subscription=``, ``channels=``, ``replayed=`` (events replayed from history).
subscribed = _signals.signal("subscribed")

#: A subscription ended: ``subscription=``, ``reason=``.
unsubscribed = _signals.signal("unsubscribed")

#: A slow subscriber lost events (``policy="drop-oldest"``, ``dropped=`` count) or was disconnected
#: (``policy="disconnect"``): ``subscription=``, ``channel=``.
subscriber_dropped = _signals.signal("subscriber-dropped")

#: A client's Last-Event-ID was unknown or older than the history: ``subscription=``, ``channel=``,
#: ``reason=`` ("expired" or "unknown"), ``missed=`` (count, or None when unknown).
replay_reset = _signals.signal("replay-reset")
