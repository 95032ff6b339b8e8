"""The Redis engine: the same hub across gunicorn workers and hosts (``ROVER_REDIS_URL``).

Each channel is a Redis Stream, ``<prefix>ch:<channel>``: publishing is one ``XADD`` (approximately capped
at ``HISTORY_SIZE`` entries, but never below :data:`READER_FLOOR`, the readers' buffer; a replay returns at
most ``HISTORY_SIZE``; the stream expires ``HISTORY_TTL`` after its last event) and the stream id is the
event id, so a client can resume with ``Last-Event-ID`` on any worker of any host, and after a restart.

Each worker process runs **one reader**: a greenlet that ``XREAD``\\ s every channel with local subscribers,
from the last id it delivered, and fans each entry out through :meth:`Hub.deliver`, exactly as the
in-process engine does. Redis connections per worker stay constant whatever the number of clients: the
reader's, plus a small bounded pool for publishing and history. When Redis goes away the reader retries
with backoff and resumes from its last delivered ids (nothing that reached Redis is lost or sent twice);
publishing meanwhile fails fast with :class:`~rover_stream.errors.ServiceUnavailable` (503).

The stream entry holds the event's SSE body, built once by the publisher (``b``), its data as JSON (``d``),
its event type (``e``) and its number in the channel (``n``, from a counter ``<prefix>seq:<channel>`` that
the same script increments, so that the two cannot disagree). The numbers let the reader notice a *gap*:
entries trimmed from the stream before this worker read them (its reader was away or behind for longer
than the history lasts). The channel's local subscribers are then ended with reason ``history_gap``: they
reconnect with their ``Last-Event-ID`` and get an ``event: reset`` and what the history still holds,
instead of a silent hole. A reader that lost Redis is woken as soon as a publish gets through again, so it
resumes within milliseconds of Redis's return, long before the history could be overrun. Subscriber
counts, for the publish answer, live in a hash per channel, ``<prefix>subs:<channel>``, one field per
worker (``count:expires_ms``), refreshed by each worker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from typing import Any

from ..concurrency import spawn
from ..errors import ServiceUnavailable
from .memory import Replay
from .message import Key, Message, format_id, parse_id

log = logging.getLogger("rover_stream.redis")

#: Longest XREAD block; the reader is woken sooner when a channel is added.
READ_BLOCK_MS = 5000
#: Entries one XREAD returns at most per stream.
READ_COUNT = 1000
#: Reconnection backoff, in seconds: first wait and ceiling (a publish that gets through ends the wait).
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0
#: Seconds between refreshes of this worker's subscriber counts; a count lives three times as long.
COUNT_REFRESH = 5.0
#: Redis connections per worker for publishing and history (the reader has its own).
POOL_SIZE = 8
#: Entries every channel's stream keeps at least, whatever its history size (even 0, live only): the
#: readers' buffer. A worker's reader may fall this far behind (busy fanning out, briefly away) before
#: entries it has not read are trimmed (a gap, which ends the channel's streams). Replays still return at
#: most the channel's history size.
READER_FLOOR = 1000
#: Seconds between refreshes of a channel's stream expiry and subscriber count when publishing.
REFRESH_EVERY = 1.0

#: Publishing: number the event and append it in one step; every REFRESH_EVERY also renew the expiry of the
#: stream and its counter (together, so that they expire together) and read the subscriber counts.
#: KEYS: stream, counter, subscriber counts. ARGV: maxlen (approximate), ttl (0: no refresh), body, data, event.
PUBLISH_SCRIPT = """
local n = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'b', ARGV[3], 'd', ARGV[4], 'e', ARGV[5], 'n', n)
if ARGV[2] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {id, redis.call('HGETALL', KEYS[3])}
end
return {id}
"""


class RedisEngine:
    name = "redis"
    remote = True

    def __init__(self, url: str, *, history_size: int, history_ttl: float, prefix: str = "rover:",
                 timeout: float = 2.0, history_sizes: dict[str, int] | None = None) -> None:
        self.url = url
        self.history_size = history_size
        self.history_sizes = dict(history_sizes or {})
        self.history_ttl = history_ttl
        self.prefix = prefix
        self.timeout = timeout
        self.hub: Any = None
        self._pid = -1  # connections, reader and worker id are made per process, after any fork
        self.connected = False
        self.last_error: str | None = None
        self.reads = 0

    # -- per-process state ---------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        import redis

        self._pid = os.getpid()
        self.worker_id = uuid.uuid4().hex[:12]
        self._redis: Any = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=self.timeout, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, health_check_interval=30))
        self._reader_redis: Any = redis.Redis.from_url(
            self.url, socket_timeout=READ_BLOCK_MS / 1000 + self.timeout, socket_connect_timeout=self.timeout,
            health_check_interval=30)
        self._positions: dict[str, Key] = {}  # channel -> last id delivered by this worker's reader
        self._local: dict[str, int] = {}  # channel -> local subscribers (absent when none)
        self._synced: set[str] = set()  # channels whose count this worker has written to Redis
        self._counts_dirty = threading.Event()
        self._numbers: dict[str, int] = {}  # channel -> number (``n``) of the last entry the reader read
        self._reader_up = False
        self._retry_now = threading.Event()  # ends the reader's backoff early: Redis answered a publish
        self._publish_script: Any = self._redis.register_script(PUBLISH_SCRIPT)
        self._control = f"{self.prefix}ctl:{self.worker_id}"
        self._refreshed: dict[str, float] = {}  # channel -> when its expiry and count were last refreshed
        self._subscribers: dict[str, int] = {}  # channel -> subscribers in all workers, as last read
        self._reader = spawn(self._read_forever, name="rover-stream-redis-reader")
        self._syncer = spawn(self._sync_counts_forever, name="rover-stream-redis-counts")

    def client(self) -> Any:
        """This process's Redis client (the bounded pool), for other parts that keep state in Redis."""
        self._ensure_started()
        return self._redis

    def attach(self, hub: Any) -> None:
        self.hub = hub

    def size_for(self, channel: str) -> int:
        for prefix, size in self.history_sizes.items():
            if channel.startswith(prefix):
                return size
        return self.history_size

    def _key(self, channel: str) -> str:
        return f"{self.prefix}ch:{channel}"

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        return ServiceUnavailable(f"The event store (Redis) is unreachable: {exc}. Try again shortly.",
                                  code="redis_unavailable", retry_after=2)

    # -- publishing ------------------------------------------------------------------------------------------

    def publish(self, channel: str, event: str | None, data: Any, body: bytes) -> tuple[Message, int]:
        """XADD the event; return it as a Message and how many subscribers (all workers) it reaches."""
        import redis

        self._ensure_started()
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        now = time.monotonic()
        # The stream's expiry and the subscriber count are refreshed once a second per channel, not per event.
        refresh = self._refreshed.get(channel, 0.0) + REFRESH_EVERY <= now
        keep = max(self.size_for(channel), READER_FLOOR)
        ttl = max(1, int(self.history_ttl)) if refresh else 0
        try:
            answer = self._publish_script(
                keys=[self._key(channel), f"{self.prefix}seq:{channel}", f"{self.prefix}subs:{channel}"],
                args=[keep, ttl, body, data_json, event or ""])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        self.connected = True
        if not self._reader_up:
            self._retry_now.set()  # Redis is back: the reader need not wait out its backoff
        if refresh:
            self._refreshed[channel] = now
            flat = answer[1]
            self._subscribers[channel] = _sum_counts(dict(zip(flat[::2], flat[1::2], strict=True)))
        message = self._message(channel, answer[0], body, data_json.encode(), (event or "").encode())
        return message, self._subscribers.get(channel, 0)

    def _message(self, channel: str, stream_id: bytes | str, body: bytes, data: bytes, event: bytes) -> Message:
        text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
        key = parse_id(text)
        assert key is not None, text
        return Message(channel, key, event.decode() or None, None, body, key[0] / 1000, data_json=data)

    # -- subscribing -----------------------------------------------------------------------------------------

    def head(self, channel: str) -> Key:
        """The id of the channel's newest event (0-0 when it has none)."""
        import redis

        self._ensure_started()
        try:
            newest = self._redis.xrevrange(self._key(channel), count=1)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if not newest:
            return (0, 0)
        key = parse_id(bytes(newest[0][0]).decode())
        return key or (0, 0)

    def after(self, channel: str, key: Key | None) -> Replay:
        """The retained events after ``key``, or a reset when ``key`` cannot be honoured."""
        import redis

        self._ensure_started()
        name = self._key(channel)
        size = self.size_for(channel)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                # The newest ``size`` entries after ``key`` (the stream keeps more, for the readers), and
                # one more: if it exists, the client missed events beyond the history.
                pipe.xrevrange(name, min=f"({format_id(key)}" if key else "-", count=size + 1)
                pipe.xinfo_stream(name)  # an error (no such key) when the channel has no stream yet
                entries, info = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if isinstance(entries, Exception):
            raise self._unavailable(entries)
        entries.reverse()
        beyond = len(entries) > size
        if beyond:
            entries = entries[1:]
        messages = [self._message(channel, sid, f[b"b"], f[b"d"], f.get(b"e", b"")) for sid, f in entries]
        oldest_kept = time.time() - self.history_ttl
        messages = [m for m in messages if m.time >= oldest_kept]
        if key is None:
            return Replay(messages, reset="unknown")
        info = info if isinstance(info, dict) else {}
        last = _info_id(info, "last-generated-id")
        if last is not None and key > last:
            return Replay(messages, reset="unknown")  # an id this stream never gave out
        # Trimming (MAXLEN) does not move max-deleted-entry-id: what tells is an id older than the oldest
        # entry kept, in a stream that has lost entries (more added than it holds).
        first = info.get("first-entry") or info.get(b"first-entry")
        oldest = parse_id(_text(first[0])) if first else None
        added, length = info.get("entries-added"), info.get("length")
        lost_some = added is None or length is None or int(added) > int(length)
        if (oldest is not None and key < oldest and lost_some) or len(messages) < len(entries) or beyond:
            return Replay(messages, reset="expired")
        return Replay(messages)

    def track(self, channel: str, position: Key) -> bool:
        """A channel got local subscribers: the reader starts reading it after ``position``. True if it
        was new to this worker (the caller then wakes the reader)."""
        if channel in self._positions:
            return False
        self._positions[channel] = position
        return True

    def set_local_count(self, channel: str, count: int) -> None:
        if count:
            self._local[channel] = count
        else:
            self._local.pop(channel, None)
        self._counts_dirty.set()

    def wake_reader(self) -> None:
        """Interrupt the reader's blocking XREAD so that it reads the new channel set at once."""
        import redis

        try:
            self._redis.xadd(self._control, {"w": "1"}, maxlen=1, approximate=False)
            self._redis.expire(self._control, 60)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the reader is reconnecting anyway and will read the new set when it does

    # -- the reader ----------------------------------------------------------------------------------------------

    def _read_forever(self) -> None:
        import redis

        backoff = BACKOFF_FIRST
        control_position = b"0-0"  # not "$": a wake-up sent before the first XREAD must not be missed
        while True:
            streams: dict[Any, Any] = {self._control: control_position}
            for channel in [c for c in self._positions if c not in self._local]:
                del self._positions[channel]  # nobody here listens any more
                self._numbers.pop(channel, None)
            for channel, position in self._positions.items():
                streams[self._key(channel)] = format_id(position)
            try:
                result: Any = self._reader_redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self._reader_up or self.last_error is None:
                    log.warning("Redis reader lost its connection (%s); retrying", exc)
                self._reader_up = self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._retry_now.wait(backoff)
                self._retry_now.clear()
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            if not self._reader_up:
                log.info("Redis reader connected")
                self._retry_now.clear()  # a publish may have set it while this read blocked: not for the next outage
            self._reader_up = self.connected = True
            backoff = BACKOFF_FIRST
            for name, entries in result or ():
                name = name.decode() if isinstance(name, bytes) else name
                if name == self._control:
                    control_position = entries[-1][0]
                    continue
                channel = name[len(self.prefix) + 3:]
                self._deliver_entries(channel, entries)

    def _deliver_entries(self, channel: str, entries: list[Any]) -> None:
        """Hand what the reader read to the hub, in order; a gap in the numbers ends the channel's local
        subscribers (see the module's doc) after the entries before it were delivered."""
        messages: list[Message] = []
        last = self._numbers.get(channel)
        for stream_id, fields in entries:
            number = fields.get(b"n")
            if number is not None:
                number = int(number)
                if last is not None and number > last + 1:
                    self._deliver(channel, messages)
                    messages = []
                    ended = self.hub.lost_history(channel, number - last - 1)
                    log.warning("Redis reader: %d events of channel %s were trimmed from its history before "
                                "this worker read them; ending its %d local subscribers so that they resume "
                                "from the history", number - last - 1, channel, ended)
                last = number
            messages.append(self._message(channel, stream_id, fields[b"b"], fields[b"d"], fields.get(b"e", b"")))
        if last is not None:
            self._numbers[channel] = last
        self._deliver(channel, messages)

    def _deliver(self, channel: str, messages: list[Message]) -> None:
        if not messages:
            return
        if channel in self._positions:
            self._positions[channel] = messages[-1].key
        self.reads += len(messages)
        self.hub.deliver(messages)

    def _sync_counts_forever(self) -> None:
        """Keep this worker's subscriber counts in Redis: at once after a change, and every few seconds."""
        import redis

        while True:
            self._counts_dirty.wait(COUNT_REFRESH)
            self._counts_dirty.clear()
            expires = int((time.time() + 3 * COUNT_REFRESH) * 1000)
            local = dict(self._local)
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for channel, count in local.items():
                        key = f"{self.prefix}subs:{channel}"
                        pipe.hset(key, self.worker_id, f"{count}:{expires}")
                        pipe.expire(key, int(3 * COUNT_REFRESH) + 1)
                    for channel in self._synced - local.keys():
                        pipe.hdel(f"{self.prefix}subs:{channel}", self.worker_id)
                    pipe.execute()
                self._synced = set(local)
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(BACKOFF_MAX)
                self._counts_dirty.set()

    # -- the rest of the engine interface -----------------------------------------------------------------------

    def history(self, channel: str, after: Key | None = None) -> list[Message]:
        return self.after(channel, after or (0, 0)).messages

    def forget(self, channel: str) -> None:
        pass  # the reader drops channels without local subscribers by itself

    def idle_since(self, channel: str) -> float:
        return 0.0

    def stats(self) -> dict[str, Any]:
        started = self._pid == os.getpid()
        return {
            "engine": self.name,
            "redis": "ok" if self.connected else ("unavailable" if self.last_error else "not connected yet"),
            "redis_error": None if self.connected else self.last_error,
            "reader_channels": len(self._positions) if started else 0,
            "reader_events": self.reads,
        }

    def ping(self) -> bool:
        import redis

        self._ensure_started()
        try:
            self._redis.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._unavailable(exc)
            return False
        return True


def _sum_counts(counts: dict[bytes, bytes]) -> int:
    now = time.time() * 1000
    total = 0
    for value in counts.values():
        count, _, expires = value.decode().partition(":")
        if expires and int(expires) >= now:
            total += int(count)
    return total


def _info_id(info: dict[Any, Any], field: str) -> Key | None:
    value = info.get(field) or info.get(field.encode())
    if value is None:
        return None
    return parse_id(_text(value))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
