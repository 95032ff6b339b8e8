"""The Redis engine: the same hub across gunicorn workers and hosts (``ROVER_REDIS_URL``).

Each channel is a Redis Stream, ``<prefix>ch:<channel>``: publishing is one ``XADD`` (approximately capped
at ``HISTORY_SIZE`` entries, but never below :data:`READER_FLOOR`, the readers' buffer; a replay returns at
most ``HISTORY_SIZE``; the stream expires ``HISTORY_TTL`` after its last event) and the stream id is the
event id, so a client can resume with ``Last-Event-ID`` on any worker of any host, and after a restart.

**Epochs.** The stream id is ``<epoch>-<n>``, as in the in-process engine: ``n`` numbers the channel's
events 1, 2, 3... and the *epoch* names this run of its history. Both live in a hash beside the stream,
``<prefix>epoch:<channel>`` (fields ``e`` and ``n``), which the publishing script creates with the first
entry, in the same step, with a new epoch: Redis's clock in microseconds, above every id the stream ever had
(so ids keep increasing across epochs). The hash expires with the stream, and lives on while any worker has
subscribers to the channel (one created by a subscriber, before any event, lives seconds unless someone
stays subscribed). When Redis loses a channel (restarted without persistence, flushed, the keys
evicted), its next event starts a new epoch; a client whose ``Last-Event-ID`` names another epoch than the
channel's gets ``event: reset`` (``unknown``) and the history, never a silent hole. Within the epoch the
numbers make a replay exact: a client at ``n`` must be given ``n + 1`` first, and when the history has lost
it the reset (``expired``) says how many events are gone. Subscribing to a channel without one creates its
epoch, so that even the position ``<epoch>-0`` of a client that saw nothing can be checked later. A reader
that meets a new epoch while its subscribers are connected goes on with it (ids keep increasing, nothing is
taken for a duplicate) and logs it: what Redis forgot before this worker read it cannot be known, and only
persistence (``appendonly yes``) prevents that loss.

Each worker process runs **one reader**: a greenlet that ``XREAD``\\ s every channel with local subscribers,
from the last id it delivered, and fans each entry out through :meth:`Hub.deliver`, exactly as the
in-process engine does. Redis connections per worker stay constant whatever the number of clients: the
reader's, plus a small bounded pool for publishing and history. When Redis goes away the reader retries
with backoff and resumes from its last delivered ids (nothing that reached Redis is lost or sent twice);
publishing meanwhile fails fast with :class:`~rover_stream.errors.ServiceUnavailable` (503
``redis_unavailable``). An error *reply* (out of memory, read-only replica, a key of the wrong type) is not
an outage: the request fails with 503 ``redis_error`` and Redis is not marked down.

The stream entry holds the event's SSE body, built once by the publisher (``b``), its data as JSON (``d``),
its event type (``e``) and when Redis stored it (``t``, ms). The numbers in the ids let the reader notice a
*gap*: entries trimmed from the stream before this worker read them (its reader was away or behind for
longer than the history lasts). The channel's local subscribers are then ended with reason ``history_gap``: they
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
import socket
import threading
import time
import uuid
from typing import Any, Literal

import gevent

from ...concurrency import spawn
from ...errors import ServiceUnavailable
from ..message import Key, Message, format_id, parse_id
from ..presence import Presence
from . import Replay

log = logging.getLogger("rover_stream.redis")

#: Longest XREAD block; the reader is woken sooner when a channel is added.
READ_BLOCK_MS = 5000
#: Entries one XREAD returns at most per stream.
READ_COUNT = 1000
#: Coalescing. Every batch the reader hands to the hub costs one socket write per local subscriber, however
#: many events it holds: during a burst, small batches (a read returns what the few publishers in flight
#: added since the last one) make the writes, not the events, the cost. So after a read of several entries
#: the reader waits READ_COALESCE_PER_ENTRY seconds per entry read, at most READ_COALESCE, before its next
#: XREAD: the batches grow with the burst. A read of one entry (steady traffic) is followed by no wait.
READ_COALESCE = 0.010
READ_COALESCE_PER_ENTRY = 0.001
#: Reconnection backoff, in seconds: first wait and ceiling (a publish that gets through ends the wait).
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0
#: Seconds between refreshes of this worker's subscriber counts; a count lives three times as long.
COUNT_REFRESH = 5.0
#: Seconds between two writes of the counts after changes (the first change is written at once).
COUNT_GATHER = 0.2
#: Redis connections per worker for publishing and history (the reader has its own).
POOL_SIZE = 8
#: Entries every channel's stream keeps at least, whatever its history size (even 0, live only): the
#: readers' buffer. A worker's reader may fall this far behind (busy fanning out, briefly away) before
#: entries it has not read are trimmed (a gap, which ends the channel's streams). Replays still return at
#: most the channel's history size.
READER_FLOOR = 1000
#: Seconds between refreshes of a channel's stream expiry and subscriber count when publishing.
REFRESH_EVERY = 1.0
#: Seconds a channel's epoch lives at least while a worker has subscribers to it (renewed every
#: COUNT_REFRESH): an epoch created by a subscriber, for a channel without events, lives no longer.
EPOCH_KEEP = int(3 * COUNT_REFRESH) + 1

#: Lua shared by the scripts (KEYS[1] is the channel's stream): Redis's clock in microseconds, and a new
#: epoch for the channel: that clock, but above every id its stream ever had (entries may outlive their
#: epoch's hash: an eviction, a key deleted by hand, entries from a version without epochs), so that ids
#: keep increasing. Microseconds: two runs of a channel's history never start within the same one.
_LUA_EPOCHS = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function new_epoch(now)
  local epoch = now
  local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
  if type(info) == 'table' and not info.err then
    for i = 1, #info - 1, 2 do
      if info[i] == 'last-generated-id' then
        local top = tonumber(string.match(info[i + 1], '^(%d+)'))
        if top and top >= epoch then epoch = top + 1 end
      end
    end
  end
  return string.format('%.0f', epoch)
end
"""

