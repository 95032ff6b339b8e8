"""The Redis Cluster engine: the Redis engine's streams, epochs, replay and counts, sharded across a cluster.

``ROVER_REDIS_URL=redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS; a user name and
password as in ``redis://``). The nodes listed are where the client starts: it learns the rest of the
cluster, and its changes (failovers, resharding), from them.

**Keys.** A channel's keys carry the channel's name as a hash tag -- ``<prefix>ch:{<channel>}``,
``<prefix>epoch:{<channel>}``, ``<prefix>subs:{<channel>}`` -- so that they live in one slot, on one
shard, and the publishing script (the same as on one Redis: number, append, refresh) can touch them all.
Channels spread over the shards by name.

**Reading.** A multi-key ``XREAD`` must stay within one slot, so one blocking ``XREAD`` per worker, as on
one Redis, cannot read channels spread over a cluster. Instead the publishing script also sends the entry
it appended on the channel's *sharded* Pub/Sub channel, ``<prefix>wake:{<channel>}`` (``SPUBLISH``, Redis
7; same slot). Each worker keeps one subscriber connection per shard that holds channels with subscribers
here (connections stay constant per worker: at most one per primary, plus the bounded pool), and:

- delivers an entry that follows the last one it delivered (same epoch, next number) as it comes, with no
  further round trip;
- drops one it already delivered;
- after anything else -- its subscription just confirmed, an entry that skips numbers (a message lost while
  the connection was down), a new epoch -- reads the stream itself (``XRANGE`` after the last entry
  delivered) and hands that to the same gap and epoch rule as on one Redis: what the stream still holds is
  delivered in order, and what it lost ends the channel's local subscribers, who resume with
  ``Last-Event-ID`` and get ``event: reset``.

Pub/Sub only wakes: the stream is the truth, so a lost message delays an entry until the next one (or the
next subscription confirmation) but never loses it. When a shard fails, its readers reconnect to whichever
node now owns their channels' slots (a replica promoted by the cluster) and catch up from the stream.

**Failover.** Redis replicates asynchronously: an event that a primary acknowledged and had not yet sent
to its replica is lost when that replica takes over. Such a loss is a gap in the numbers (or a new epoch, if
the channel's epoch hash was lost too), so subscribers are told with ``event: reset``; it is never a
silent hole. See SECURITY.md for the figures measured.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ...concurrency import spawn
from ...errors import ApiError
from ...settings import parse_cluster_url
from ..message import format_id, parse_id
from .redis import EPOCH_KEEP, KEEP_SCRIPT, POOL_SIZE, PUBLISH_TEMPLATE, READ_COUNT, RedisEngine

log = logging.getLogger("rover_stream.redis")

#: The publishing script, with two additions. After numbering: when the primary serving the channel's slot
#: is not the one that numbered its last event (its replication id changed: a replica took over, or the
#: slot moved), a new epoch starts -- Redis replicates asynchronously, so the last primary may have
#: acknowledged events this one never received, and their numbers would be given out again. The epoch's
#: first entry says where the old one ended (``pe``, ``pn``). After appending: the entry is sent on the
#: channel's sharded Pub/Sub channel (KEYS[4]): ``<id>\n<ms>\n<len event>\n<len body>\n<event><body><data>``.
CLUSTER_PUBLISH_SCRIPT = PUBLISH_TEMPLATE.replace("-- ON NUMBERED", """
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local was = redis.call('HGET', KEYS[2], 'r')
if was and was ~= replid and n > 1 then
  extra = {'pe', e, 'pn', string.format('%.0f', n - 1)}
  e = new_epoch(now)
  n = 1
  redis.call('HSET', KEYS[2], 'e', e, 'n', 1)
  renew = true
end
if was ~= replid then
  redis.call('HSET', KEYS[2], 'r', replid)
