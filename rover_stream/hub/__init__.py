"""The pub/sub hub: channels, subscriptions, history and replay.

One :func:`~rover_stream.hub.Hub.publish` reaches every subscriber of a channel. The hub keeps, per
subscriber, a bounded ``queue.Queue`` (gevent's class under gevent's monkey-patching) of
:class:`Message` objects whose SSE bytes were encoded once, at publish time, and are shared by every
subscriber. A :class:`Subscription` is a *feed* for :func:`rover_stream.sse_response`: the response drains
everything waiting into one write.

Where messages get their ids and history lives is the *engine*'s business (:mod:`.engines`, one
interface): :class:`MemoryEngine`, the embedded default, keeps both in this process. The Redis engine
(``ROVER_REDIS_URL``) puts them in Redis Streams and fans out through the same :class:`Hub`, so route
authors change nothing.

Ids look like ``<epoch>-<seq>`` (as Redis Stream ids do) and increase per channel. A client that reconnects
with ``Last-Event-ID`` gets exactly what it missed from history, then live events, with no gap and no
duplicate; an id the history cannot honour gets an ``event: reset`` first (see :mod:`.subscription`).
"""

from .engines import Engine
from .engines.memory import MemoryEngine
from .factory import create_hub
from .hub import Hub, PublishResult
from .message import Message
from .names import is_private, validate_channel
from .subscription import Subscription

__all__ = ["Engine", "Hub", "MemoryEngine", "Message", "PublishResult", "Subscription", "create_hub", "is_private",
           "validate_channel"]