#: Publishing: number the event and append it as ``<epoch>-<n>``, in one step. The first event of a
#: channel (or the first after Redis lost it) starts a new epoch. Every REFRESH_EVERY, and whenever an epoch
#: starts or the stream was created, renew the expiry of the stream and its epoch (together, so that they
#: expire together); every REFRESH_EVERY also read the subscriber counts.
#: A new epoch is announced on the Pub/Sub channel ARGV[7] (``<stream key> <epoch>``): workers with
#: pattern subscriptions learn of channels as they begin, without scanning the keyspace.
#: KEYS: stream, epoch, subscriber counts. ARGV: maxlen (approximate), ttl, refresh ("1"), body, data, event,
#: the announcement channel.
#: Returns {id, time in ms[, counts]}. An engine may insert Lua where the template says ``-- ON NUMBERED``
#: (``extra`` holds more fields for the entry) and ``-- ON APPENDED``.
PUBLISH_TEMPLATE = _LUA_EPOCHS + """
local now = now_us()
local t = string.format('%.0f', math.floor(now / 1000))
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
local e = redis.call('HGET', KEYS[2], 'e')
local renew = ARGV[3] == '1'
if not e then
  e = new_epoch(now)
  n = 1
  redis.call('HSET', KEYS[2], 'e', e, 'n', 1)
  renew = true
  if ARGV[7] then redis.call('PUBLISH', ARGV[7], KEYS[1] .. ' ' .. e) end
end
local extra = {}
-- ON NUMBERED
local id = e .. '-' .. string.format('%.0f', n)
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'b', ARGV[4], 'd', ARGV[5], 'e', ARGV[6], 't', t,
                          unpack(extra))
if type(added) == 'table' and added.err then
  if not string.find(added.err, 'smaller', 1, true) then
    return added
  end
  -- The stream is ahead of this epoch (its hash was lost, or edited): start a new one.
  e = new_epoch(now)
  id = e .. '-1'
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'b', ARGV[4], 'd', ARGV[5], 'e', ARGV[6], 't', t)
  redis.call('HSET', KEYS[2], 'e', e, 'n', 1)
  renew = true
  if ARGV[7] then redis.call('PUBLISH', ARGV[7], KEYS[1] .. ' ' .. e) end
end
if renew or redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
-- ON APPENDED
if ARGV[3] == '1' then
  return {id, t, redis.call('HGETALL', KEYS[3])}
end
return {id, t}
"""
PUBLISH_SCRIPT = PUBLISH_TEMPLATE

#: The head of a channel for a new subscriber: its epoch and the number of its newest event, the epoch
#: created now if the channel has none (with no event yet, living EPOCH_KEEP seconds, kept alive by the
#: subscribers' workers), so that the position ``<epoch>-0`` given to a client that has seen nothing can be
#: checked when it comes back.
#: KEYS: stream, epoch. ARGV: seconds the new epoch lives. Returns {epoch, n}.
HEAD_SCRIPT = _LUA_EPOCHS + """
local state = redis.call('HMGET', KEYS[2], 'e', 'n')
if state[1] then
  return {state[1], state[2] or '0'}
end
local e = new_epoch(now_us())
redis.call('HSET', KEYS[2], 'e', e, 'n', 0)
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {e, '0'}
"""

#: A replay: the channel's epoch and newest number, and its newest entries (at most ARGV[3]), only those
#: after the client's id when that id belongs to the channel's epoch (and was given out).
#: KEYS: stream, epoch. ARGV: the epoch and number of the client's id ("" and "0": none), count.
#: Returns {epoch or nil, n, entries newest first}.
AFTER_SCRIPT = """
local state = redis.call('HMGET', KEYS[2], 'e', 'n')
local e, n = state[1], state[2] or '0'
local low = '-'
if e and ARGV[1] == e and tonumber(ARGV[2]) <= tonumber(n) then
  low = '(' .. e .. '-' .. ARGV[2]
end
return {e, n, redis.call('XREVRANGE', KEYS[1], '+', low, 'COUNT', ARGV[3])}
"""

