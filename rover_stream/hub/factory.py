"""The hub the settings ask for."""

from __future__ import annotations

from typing import Any

from ..settings import CLUSTER_SCHEMES, Settings
from .engines.memory import MemoryEngine
from .hub import Hub
from .names import ROOM_PREFIX


def create_hub(settings: Settings) -> Hub:
    """On Redis with ``ROVER_REDIS_URL``, else in this process."""
    # A room keeps the messages it sends to members that join; every other channel HISTORY_SIZE events.
    sizes = {ROOM_PREFIX: settings["ROOM_HISTORY"]}
    engine: Any
    url = settings["REDIS_URL"]
    if url and url.startswith(CLUSTER_SCHEMES):
        from .engines.redis_cluster import RedisClusterEngine

        engine = RedisClusterEngine(url, history_size=settings["HISTORY_SIZE"], history_ttl=settings["HISTORY_TTL"],
                                    prefix=settings["REDIS_PREFIX"], timeout=settings["REDIS_TIMEOUT"],
                                    history_sizes=sizes)
    elif url:
        # Imported only when asked for: redis-py is not loaded by servers that do not use it.
        from .engines.redis import RedisEngine

        engine = RedisEngine(url, history_size=settings["HISTORY_SIZE"],
                             history_ttl=settings["HISTORY_TTL"], prefix=settings["REDIS_PREFIX"],
                             timeout=settings["REDIS_TIMEOUT"], history_sizes=sizes)
    else:
        engine = MemoryEngine(settings["HISTORY_SIZE"], settings["HISTORY_TTL"], sizes)
    return Hub(engine, queue_size=settings["SUBSCRIBER_QUEUE_SIZE"], policy=settings["SLOW_CLIENT_POLICY"],
               max_channels=settings["MAX_CHANNELS"], max_channels_per_stream=settings["MAX_CHANNELS_PER_STREAM"])