end""").replace("-- ON APPENDED", """
redis.call('SPUBLISH', KEYS[4], id .. '\\n' .. t .. '\\n' .. string.len(ARGV[6]) .. '\\n' .. string.len(ARGV[4])
  .. '\\n' .. ARGV[6] .. ARGV[4] .. ARGV[5])""")
assert "ON NUMBERED" not in CLUSTER_PUBLISH_SCRIPT and "ON APPENDED" not in CLUSTER_PUBLISH_SCRIPT

#: Seconds a shard reader waits for a message before its housekeeping (channels nobody here listens to
#: any more) and a PING that proves its connection alive.
IDLE_WAIT = 1.0
PING_EVERY = 5.0
#: Seconds a shard reader waits after an error: its node is briefly away, or failing over.
RETRY_WAIT = 0.25

class RedisClusterEngine(RedisEngine):
    name = "redis-cluster"
    publish_script = CLUSTER_PUBLISH_SCRIPT

    def channels_matching(self, patterns: tuple[str, ...]) -> set[str]:
        raise ApiError("Pattern subscriptions (a channel name with *) are not available on Redis Cluster yet: "
                       "name the channels, or use one Redis.", status=501, code="patterns_unsupported")

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.options = parse_cluster_url(url)
        super().__init__(url, **kwargs)

    # -- keys: one hash tag per channel ---------------------------------------------------------------------

    def _key(self, channel: str) -> str:
        return f"{self.prefix}ch:{{{channel}}}"

    def _epoch_key(self, channel: str) -> str:
        return f"{self.prefix}epoch:{{{channel}}}"

    def _counts_key(self, channel: str) -> str:
        return f"{self.prefix}subs:{{{channel}}}"

    def _wake_channel(self, channel: str) -> str:
        return f"{self.prefix}wake:{{{channel}}}"

    def _publish_keys(self, channel: str) -> list[str]:
        return [*super()._publish_keys(channel), self._wake_channel(channel)]

    def _run_publish_script(self, keys: list[str], args: list[Any]) -> Any:
        return self._publish_script(keys=keys, args=args)  # redis-py routes it to the channel's node

    def _channel_of(self, wake_channel: str) -> str:
        return wake_channel[len(self.prefix) + 6:-1]

    # -- connections -------------------------------------------------------------------------------------------

    def _node_options(self) -> dict[str, Any]:
        options = self.options
        return {"username": options["username"], "password": options["password"],
                "socket_connect_timeout": self.timeout}

    def _connect(self) -> Any:
        import redis
        from redis.cluster import ClusterNode, RedisCluster

        from redis.exceptions import RedisClusterException

        (host, port), *others = self.options["nodes"]
        # Given as a URL, the first node makes the client build each node's pool with connection_pool_class:
        # a bounded pool per node on which a burst of publishers waits (up to the timeout) instead of failing.
        first = f"[{host}]" if ":" in host else host
        try:
            return RedisCluster(
                url=f"{'rediss' if self.options['ssl'] else 'redis'}://{first}:{port}",
                startup_nodes=[ClusterNode(h, p) for h, p in others],  # type: ignore[no-untyped-call]
                connection_pool_class=redis.BlockingConnectionPool, max_connections=POOL_SIZE,
                timeout=self.timeout, socket_timeout=self.timeout, require_full_coverage=False,
                **self._node_options())
        except RedisClusterException as exc:  # no node answered: tried again by the next request
            raise self._unavailable(exc) from None

    def _outages(self) -> tuple[type[Exception], ...]:
        from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

        # The cluster is electing a new primary (CLUSTERDOWN, TRYAGAIN), or no node of it answers.
        return (*super()._outages(), ClusterDownError, TryAgainError, RedisClusterException)

    def _start_reader(self) -> None:
        self._shard_readers: dict[str, ShardReader] = {}  # node name -> its reader
        self._routed: dict[str, ShardReader] = {}  # channel -> the reader subscribed to it

    def wake_reader(self) -> None:
        """Subscribe the shard readers to channels that got their first subscriber here."""
        for channel in [c for c in self._positions if c not in self._routed]:
            self._route(channel)

    def _route(self, channel: str) -> None:
        try:
            node = self._redis.get_node_from_key(self._key(channel))
        except Exception as exc:  # noqa: BLE001 (no topology yet: the readers route it when they reconnect)
            log.warning("Redis Cluster: no node for channel %s yet: %s", channel, exc)
            return
        reader = self._shard_readers.get(node.name)
        if reader is None or reader.stopped:
            reader = self._shard_readers[node.name] = ShardReader(self, node.name, node.host, node.port)
        self._routed[channel] = reader
        reader.subscribe(channel)

    def _reroute(self, channels: list[str]) -> None:
        """A shard's reader lost its node, or the node gave up a slot: learn the cluster's layout again and
        subscribe ``channels`` where their slots now live (each catches up from its stream when confirmed)."""
        try:
            self._redis.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 (the cluster is still electing: tried again by the reader)
            log.warning("Redis Cluster: could not read the cluster's layout: %s", exc)
            raise
        for channel in channels:
            self._routed.pop(channel, None)
            if channel in self._positions:
                self._route(channel)

    def _keep_epochs(self, pipe: Any, channels: list[str]) -> None:
        for channel in channels:  # one slot per call; EVAL, as a cluster pipeline does not load scripts
            pipe.execute_command("EVAL", KEEP_SCRIPT, 1, self._epoch_key(channel), EPOCH_KEEP)

    def catch_up(self, channel: str) -> None:
        """Read the channel's stream after the last entry this worker read, and deliver it (gaps and new
        epochs as on one Redis). Raises redis-py's errors."""
        import redis

        while channel in self._positions:
            after = self._last.get(channel) or self._positions[channel]
            try:
                entries = self._redis.xrange(self._key(channel), min=f"({format_id(after)}", count=READ_COUNT)
            except redis.ResponseError as exc:  # not a stream any more (written by something else)
                log.error("Redis refused to read channel %s (%s): ending its streams", channel, exc)
                self._forget_channel(channel)
                self.hub.lost_history(channel, 0)
                return
            if entries:
                self._deliver_entries(channel, entries)
            if len(entries) < READ_COUNT:
                return

    def on_entry(self, channel: str, payload: bytes) -> None:
        """An entry sent on the channel's sharded Pub/Sub channel by the publishing script."""
        if channel not in self._positions:
            return
        last = self._last.get(channel)
        if last is None:
            self.catch_up(channel)
            return
        head, _, rest = payload.partition(b"\n")
        stored, _, rest = rest.partition(b"\n")
        event_length, _, rest = rest.partition(b"\n")
        body_length, _, rest = rest.partition(b"\n")
        key = parse_id(head.decode("ascii", "replace"))
        if key is None or not event_length.isdigit() or not body_length.isdigit():
            self.catch_up(channel)
            return
        if key <= last:
            return  # delivered already (read from the stream while this message waited)
        if key[0] != last[0] or key[1] != last[1] + 1:
            self.catch_up(channel)  # numbers skipped, or a new epoch: the stream decides
            return
        e, b = int(event_length), int(body_length)
        fields = {b"e": rest[:e], b"b": rest[e:e + b], b"d": rest[e + b:], b"t": stored}
        self._deliver_entries(channel, [(head, fields)])

    def _forget_channel(self, channel: str) -> None:
        self._positions.pop(channel, None)
        self._last.pop(channel, None)
        self._routed.pop(channel, None)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        readers = getattr(self, "_shard_readers", {})
        stats["shard_readers"] = sum(1 for r in readers.values() if not r.stopped)
        return stats