#: What a channel holds: its epoch and number, the count of entries, the newest entry and the oldest a
#: replay could give (the number ``n - size + 1`` of the epoch, or the first after it), and the subscriber
#: counts of every worker. KEYS: stream, epoch, counts. ARGV: history size.
#: Returns {epoch or false, n, xlen, newest entries, oldest entries, counts}.
INFO_SCRIPT = """
local state = redis.call('HMGET', KEYS[2], 'e', 'n')
local e, n = state[1], tonumber(state[2] or '0')
local oldest = {}
if e and n > 0 then
  local from = math.max(1, n - tonumber(ARGV[1]) + 1)
  oldest = redis.call('XRANGE', KEYS[1], e .. '-' .. string.format('%.0f', from), '+', 'COUNT', 1)
end
return {e or false, n, redis.call('XLEN', KEYS[1]), redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1),
        oldest, redis.call('HGETALL', KEYS[3])}
"""

#: The epochs of the channels a worker has subscribers to live at least ARGV[1] seconds more; never
#: shortened (a stream's epoch must outlive it), never created.
#: KEYS: epochs. ARGV: seconds.
KEEP_SCRIPT = """
local keep = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local ttl = redis.call('TTL', key)
  if ttl >= 0 and ttl < keep then
    redis.call('EXPIRE', key, keep)
  end
end
return 0
"""


def _glob_escape(text: str, keep: str = "") -> str:
    """``text`` for a Redis MATCH glob, its special characters taken literally (but those in ``keep``)."""
    return "".join("\\" + c if c in "*?[]\\" and c not in keep else c for c in text)


