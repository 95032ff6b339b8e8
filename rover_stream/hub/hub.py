"""The hub: channels and their local subscribers, in front of an engine that assigns ids and keeps history.

Thread safety: one lock guards the channel table, every engine call and every queueing of a message for
subscribers, so that publishing and subscribing are atomic with respect to each other (a new subscriber's
history snapshot and its place in the channel are taken together: nothing falls between them, nothing
arrives twice). Nothing done under the lock blocks -- ``put_nowait`` only, and signals are sent after
release -- so under gevent the lock is never contended, and it can be created before gunicorn forks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import signals
from ..concurrency import call_later, cooperate
from ..errors import ApiError, ServiceUnavailable
from ..wire.sse import encode
from .engines import AnyEngine, LocalEngine, Replay, SharedEngine
from .message import ORIGIN, Key, Message, parse_id
from .names import is_pattern, pattern_matcher, validate_channel, validate_pattern
from .subscription import Subscription


@dataclass(frozen=True)
class PublishResult:
    message: Message
    subscribers: int  # local subscribers it was queued for


class Channel:
    __slots__ = ("name", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        #: Insertion-ordered, so fan-out follows subscription order; a dict so that leaving is O(1) (a
        #: mass disconnect of n subscribers must not cost n**2). Read and changed under the hub's lock only.
        self.subscribers: dict[Subscription, None] = {}


class Hub:
    """Publish, subscribe, unsubscribe, history, stats. Get the app's hub with :func:`rover_stream.hub`."""

    def __init__(self, engine: AnyEngine, *, queue_size: int = 256, policy: str = "disconnect",
                 max_channels: int = 10_000, max_channels_per_stream: int = 32) -> None:
        self.engine: AnyEngine = engine
        #: Exactly one of the two is set: the engine seen as the kind it is.
        self._local: LocalEngine | None = None
        self._shared: SharedEngine | None = None
        if engine.remote:
            self._shared = engine
            engine.attach(self)
        else:
            self._local = engine
        self.remote = engine.remote
        self.queue_size = queue_size
        self.policy = policy
        self.max_channels = max_channels
        self.max_channels_per_stream = max_channels_per_stream
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}
        #: Subscriptions with patterns: every channel that begins is offered to them.
        self._pattern_subscriptions: dict[Subscription, None] = {}
        #: Set when a subscriber's queue is a quarter full: the publisher then yields to the writers (under
        #: gevent nothing else makes a busy publisher wait), so queues do not overflow while clients read.
        self.crowded = False
        self.published = 0
        self.delivered = 0  # queued for subscribers
        self.handed_out = 0  # taken by the subscribers' responses to be written (duplicates already dropped)
        self.replayed_out = 0  # of those, replayed from history
        self.dropped_slow = 0
        self.lost_events = 0
        self.subscriptions = 0
        self.replayed = 0
        self.resets = 0

    # -- publishing -------------------------------------------------------------------------------------------

    def publish(self, channel: str, data: Any, event: str | None = None) -> PublishResult:
        """Publish ``data`` (a str, or any JSON value) on ``channel``, optionally as event type ``event``.
        Raises :class:`~rover_stream.errors.EncodeError` for an event name with CR, LF or NUL, and
        :class:`~rover_stream.errors.ServiceUnavailable` when a remote engine cannot be reached."""
        validate_channel(channel)
        # JSON null is data like any other ("data: null"): the encoder's None means "no data line", and a
        # block without one is never dispatched by a browser.
        body = encode("null" if data is None else data, event=event)
        shared, local = self._shared, self._local
        if shared is not None:
            # The engine stores it; every worker's reader (this one's too) delivers it, in stream order.
            message, reached = shared.publish(channel, event, data, body)
            self.published += 1
            signals.emit(signals.message_published, self, message=message, subscribers=reached)
            return PublishResult(message, reached)
        assert local is not None
        with self._lock:
            if not local.holds(channel):
                self._make_room_for(channel)
            message = local.append(channel, event, data, body)
            found = self._channels.get(channel)
            if found is None and self._pattern_subscriptions:
                found = self._channels[channel] = Channel(channel)
                self._attach_patterns(found, (message.key[0], message.key[1] - 1))
                if not found.subscribers:
                    del self._channels[channel]
                    found = None
            reached, dropped = self._deliver(found, message) if found else (0, ())
            self.published += 1
        self._after_delivery(message, reached, dropped)
        if self.crowded:
            self.crowded = False
            cooperate()
        return PublishResult(message, reached)

    def deliver(self, messages: list[Message]) -> int:
        """Queue messages of one channel that a remote engine's reader received, in order, for this
        process's subscribers. Returns the deliveries made."""
        total = 0
        for message in messages:
            with self._lock:
                found = self._channels.get(message.channel)
                if found is None:
                    return total
                reached, dropped = self._deliver(found, message)
            total += reached
            for subscription in dropped:
                signals.emit(signals.subscriber_dropped, self, subscription=subscription,
                             channel=message.channel, policy=self.policy, dropped=subscription.lost)
            if self.crowded:
                self.crowded = False
                cooperate()
        return total

    def _deliver(self, channel: Channel, message: Message) -> tuple[int, tuple[Subscription, ...]]:
        """Queue ``message`` for the channel's subscribers (lock held). Returns how many took it, and those
        the slow-client policy disconnected."""
        reached = 0
        dropped: list[Subscription] = []
        for subscription in channel.subscribers:
            lost = subscription.lost
            if subscription.offer(message):
                reached += 1
                if subscription.lost != lost:
                    self.lost_events += 1
                    dropped.append(subscription)
            else:
                dropped.append(subscription)
        if dropped:
            gone = [s for s in dropped if s.dropped is not None]
            if gone:
                self.dropped_slow += len(gone)
                self._remove(gone)
        self.delivered += reached
        return reached, tuple(dropped)

    def lost_history(self, channel: str, missed: int) -> int:
        """A remote engine's reader found ``missed`` events of ``channel`` gone from the history before it
        could read them: end the channel's local subscribers (reason ``history_gap``), who resume from the
        history with their Last-Event-ID and are told what it no longer holds. Returns how many were ended."""
        with self._lock:
            found = self._channels.get(channel)
            gone = list(found.subscribers) if found is not None else []
            for subscription in gone:
                subscription.dropped = "history_gap"
                subscription.lost += missed
                subscription.wake()
            self._remove(gone)
            self.lost_events += missed * len(gone)
        for subscription in gone:
            signals.emit(signals.subscriber_dropped, self, subscription=subscription, channel=channel,
                         policy="history_gap", dropped=missed)
        return len(gone)

    def _after_delivery(self, message: Message, reached: int, dropped: tuple[Subscription, ...]) -> None:
        for subscription in dropped:
            signals.emit(signals.subscriber_dropped, self, subscription=subscription, channel=message.channel,
                         policy=self.policy, dropped=subscription.lost)
        signals.emit(signals.message_published, self, message=message, subscribers=reached)

    # -- subscribing ------------------------------------------------------------------------------------------

    def subscribe(self, channels: str | list[str] | tuple[str, ...], last_event_id: str | None = None,
                  format: str = "sse", may_read: Callable[[str], bool] | None = None) -> Subscription:
        """Subscribe to one channel or several. With ``last_event_id`` (what the client last saw, as sent in
        ``Last-Event-ID``) the subscription first replays what was missed. ``format="ws"`` (JSON) or
        ``"ws-text"`` (plain text) renders WebSocket frames (for room members) instead of SSE blocks.

        A name with ``*`` is a pattern (``sensors.*``): every matching channel is followed, those that exist
        now and those that begin later, up to ``max_channels_per_stream`` channels in all (the client is
        told of each one past it with ``event: reset``, ``too_many_channels``). ``may_read`` says whether a
        matching channel may be read (private ones need a token that covers them). Resuming with the
        stream's id replays exactly the channels it had followed, and whole the history of those that
        began since."""
        requested = (channels,) if isinstance(channels, str) else tuple(dict.fromkeys(channels))
        if not requested:
            raise ApiError("Subscribe to at least one channel.", code="invalid_channel")
        if len(requested) > self.max_channels_per_stream:
            raise ApiError(f"One stream may subscribe to at most {self.max_channels_per_stream} channels, "
                           f"not {len(requested)}.", code="too_many_channels")
        patterns = tuple(validate_pattern(name) for name in requested if is_pattern(name))
        names = tuple(validate_channel(name) for name in requested if not is_pattern(name))
        shared = self._shared
        over: list[str] = []
        if patterns:
            if shared is not None:
                found = shared.channels_matching(patterns)
            else:
                with self._lock:
                    found = set(self._held())
            matcher = pattern_matcher(patterns)
            matched = sorted(n for n in found if n not in names and matcher.fullmatch(n)
                             and (may_read is None or may_read(n)))
            room = max(0, self.max_channels_per_stream - len(names))
            names, over = names + tuple(matched[:room]), matched[room:]
        positions = _positions(names, last_event_id)
        subscription = Subscription(self, names, self.queue_size, self.policy, format, patterns)
        subscription.may_read = may_read
        for name in over:
            subscription.follow(name, ORIGIN, self.max_channels_per_stream)  # told it is not followed
        resets: list[tuple[str, str, int | None]] = []
        # A remote engine's head is read before joining the channel, its history after: whatever is
        # published in between arrives both ways, and the subscription's cursor drops the second copy.
        heads = {name: self.engine.head(name) for name in names} if shared is not None else {}
        if patterns and last_event_id is not None:
            # Resuming: a matching channel the stream's id does not name began after it was given, so the
            # client has seen none of it: all of its history, from its first event.
            for name in names:
                if name not in positions:
                    positions[name] = ((heads[name] if shared is not None else self.engine.head(name))[0], 0)
        new_channels = False
        with self._lock:
            for name in names:
                self._make_room_for(name)
            for name in names:
                start = positions.get(name)
                if shared is not None:
                    replay = None
                    new_channels |= shared.track(name, heads[name])
                elif last_event_id is None:
                    start, replay = self.engine.head(name), None
                else:
                    replay = self.engine.after(name, start)
                if replay is not None:
                    self._begin(subscription, name, start, replay, last_event_id, resets)
                elif shared is None:
                    subscription.begin_channel(name, start or ORIGIN, [], None, None, None)
                channel = self._channels.get(name)
                if channel is None:
                    channel = self._channels[name] = Channel(name)
                    if self._pattern_subscriptions:
                        self._attach_patterns(channel, heads[name] if shared is not None
                                              else self.engine.head(name))
                channel.subscribers[subscription] = None
                self._count_changed(channel)
            if patterns:
                self._pattern_subscriptions[subscription] = None
            self.subscriptions += 1
        if shared is not None:
            if patterns:
                # Channels that began between the look above and now were announced to nobody: look again.
                shared.watch_new_channels()
                for name in sorted(shared.channels_matching(patterns)):
                    if subscription.wants(name):
                        new_channels |= self._follow_new(name, self.engine.head(name)[:1] + (0,), [subscription])
            if new_channels:
                shared.wake_reader()
            try:
                for name in names:
                    start = positions.get(name) if last_event_id is not None else heads[name]
                    replay = self.engine.after(name, start)
                    if last_event_id is None:
                        replay.reset = None  # caught up from our own head: nothing can be missing
                    self._begin(subscription, name, start, replay, last_event_id, resets)
            except BaseException:
                self.unsubscribe(subscription, reason="error")
                raise
        subscription.finish_setup(sort=len(names) > 1)
        for name, reason, missed in resets:
            signals.emit(signals.replay_reset, self, subscription=subscription, channel=name, reason=reason,
                         missed=missed)
        signals.emit(signals.subscribed, self, subscription=subscription, channels=names,
                     replayed=len(subscription.backlog))
        return subscription

    def _begin(self, subscription: Subscription, name: str, start: Key | None, replay: Replay,
               last_event_id: str | None, resets: list[tuple[str, str, int | None]]) -> None:
        subscription.begin_channel(name, start or ORIGIN, replay.messages, replay.reset, replay.missed,
                                   last_event_id)
        self.replayed += len(replay.messages)
        if replay.reset is not None:
            self.resets += 1
            resets.append((name, replay.reset, replay.missed))

    def _count_changed(self, channel: Channel) -> None:
        if self._shared is not None:
            self._shared.set_local_count(channel.name, len(channel.subscribers))

    def _held(self) -> set[str]:
        """The channels this process keeps something of: subscribers, or (in-process engine) a history."""
        local = self._local
        return set(self._channels) if local is None else set(self._channels) | set(local.held_channels())

    def _make_room_for(self, name: str) -> None:
        """Keep the channels held within ``max_channels`` (lock held): to make room for ``name``, the idlest
        channels without subscribers are forgotten -- their histories too, so a client resuming on one later
        gets a reset --, a tenth of them at once so that a flood of new channels does not scan every time.
        When every channel has subscribers, 503 ``too_many_channels``."""
        if name in self._channels:
            return
        histories = 0 if self._local is None else len(self._local.held_channels())
        if len(self._channels) + histories < self.max_channels:  # a bound from above: the common case, cheaply
            return
        held = self._held()
        if name in held or len(held) < self.max_channels:
            return
        idle = [n for n in held if not (n in self._channels and self._channels[n].subscribers)]
        idle.sort(key=self.engine.idle_since)
        for forgotten in idle[: max(1, len(held) - self.max_channels + 1, self.max_channels // 10)]:
            self._channels.pop(forgotten, None)
            self.engine.forget(forgotten)
        if len(self._held()) >= self.max_channels:
            raise ServiceUnavailable(f"The hub holds its maximum of {self.max_channels} channels, all with "
                                     "subscribers.", code="too_many_channels")

    def end_at(self, subscription: Subscription, when: float, reason: str, final: bytes | None = None) -> None:
        """End ``subscription`` at ``when`` (a time.time(); a token's expiry): what it was sent until then
        is written, then ``final`` (a last event or frame), then its stream ends, with ``reason`` as its
        drop reason. Leaving earlier cancels it."""

        def end() -> None:
            with self._lock:
                subscription.timer = None
                subscription.end(reason, final)
            signals.emit(signals.subscriber_dropped, self, subscription=subscription,
                         channel=subscription.channels[0], policy=reason, dropped=0)

        if subscription.timer is not None:
            subscription.timer.cancel()
        subscription.timer = call_later(when - time.time(), end)

    def _attach_patterns(self, channel: Channel, position: Key) -> None:
        """A channel object was made (lock held): the pattern subscriptions that match it follow it from
        ``position`` on."""
        for subscription in self._pattern_subscriptions:
            if subscription.wants(channel.name) and subscription.follow(channel.name, position,
                                                                        self.max_channels_per_stream):
                channel.subscribers[subscription] = None
        self._count_changed(channel)

    def _follow_new(self, name: str, position: Key, subscriptions: list[Subscription]) -> bool:
        """``subscriptions`` (pattern ones) follow ``name`` from ``position`` on; a remote engine's reader
        starts reading it. True when the reader must be woken."""
        shared = self._shared
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = Channel(name)
            for subscription in subscriptions:
                if not subscription.closed and subscription.wants(name) and subscription.follow(
                        name, position, self.max_channels_per_stream):
                    channel.subscribers[subscription] = None
            self._count_changed(channel)
            return shared is not None and bool(channel.subscribers) and shared.track(name, position)

    def channel_began(self, name: str, epoch: int) -> None:
        """A remote engine's channel ``name`` had its first event (of epoch ``epoch``): the pattern
        subscriptions here that match it follow it from that event on."""
        if not self._pattern_subscriptions:
            return
        wanting = [s for s in list(self._pattern_subscriptions) if s.wants(name)]
        if wanting and self._follow_new(name, (epoch, 0), wanting) and self._shared is not None:
            self._shared.wake_reader()

    def rescan_patterns(self) -> None:
        """A remote engine's watcher of new channels (re)connected: channels that began while it was away
        are looked up once and offered to the pattern subscriptions here."""
        shared = self._shared
        subscriptions = list(self._pattern_subscriptions)
        if shared is None or not subscriptions:
            return
        patterns = tuple(sorted({p for s in subscriptions for p in s.patterns}))
        wake = False
        for name in sorted(shared.channels_matching(patterns)):
            wanting = [s for s in subscriptions if s.wants(name)]
            if wanting:
                wake |= self._follow_new(name, (shared.head(name)[0], 0), wanting)
        if wake:
            shared.wake_reader()

    def unsubscribe(self, subscription: Subscription, reason: str = "closed") -> None:
        with self._lock:
            self._remove([subscription])
        signals.emit(signals.unsubscribed, self, subscription=subscription, reason=reason)

    def _remove(self, subscriptions: list[Subscription]) -> None:
        for subscription in subscriptions:
            self._pattern_subscriptions.pop(subscription, None)
            for name in subscription.channels:
                channel = self._channels.get(name)
                if channel is not None and subscription in channel.subscribers:
                    del channel.subscribers[subscription]
                    self._count_changed(channel)

    # -- reading ----------------------------------------------------------------------------------------------

    def history(self, channel: str, after: str | None = None) -> list[Message]:
        """The messages ``channel`` still keeps, oldest first; only those after id ``after`` if given."""
        validate_channel(channel)
        key = parse_id(after) if after else None
        if self._shared is not None:  # a network round trip: never with the lock held (readers deliver under it)
            return self._shared.history(channel, key)
        with self._lock:
            return self.engine.history(channel, key)

    def info(self, channel: str) -> dict[str, Any]:
        """What a channel holds: its subscribers (every worker and host's, on a shared engine), last id,
        history length and time span. See :meth:`Engine.info`."""
        validate_channel(channel)
        if self._shared is not None:  # a network round trip: never with the lock held
            info = self._shared.info(channel)
        else:
            with self._lock:
                info = self.engine.info(channel)
                found = self._channels.get(channel)
                info["subscribers"] = len(found.subscribers) if found else 0
        return {"channel": channel, **info}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            per_channel = {name: len(c.subscribers) for name, c in self._channels.items() if c.subscribers}
        return {
            **self.engine.stats(),
            "channels": len(per_channel),
            "subscribers": sum(per_channel.values()),
            "subscribers_per_channel": per_channel,
            "published": self.published,
            "delivered": self.delivered,
            "slow_subscribers_disconnected": self.dropped_slow,
            "events_dropped": self.lost_events,
            "subscriptions": self.subscriptions,
            "events_replayed": self.replayed,
            "resets": self.resets,
            "time": time.time(),
        }


def _positions(channels: tuple[str, ...], last_event_id: str | None) -> dict[str, Key]:
    """Parse a Last-Event-ID: ``<id>`` for one channel, ``chan:<id>,chan:<id>`` for several. Channels the
    id does not cover, or covers with garbage, are absent (their replay is an "unknown" reset)."""
    if not last_event_id:
        return {}
    if ":" not in last_event_id:
        key = parse_id(last_event_id.strip())
        return {channels[0]: key} if key is not None and len(channels) == 1 else {}
    positions: dict[str, Key] = {}
    for part in last_event_id.split(",")[:1000]:
        name, _, text = part.strip().partition(":")
        key = parse_id(text)
        if key is not None and name in channels:
            positions[name] = key
    return positions
