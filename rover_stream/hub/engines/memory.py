"""The in-process engine: ids and bounded history in this process's memory.

The :class:`~rover_stream.hub.Hub` calls every method here while holding its lock, so appending a message,
queueing it for subscribers and snapshotting history for a new subscriber never interleave.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Literal

from ..message import Key, Message, format_id
from ..presence import Presence
from . import Replay


class ChannelLog:
    """One channel's epoch, sequence counter and history."""

    __slots__ = ("epoch", "seq", "history")

    def __init__(self, epoch: int, size: int) -> None:
        self.epoch = epoch
        self.seq = 0
        self.history: deque[Message] = deque(maxlen=size)


class MemoryEngine:
    name = "memory"
    remote: Literal[False] = False

    def __init__(self, history_size: int, history_ttl: float, history_sizes: dict[str, int] | None = None) -> None:
        # Every channel log gets an epoch of its own, later than any before it in this process: an id from
        # before a restart, or from before the channel was forgotten (to make room) and begun again, is
        # "unknown", never mistaken for a position in the new history.
        self._last_epoch = 0
        self.history_size = history_size
        #: History sizes for channels whose name starts with a prefix (rooms keep ROOM_HISTORY messages).
        self.history_sizes = dict(history_sizes or {})
        self.history_ttl = history_ttl
        self._logs: dict[str, ChannelLog] = {}

    def _log(self, channel: str) -> ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            self._last_epoch = max(time.time_ns() // 1_000_000, self._last_epoch + 1)
            log = self._logs[channel] = ChannelLog(self._last_epoch, self.size_for(channel))
        return log

    def append(self, channel: str, event: str | None, data: Any, body: bytes) -> Message:
        log = self._log(channel)
        log.seq += 1
        now = time.time()
        message = Message(channel, (log.epoch, log.seq), event, data, body, now)
        if log.history.maxlen:
            log.history.append(message)
            self._expire(log, now)
        return message

    def size_for(self, channel: str) -> int:
        for prefix, size in self.history_sizes.items():
            if channel.startswith(prefix):
                return size
        return self.history_size

    def _expire(self, log: ChannelLog, now: float) -> None:
        history = log.history
        limit = now - self.history_ttl
        while history and history[0].time < limit:
            history.popleft()

    def head(self, channel: str) -> Key:
        """The position of a new subscriber; the channel's log (and epoch) begins here if it had none, so
        that the position can be resumed from."""
        log = self._log(channel)
        return (log.epoch, log.seq)

    def after(self, channel: str, key: Key | None) -> Replay:
        log = self._log(channel)
        self._expire(log, time.time())
        history = log.history
        if key is None or key[0] != log.epoch or key[1] > log.seq:
            return Replay(list(history), reset="unknown")
        first = history[0].key[1] if history else log.seq + 1
        if key[1] >= first - 1:
            return Replay(list(itertools.islice(history, key[1] - first + 1, None)))
        return Replay(list(history), reset="expired", missed=first - 1 - key[1])

    def forget(self, channel: str) -> None:
        self._logs.pop(channel, None)

    def holds(self, channel: str) -> bool:
        """Whether this engine keeps anything (a counter, a history) of ``channel``."""
        return channel in self._logs

    def held_channels(self) -> list[str]:
        return list(self._logs)

    def idle_since(self, channel: str) -> float:
        """When the channel last had a message (0 if never): the hub forgets the idlest channels first."""
        log = self._logs.get(channel)
        return log.history[-1].time if log and log.history else 0.0

    def history(self, channel: str, after: Key | None = None) -> list[Message]:
        log = self._logs.get(channel)
        if log is None:
            return []
        self._expire(log, time.time())
        return [m for m in log.history if after is None or m.key > after]

    def info(self, channel: str) -> dict[str, Any]:
        log = self._logs.get(channel)
        if log is None or not log.seq:
            return {"last_id": None, "history": 0, "oldest": None, "newest": None, "subscribers": None}
        self._expire(log, time.time())
        history = log.history
        return {"last_id": format_id((log.epoch, log.seq)), "history": len(history),
                "oldest": history[0].time if history else None, "newest": history[-1].time if history else None,
                "subscribers": None}

    def stats(self) -> dict[str, Any]:
        return {"engine": self.name, "history_events": sum(len(log.history) for log in self._logs.values())}

    # -- what the parts above would keep in a shared store: here, this process is the deployment -----------

    def presence(self) -> Presence:
        return Presence()

    def lease(self, name: str, ttl: float) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {}

    def checks(self) -> dict[str, dict[str, Any]]:
        return {}