class _Publish:
    """One publish waiting for its turn in a pipeline (see :meth:`RedisEngine._run_publish_script`)."""

    __slots__ = ("keys", "args", "answer", "error", "done", "lead")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys, self.args = keys, args
        self.answer: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lead = False

    def finish(self, *, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer


class RedisEngine:
    name = "redis"
    remote: Literal[True] = True
    #: The Lua that numbers and appends a publish (see PUBLISH_SCRIPT).
    publish_script = PUBLISH_SCRIPT

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
        self._lock_pid = -1
        self._start_lock: Any = None
        self.connected = False
        self.last_error: str | None = None
        self.reads = 0

    # -- per-process state ---------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._lock_pid != pid:  # a lock of this process's own (made after any fork, and after patching)
            self._lock_pid, self._start_lock = pid, threading.Lock()
        with self._start_lock:  # connecting may yield to other greenlets (a cluster client asks the nodes)
            if self._pid != pid:
                self._start()
                self._pid = pid

    def _start(self) -> None:
        self.worker_id = uuid.uuid4().hex[:12]
        self._redis: Any = self._connect()
        self._positions: dict[str, Key] = {}  # channel -> last id delivered by this worker's reader
        self._local: dict[str, int] = {}  # channel -> local subscribers (absent when none)
        self._synced: set[str] = set()  # channels whose count this worker has written to Redis
        self._counts_dirty = threading.Event()
        self._last: dict[str, Key] = {}  # channel -> id of the last entry the reader read (or its start)
        self._epoch_changes = 0  # times the reader saw a channel's epoch change (logged at most every 10 s)
        self._epoch_logged = 0.0
        self._reader_up = False
        self._retry_now = threading.Event()  # ends the reader's backoff early: Redis answered a publish
        self._publish_script: Any = self._redis.register_script(self.publish_script)
        self._watcher: Any = None  # the watcher of channels that begin (pattern subscriptions)
        self._batch: list[_Publish] = []  # publishes waiting for the next round trip (_run_publish_script)
        self._batch_lock = threading.Lock()
        self._batch_busy = False  # a publish is leading: sending a batch, or about to
        self._head_script: Any = self._redis.register_script(HEAD_SCRIPT)
        self._after_script: Any = self._redis.register_script(AFTER_SCRIPT)
        self._info_script: Any = self._redis.register_script(INFO_SCRIPT)
        self._refreshed: dict[str, float] = {}  # channel -> when its expiry and count were last refreshed
        self._subscribers: dict[str, int] = {}  # channel -> subscribers in all workers, as last read
        self._start_reader()
        self._syncer = spawn(self._sync_counts_forever, name="rover-stream-redis-counts")

    def _connect(self) -> Any:
        """This process's client for publishing, history and the rest: a small bounded pool."""
        import redis

        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=self.timeout, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, health_check_interval=30))

    def _start_reader(self) -> None:
        """One reader per process, on a connection of its own: XREAD of every channel with subscribers here."""
        import redis

        self._reader_redis: Any = redis.Redis.from_url(
            self.url, socket_timeout=READ_BLOCK_MS / 1000 + self.timeout, socket_connect_timeout=self.timeout,
            health_check_interval=30)
        self._reader_conn: Any = None  # the reader's connection, made from _reader_redis's pool (see _xread)
        self._control = f"{self.prefix}ctl:{self.worker_id}"
        self._reader = spawn(self._read_forever, name="rover-stream-redis-reader")

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

    def _epoch_key(self, channel: str) -> str:
        return f"{self.prefix}epoch:{channel}"

    def _counts_key(self, channel: str) -> str:
        return f"{self.prefix}subs:{channel}"

    def _publish_keys(self, channel: str) -> list[str]:
        return [self._key(channel), self._epoch_key(channel), self._counts_key(channel)]

    def _ttl(self) -> int:
        return max(1, int(self.history_ttl))

    def _outages(self) -> tuple[type[Exception], ...]:
        """The errors that mean Redis cannot be reached (as opposed to an error reply)."""
        import redis

        return (redis.ConnectionError, redis.TimeoutError)

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        """Redis cannot be reached (no connection, a timeout): /health says so until it answers again."""
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        return ServiceUnavailable(f"The event store (Redis) is unreachable: {exc}. Try again shortly.",
                                  code="redis_unavailable", retry_after=2)

    def _refused(self, exc: Exception, doing: str) -> ServiceUnavailable:
        """Redis answered with an error reply (out of memory, read-only, a key of the wrong type...): it is
        reachable, so nothing is marked down; the request fails with 503 ``redis_error``."""
        log.error("Redis refused %s: %s", doing, exc)
        return ServiceUnavailable(f"The event store (Redis) refused the request: {exc}. Try again shortly.",
                                  code="redis_error", retry_after=2)

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
        try:
            answer = self._run_publish_script(
                self._publish_keys(channel),
                [keep, self._ttl(), "1" if refresh else "0", body, data_json, event or "", self._began_channel()])
        except self._outages() as exc:
            raise self._unavailable(exc) from None
        except redis.ResponseError as exc:
            raise self._refused(exc, f"a publish on {channel}") from None
        self.connected = True
        if not self._reader_up:
            self._retry_now.set()  # Redis is back: the reader need not wait out its backoff
        if refresh:
            self._refreshed[channel] = now
            flat = answer[2]
            self._subscribers[channel] = _sum_counts(dict(zip(flat[::2], flat[1::2], strict=True)))
        message = self._message(channel, answer[0], body, data_json.encode(), (event or "").encode(), answer[1])
        return message, self._subscribers.get(channel, 0)

    def _run_publish_script(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of the publishing script. Publishes that arrive while another is waiting for its answer
        share the next round trip: the first of them sends them all as one pipeline, hands each its answer,
        and the first to arrive after that leads the next. A worker with several publishing clients pays
        one round trip per batch, not per event; a publish that finds none in flight goes at once; no
        publish waits for more than the round trip before its own; their order is the order they arrived."""
        item = _Publish(keys, args)
        with self._batch_lock:
            self._batch.append(item)
            follow, self._batch_busy = self._batch_busy, True
        if follow:
            item.done.wait()
            if not item.lead:
                return item.result()
        with self._batch_lock:
            batch, self._batch = self._batch, []
        try:
            self._send_batch(batch)
        finally:
            for other in batch:
                if not other.done.is_set():  # the leader was interrupted (a timeout, a kill): not sent
                    other.finish(error=ServiceUnavailable("The publish was interrupted before it was sent.",
                                                          code="redis_unavailable"))
            with self._batch_lock:
                if self._batch:
                    self._batch[0].lead = True
                    self._batch[0].done.set()
                else:
                    self._batch_busy = False
        return item.result()

    def _send_batch(self, batch: list[_Publish]) -> None:
        """Send ``batch`` as one pipeline on a pooled connection, read every answer, hand each its own."""
        import redis

        sha = self._publish_script.sha
        try:
            pool = self._redis.connection_pool
            conn = pool.get_connection()
        except Exception as exc:
            for item in batch:
                item.finish(error=exc)
            return
        try:
            conn.send_packed_command(conn.pack_commands(
                [("EVALSHA", sha, len(item.keys), *item.keys, *item.args) for item in batch]))
            for item in batch:
                try:
                    item.answer = conn.read_response()
                except redis.ResponseError as exc:
                    item.error = exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            conn.disconnect()  # a reply may be half read: never hand this socket out again as it is
            for item in batch:
                if item.answer is None and item.error is None:
                    item.error = exc
        finally:
            pool.release(conn)
        for item in batch:
            if isinstance(item.error, redis.exceptions.NoScriptError):
                # Redis does not know the script (restarted, flushed): ``Script`` loads and runs it.
                try:
                    item.answer, item.error = self._publish_script(keys=item.keys, args=item.args), None
                except Exception as exc:
                    item.error = exc
            item.done.set()

    def _message(self, channel: str, stream_id: bytes | str, body: bytes, data: bytes, event: bytes,
                 stored_ms: bytes | None) -> Message:
        """A stream entry as a Message; ``stored_ms`` is its ``t`` field (absent from entries written by a
        version without epochs, whose ids began with the time)."""
        text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
        key = parse_id(text)
        assert key is not None, text
        when = int(stored_ms) / 1000 if stored_ms is not None else key[0] / 1000
        return Message(channel, key, event.decode() or None, None, body, when, data_json=data)

    # -- subscribing -----------------------------------------------------------------------------------------

    def head(self, channel: str) -> Key:
        """The id of the channel's newest event: ``<epoch>-<n>``, ``<epoch>-0`` before its first (the
        channel's epoch is created now if it has none)."""
        import redis

        self._ensure_started()
        try:
            epoch, number = self._head_script(keys=[self._key(channel), self._epoch_key(channel)],
                                              args=[EPOCH_KEEP])
        except self._outages() as exc:
            raise self._unavailable(exc) from None
        except redis.ResponseError as exc:
            raise self._refused(exc, f"the head of {channel}") from None
        return int(epoch), int(number)

    def after(self, channel: str, key: Key | None) -> Replay:
        """The retained events after ``key``, or a reset when ``key`` cannot be honoured: ``unknown`` when it
        is not an id of the channel's epoch (given out before Redis lost the channel, or never), ``expired``
        with the number of events lost when the history no longer holds the one that follows it."""
        import redis

        self._ensure_started()
        size = self.size_for(channel)
        try:
            # The newest ``size`` entries after ``key`` (the stream keeps more, for the readers), and one
            # more: if it exists, the client missed events beyond the history.
            epoch, number, entries = self._after_script(
                keys=[self._key(channel), self._epoch_key(channel)],
                args=[key[0] if key else "", key[1] if key else 0, size + 1])
        except self._outages() as exc:
            raise self._unavailable(exc) from None
        except redis.ResponseError as exc:
            raise self._refused(exc, f"the history of {channel}") from None
        entries.reverse()
        if len(entries) > size:
            entries = entries[1:]
        messages = []
        for stream_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            messages.append(self._message(channel, stream_id, fields[b"b"], fields[b"d"], fields.get(b"e", b""),
                                          fields.get(b"t")))
        oldest_kept = time.time() - self.history_ttl
        stale = 0
        while stale < len(messages) and messages[stale].time < oldest_kept:
            stale += 1  # older than the history's age limit: gone, as if trimmed
        messages = messages[stale:]
        if key is None or epoch is None or key[0] != int(epoch) or key[1] > int(number):
            return Replay(messages, reset="unknown")
        # ``messages`` are the retained events after ``key``, in its epoch: the first must follow it.
        following = messages[0].key[1] if messages else int(number) + 1
        missed = following - key[1] - 1
        if missed > 0:
            return Replay(messages, reset="expired", missed=missed)
        return Replay(messages)

    def track(self, channel: str, position: Key) -> bool:
        """A channel got local subscribers: the reader starts reading it after ``position``. True if it
        was new to this worker (the caller then wakes the reader)."""
        if channel in self._positions:
            return False
        self._positions[channel] = position
        self._last[channel] = position  # the first entry read must follow it (or start a new epoch)
        return True

    # -- pattern subscriptions -----------------------------------------------------------------------------

    def _began_channel(self) -> str:
        """The Pub/Sub channel on which the publishing script announces a channel's new epoch."""
        return f"{self.prefix}began"

    def channels_matching(self, patterns: tuple[str, ...]) -> set[str]:
        """The channels with a stream now whose names one of ``patterns`` matches: a SCAN of the keyspace,
        done when a pattern subscription begins (and when the watcher reconnects), never per publish."""
        self._ensure_started()
        stream_prefix = self.prefix + "ch:"
        found: set[str] = set()
        try:
            for pattern in patterns:
                for key in self._redis.scan_iter(match=_glob_escape(stream_prefix) + _glob_escape(pattern, "*"),
                                                 count=1000, _type="stream"):
                    name = key.decode() if isinstance(key, bytes) else key
                    found.add(self._channel_of(name))
        except self._outages() as exc:
            raise self._unavailable(exc) from None
        return found

    def _channel_of(self, key: str) -> str:
        return key[len(self.prefix) + 3:]

    def watch_new_channels(self) -> None:
        """Start this process's watcher of channels that begin (once): it hands each to the hub, which
        offers it to its pattern subscriptions. Its own connection; on every (re)connection it looks over
        the keyspace once for what began while it was away."""
        self._ensure_started()
        if self._watcher is None:
            self._watcher = spawn(self._watch_forever, name="rover-stream-redis-channels")

    def _watch_forever(self) -> None:
        import redis

        backoff = BACKOFF_FIRST
        while True:
            pubsub: Any = None
            try:
                pubsub = self._reader_redis.pubsub()
                pubsub.subscribe(self._began_channel())
                for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        backoff = BACKOFF_FIRST
                        self.hub.rescan_patterns()
                    elif message["type"] == "message":
                        key, _, epoch = message["data"].decode().rpartition(" ")
                        self.hub.channel_began(self._channel_of(key), int(epoch))
            except (redis.ConnectionError, redis.TimeoutError, OSError, ServiceUnavailable) as exc:
                log.warning("Watching for new channels: %s; again in %.1f s.", exc, backoff)
            except Exception:
                log.exception("Watching for new channels failed; again in %.1f s.", backoff)
            finally:
                if pubsub is not None:
                    pubsub.close()
            time.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

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
        except redis.RedisError:
            pass  # the reader is reconnecting anyway, or reads the new set after its block at the latest

    # -- the reader ----------------------------------------------------------------------------------------------

    def _read_forever(self) -> None:
        import redis

        backoff = BACKOFF_FIRST
        control_position = b"0-0"  # not "$": a wake-up sent before the first XREAD must not be missed
        while True:
            streams: dict[Any, Any] = {self._control: control_position}
            for channel in [c for c in self._positions if c not in self._local]:
                del self._positions[channel]  # nobody here listens any more
                self._last.pop(channel, None)
            for channel, position in self._positions.items():
                streams[self._key(channel)] = format_id(position)
            try:
                result = self._xread(streams)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._drop_reader_connection()
                if self._reader_up or self.last_error is None:
                    log.warning("Redis reader lost its connection (%s); retrying", exc)
                self._reader_up = self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._retry_now.wait(backoff)
                self._retry_now.clear()
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            except redis.ResponseError as exc:
                # An error reply, not an outage: Redis is there. A channel key that is not a stream any
                # more (written by something else) fails the whole XREAD: end that channel's streams.
                log.error("Redis refused the reader's XREAD: %s", exc)
                self._drop_broken_channels()
                time.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            if not self._reader_up:
                log.info("Redis reader connected")
                self._retry_now.clear()  # a publish may have set it while this read blocked: not for the next outage
            self._reader_up = self.connected = True
            backoff = BACKOFF_FIRST
            read = 0
            for name, entries in result or ():
                name = name.decode() if isinstance(name, bytes) else name
                if name == self._control:
                    control_position = entries[-1][0]
                    continue
                channel = name[len(self.prefix) + 3:]
                read += len(entries)
                self._deliver_entries(channel, entries)
            if read > 1:  # a burst: let more entries gather before the next read (see READ_COALESCE)
                time.sleep(min(READ_COALESCE, read * READ_COALESCE_PER_ENTRY))

    def _xread(self, streams: dict[Any, Any]) -> list[tuple[Any, list[tuple[Any, dict[bytes, bytes]]]]]:
        """XREAD of ``streams`` (key -> last id read) on the reader's own connection, kept for as long as it
        works (no pool checkout per read), its reply taken as Redis sent it (no response callback):
        ``[(key, [(id, fields), ...]), ...]``."""
        conn = self._reader_conn
        if conn is None:
            conn = self._reader_conn = self._reader_redis.connection_pool.make_connection()
            conn.connect()
        keys = list(streams)
        conn.send_command("XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", *keys,
                          *(streams[key] for key in keys))
        reply = conn.read_response()
        if not reply:
            return []
        # RESP3 answers a map (key -> entries), RESP2 a list of [key, entries]
        pairs = reply.items() if isinstance(reply, dict) else reply
        return [(key, [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in entries])
                for key, entries in pairs]

    def _drop_reader_connection(self) -> None:
        conn, self._reader_conn = self._reader_conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001 (it is gone either way)
                pass

    def _deliver_entries(self, channel: str, entries: list[Any]) -> None:
        """Hand what the reader read to the hub, in order; a gap in the numbers ends the channel's local
        subscribers (see the module's doc) after the entries before it were delivered."""
        messages: list[Message] = []
        last = self._last.get(channel)
        for stream_id, fields in entries:
            stored = fields.get(b"t")
            message = self._message(channel, stream_id, fields[b"b"], fields[b"d"], fields.get(b"e", b""), stored)
            key = message.key
            if b"pe" in fields and messages_before_lineage(last, fields):
                # Another primary took the channel over (a failover): it starts a new epoch, as events the
                # last one acknowledged may never have reached it. Nobody can tell which: the channel's local
                # subscribers end and resume from the history with their Last-Event-ID (event: reset).
                self._deliver(channel, messages)
                messages = []
                ended = self.hub.lost_history(channel, 0)
                log.warning("Redis: channel %s is served by another primary now (failover?); events the last one "
                            "acknowledged may be lost: ending its %d local subscribers so that they resume "
                            "from the history", channel, ended)
                last = key
                messages.append(message)
                continue
            if stored is None:
                last = None  # written by a version without epochs: nothing to check it against
            else:
                if last is not None:
                    if key[0] == last[0]:
                        missed = key[1] - last[1] - 1
                    else:
                        missed = key[1] - 1  # a new epoch starts at 1
                        self._epoch_changed(channel, last, key)
                    if missed > 0:
                        self._deliver(channel, messages)
                        messages = []
                        ended = self.hub.lost_history(channel, missed)
                        log.warning("Redis reader: %d events of channel %s were trimmed from its history before "
                                    "this worker read them; ending its %d local subscribers so that they resume "
                                    "from the history", missed, channel, ended)
                last = key
            messages.append(message)
        if last is not None:
            self._last[channel] = last
        else:
            self._last.pop(channel, None)
        self._deliver(channel, messages)

    def _epoch_changed(self, channel: str, last: Key, key: Key) -> None:
        """The channel's history started over while this worker's subscribers were connected: Redis lost it
        (restarted without persistence, flushed, evicted). Its live subscribers go on with the new epoch;
        what was published before and not read yet by this worker cannot be known (SECURITY.md). Those that
        reconnect with an id of the old epoch get ``event: reset``. Said at most every 10 s."""
        self._epoch_changes += 1
        now = time.monotonic()
        if now - self._epoch_logged >= 10:
            log.warning("Redis reader: channel %s started a new history (epoch %d, was %d): Redis lost it "
                        "(restarted without persistence?). Events published before and not yet read by this "
                        "worker are lost; clients that resume from before get event: reset (%d channel(s) so "
                        "far)", channel, key[0], last[0], self._epoch_changes)
            self._epoch_logged = now

    def _drop_broken_channels(self) -> None:
        """After an error reply to XREAD: end the local streams of channels whose key is not a stream."""
        import redis

        channels = list(self._positions)
        try:
            with self._reader_redis.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.type(self._key(channel))
                kinds = pipe.execute()
        except (redis.RedisError, OSError):
            return  # tried again after the backoff
        for channel, kind in zip(channels, kinds, strict=True):
            if _text(kind) not in ("stream", "none"):
                log.error("Redis key %s is a %s, not a stream: ending the streams of channel %s",
                          self._key(channel), _text(kind), channel)
                self._positions.pop(channel, None)
                self._last.pop(channel, None)
                self.hub.lost_history(channel, 0)

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
                        key = self._counts_key(channel)
                        pipe.hset(key, self.worker_id, f"{count}:{expires}")
                        pipe.expire(key, int(3 * COUNT_REFRESH) + 1)
                    self._keep_epochs(pipe, list(local))
                    for channel in self._synced - local.keys():
                        pipe.hdel(self._counts_key(channel), self.worker_id)
                    pipe.execute()
                self._synced = set(local)
                # A change is written at once; the changes that follow within COUNT_GATHER (a burst of
                # connections or departures) wait for it and go in one write.
                time.sleep(COUNT_GATHER)
            except redis.RedisError as exc:
                if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                    log.error("Redis refused the subscriber counts: %s", exc)
                time.sleep(BACKOFF_MAX)
                self._counts_dirty.set()

    def _keep_epochs(self, pipe: Any, channels: list[str]) -> None:
        """The epochs of ``channels`` (subscribed to here) live at least EPOCH_KEEP seconds more. EVAL, not a
        registered script: a pipeline would ask SCRIPT EXISTS first, a round trip more each time."""
        if channels:
            pipe.execute_command("EVAL", KEEP_SCRIPT, len(channels), *[self._epoch_key(c) for c in channels],
                                 EPOCH_KEEP)

    # -- the rest of the engine interface -----------------------------------------------------------------------

    def history(self, channel: str, after: Key | None = None) -> list[Message]:
        return self.after(channel, after or (0, 0)).messages

    def forget(self, channel: str) -> None:
        pass  # the reader drops channels without local subscribers by itself

    def idle_since(self, channel: str) -> float:
        return 0.0

    def info(self, channel: str) -> dict[str, Any]:
        import redis

        self._ensure_started()
        size = self.size_for(channel)
        try:
            epoch, number, _, newest, oldest, flat = self._info_script(
                keys=[self._key(channel), self._epoch_key(channel), self._counts_key(channel)], args=[size])
        except self._outages() as exc:
            raise self._unavailable(exc) from None
        except redis.ResponseError as exc:
            raise self._refused(exc, f"the information of {channel}") from None
        subscribers = _sum_counts(dict(zip(flat[::2], flat[1::2], strict=True)))
        if not epoch or not int(number):
            return {"last_id": None, "history": 0, "oldest": None, "newest": None, "subscribers": subscribers}

        def stored(entries: list[Any]) -> Key | None:
            return parse_id(_text(entries[0][0])) if entries else None

        def when(entries: list[Any]) -> float | None:
            fields = dict(zip(entries[0][1][::2], entries[0][1][1::2], strict=True)) if entries else {}
            return int(fields[b"t"]) / 1000 if b"t" in fields else None

        first, last = stored(oldest), stored(newest)
        # Entries older than the history's age limit are not replayed: count from the first that is not.
        oldest_time = when(oldest)
        history = 0
        if first is not None and last is not None and first[0] == last[0]:
            history = last[1] - first[1] + 1
        newest_time = when(newest)
        if oldest_time is not None and oldest_time < time.time() - self.history_ttl:
            kept = self.history(channel)  # some are past the age limit: count what a replay would give
            history = len(kept)
            oldest_time, newest_time = (kept[0].time, kept[-1].time) if kept else (None, None)
        return {"last_id": f"{_text(epoch)}-{int(number)}", "history": history,
                "oldest": oldest_time if history else None, "newest": newest_time if history else None,
                "subscribers": subscribers}

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
        try:
            self._ensure_started()
            self._redis.ping()
        except ServiceUnavailable:
            return False
        except self._outages() as exc:
            self._unavailable(exc)
            return False
        return True

    # -- what the parts above keep in Redis, and say of it ----------------------------------------------------

    def presence(self) -> Presence:
        return RedisPresence(self)

    def lease(self, name: str, ttl: float) -> RedisLease:
        return RedisLease(self, name, ttl)

    def health(self) -> dict[str, Any]:
        self.ping()
        return {"redis": self.stats()["redis"]}

    def checks(self) -> dict[str, dict[str, Any]]:
        try:
            check: dict[str, Any] = {"ok": bool(self.ping())}
        except Exception as exc:  # noqa: BLE001 (reported, not raised)
            return {"redis": {"ok": False, "error": f"{type(exc).__name__}: {exc}"}}
        if not check["ok"]:
            check["error"] = self.stats().get("redis_error") or "unreachable"
        return {"redis": check}


class RedisPresence(Presence):
    """Who is in which room on every worker and host (the Redis hub): a hash per room,
    ``<prefix>room:<room>``, one field per member (``<worker>:<member>``) whose value is
    ``<user>\t<expires_ms>``. Each worker refreshes its own members' fields, so those of a worker that died
    expire. When Redis cannot be reached, the list is this worker's."""

    REFRESH = 10.0

    def __init__(self, engine: RedisEngine) -> None:
        super().__init__()
        self.engine = engine
        self._refresher: Any = None

    def _key(self, room: str) -> str:
        return f"{self.engine.prefix}room:{room}"

    def _field(self, member_id: int) -> str:
        return f"{self.engine.worker_id}:{member_id}"

    def _value(self, user: str) -> str:
        return f"{user}\t{int((time.time() + 3 * self.REFRESH) * 1000)}"

    def add(self, room: str, member_id: int, user: str) -> None:
        super().add(room, member_id, user)
        client = self.engine.client()
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.hset(self._key(room), self._field(member_id), self._value(user))
                pipe.expire(self._key(room), int(3 * self.REFRESH) + 1)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001  -- Redis unreachable: the member is still in the room here
            log.warning("could not record %r in room %r in Redis: %s", user, room, exc)
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_forever)

    def remove(self, room: str, member_id: int) -> None:
        super().remove(room, member_id)
        try:
            self.engine.client().hdel(self._key(room), self._field(member_id))
        except Exception:  # noqa: BLE001
            pass  # the field expires by itself

    def members(self, room: str) -> list[str]:
        try:
            fields = self.engine.client().hgetall(self._key(room))
        except Exception:  # noqa: BLE001
            return super().members(room)
        now = time.time() * 1000
        users = []
        for value in fields.values():
            user, _, expires = value.decode().rpartition("\t")
            if expires.isdigit() and int(expires) >= now:
                users.append(user)
        return sorted(users)

    def _refresh_forever(self) -> None:
        while True:
            gevent.sleep(self.REFRESH)
            try:
                with self.engine.client().pipeline(transaction=False) as pipe:
                    for room, members in list(self.rooms.items()):
                        for member_id, user in list(members.items()):
                            pipe.hset(self._key(room), self._field(member_id), self._value(user))
                        pipe.expire(self._key(room), int(3 * self.REFRESH) + 1)
                    pipe.execute()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not refresh room presence in Redis: %s", exc)