class ShardReader:
    """The subscriber connection of one worker to one cluster node: the sharded Pub/Sub channels of the
    channels (with subscribers here) whose slots that node serves. Its greenlet reads; subscribing is a
    write from the caller (the reader's greenlet never waits for one)."""

    def __init__(self, engine: RedisClusterEngine, name: str, host: str, port: int) -> None:
        import redis

        self.engine = engine
        self.name = name
        self.channels: set[str] = set()
        self.stopped = False
        # No health check of redis-py's: it would read the answer to its PING in the caller's greenlet while
        # this reader's greenlet reads the same connection. This reader pings, and reads the pong, itself.
        self.client: Any = redis.Redis(host=host, port=port, socket_timeout=None, health_check_interval=0,
                                       ssl=engine.options["ssl"], **engine._node_options())
        self.pubsub: Any = self.client.pubsub()  # type: ignore[no-untyped-call]
        self.greenlet = spawn(self._run, name=f"rover-stream-redis-shard-{name}")

    def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        try:
            self.pubsub.ssubscribe(self.engine._wake_channel(channel))
        except Exception as exc:  # noqa: BLE001 (the reader's reconnection subscribes it again)
            log.debug("Redis Cluster: subscribing %s on %s failed for now: %s", channel, self.name, exc)

    def _run(self) -> None:
        import redis

        engine = self.engine
        swept = pinged = time.monotonic()
        waiting_pong = False
        while not self.stopped:
            try:
                if not self.pubsub.subscribed:
                    if not self.channels:
                        self._stop()
                        return
                    self.pubsub.ssubscribe(*[engine._wake_channel(c) for c in self.channels])
                message = self.pubsub.get_message(timeout=IDLE_WAIT)
                now = time.monotonic()
                if message is not None:
                    self._handle(message)
                    if message["type"] in ("pong", b"pong"):
                        waiting_pong = False
                elif waiting_pong and now - pinged > PING_EVERY:
                    raise redis.ConnectionError(f"no answer to a PING from {self.name}")
                if now - pinged > PING_EVERY and not waiting_pong:
                    self.pubsub.ping()
                    pinged, waiting_pong = now, True
                if now - swept > IDLE_WAIT:
                    swept = now
                    self._sweep()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("Redis Cluster: the reader of node %s lost its connection (%s)", self.name, exc)
                engine.connected = False
                engine.last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(RETRY_WAIT)
                self._hand_back()
                return
            except redis.RedisError as exc:
                log.error("Redis Cluster: the reader of node %s: %s", self.name, exc)
                time.sleep(RETRY_WAIT)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        name = message.get("channel")
        if name is None or kind not in ("smessage", "ssubscribe", "sunsubscribe"):
            return
        channel = self.engine._channel_of(name.decode() if isinstance(name, bytes) else name)
        if self.engine._routed.get(channel) is not self:
            return  # routed elsewhere since, or dropped
        if kind == "smessage":
            self.engine.on_entry(channel, message["data"])
        elif kind == "ssubscribe":
            self.engine.catch_up(channel)  # what was published before the subscription took effect
        elif channel in self.channels:  # the node gave the slot away (resharding, failover)
            self.channels.discard(channel)
            self.engine._reroute([channel])

    def _sweep(self) -> None:
        """Unsubscribe from channels nobody here listens to any more."""
        engine = self.engine
        gone = [c for c in self.channels if c not in engine._local]
        for channel in gone:
            self.channels.discard(channel)
            if engine._routed.get(channel) is self:
                engine._forget_channel(channel)
        if gone:
            self.pubsub.sunsubscribe(*[engine._wake_channel(c) for c in gone])

    def _hand_back(self) -> None:
        """This node is gone (or unreachable): its channels go to where their slots live now."""
        engine = self.engine
        channels = [c for c in self.channels if engine._routed.get(c) is self]
        self._stop()
        while channels:
            try:
                engine._reroute(channels)
                return
            except Exception:  # noqa: BLE001 (the cluster has not elected a new primary yet)
                time.sleep(RETRY_WAIT)
                for channel in [c for c in channels if c not in engine._local]:  # nobody listens any more
                    engine._forget_channel(channel)
                channels = [c for c in channels if c in engine._positions]

    def _stop(self) -> None:
        self.stopped = True
        self.channels.clear()
        if self.engine._shard_readers.get(self.name) is self:
            del self.engine._shard_readers[self.name]
        try:
            self.pubsub.reset()
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