class RedisLease:
    """A Redis key that says which process runs a deployment-wide producer: set when free (NX), renewed
    and released only by its holder (a script compares the value), lapsing after ``ttl`` seconds."""

    def __init__(self, engine: RedisEngine, name: str, ttl: float) -> None:
        self.engine = engine
        engine.client()  # connects lazily, after the fork: the engine's id for this process exists from here
        self.key = f"{engine.prefix}lease:{name}"
        # Who holds it, for operators (and tests): host, process, and the engine's id for this process.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{engine.worker_id}"
        self.ttl_ms = int(ttl * 1000)
        self.held = False

    def acquire(self) -> bool:
        try:
            self.held = bool(self.engine.client().set(self.key, self.holder, nx=True, px=self.ttl_ms))
        except Exception as exc:  # noqa: BLE001 (Redis down: stand by, try again)
            log.debug("lease %s: %s", self.key, exc)
            self.held = False
        return self.held

    def renew(self) -> bool:
        try:
            self.held = bool(self.engine.client().eval(_RENEW, 1, self.key, self.holder, self.ttl_ms))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not renew lease %s: %s", self.key, exc)
            self.held = False
        return self.held

    def release(self) -> None:
        if self.held:
            try:
                self.engine.client().eval(_RELEASE, 1, self.key, self.holder)
            except Exception:  # noqa: BLE001 (it expires by itself)
                pass
            self.held = False


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def messages_before_lineage(last: Key | None, fields: dict[bytes, bytes]) -> bool:
    """Whether this worker delivered the channel before the primary changed (the entry starting the new
    epoch says where the old one ended, ``pe``-``pn``): its subscribers may have missed something."""
    return last is not None and last[0] <= int(fields[b"pe"])


def _sum_counts(counts: dict[bytes, bytes]) -> int:
    now = time.time() * 1000
    total = 0
    for value in counts.values():
        count, _, expires = value.decode().partition(":")
        if expires and int(expires) >= now:
            total += int(count)
    return total


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
