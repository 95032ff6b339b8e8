"""A subscription: one client's bounded queue of messages, and the feed its SSE response reads.

What the client receives, in order:

1. a *position* block, ``id: <cursor>`` with no data: EventSource stores it as its last event id without
   dispatching anything, so even a client that drops before the first event resumes exactly;
2. for each channel whose ``Last-Event-ID`` could not be honoured, an ``event: reset`` whose data says
   which channel, why (``"expired"``: older than the history; ``"unknown"``: not an id of this history,
   e.g. from before a restart) and how many events were lost when that is known; then the history that is
   still there;
3. the replayed events, then live ones. Nothing is sent twice: every channel has a cursor, and a message at
   or below it is skipped.

A subscriber that falls ``SUBSCRIBER_QUEUE_SIZE`` events behind meets the slow-client policy:
``disconnect`` ends its stream (the client reconnects with its Last-Event-ID and catches up from history);
``drop-oldest`` discards its oldest waiting message. Either way nobody else waits, and its memory is bounded.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..transport.pipe import FeedEnded
from .message import ORIGIN, Key, Message, format_id
from .names import pattern_matcher


class Owner(Protocol):
    """What a subscription needs of the hub that made it (:class:`~rover_stream.hub.Hub`): counters it
    adds to, the hint that publishing should let the writers run, and leaving."""

    crowded: bool
    handed_out: int
    replayed_out: int

    def unsubscribe(self, subscription: Subscription, reason: str = "closed") -> None: ...

_WAKE = object()
_ids = itertools.count(1)

#: Most replayed messages handed to the response per write.
REPLAY_BATCH = 256


class Subscription:
    """Created by :meth:`Hub.subscribe`; pass it to :func:`rover_stream.sse_response`."""

    def __init__(self, hub: Owner, channels: tuple[str, ...], queue_size: int, policy: str,
                 format: str = "sse", patterns: tuple[str, ...] = ()) -> None:
        self.id = next(_ids)
        self.hub = hub
        self.channels = channels
        #: Pattern subscriptions (``sensors.*``): the hub adds each matching channel as it appears.
        self.patterns = patterns
        self.matcher: re.Pattern[str] | None = pattern_matcher(patterns) if patterns else None
        #: Whether a channel a pattern matches may be read (a private one needs the token to cover it).
        self.may_read: Callable[[str], bool] | None = None
        #: Channels a pattern matched past the stream's bound, which were announced and are not followed.
        self.refused: set[str] = set()
        self.multi = len(channels) > 1 or bool(patterns)
        # Frames for a WebSocket room member instead of SSE blocks: JSON ("ws") or plain text ("ws-text").
        self.websocket = format in ("ws", "ws-text")
        self._frame = Message.ws_text_frame if format == "ws-text" else Message.ws_frame
        self._seen: Key = ORIGIN  # the cursor of a single-channel subscription (``cursor`` for several)
        self.policy = policy
        self.queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._crowded_at = queue_size // 4
        self.cursor: dict[str, Key] = {}
        self.backlog: deque[Message] = deque()
        self.preamble: list[bytes] = []
        self.dropped: str | None = None  # why the hub let go of this subscriber
        #: Written after everything queued when the hub ends the subscription (:meth:`end`), then nothing.
        self.final: bytes | None = None
        #: The hub's timer that ends the subscription at a given time (a token's expiry), if any.
        self.timer: Any = None
        self.closed = False
        self.delivered = 0
        self.taken_time = 0.0  # publish time of the oldest message handed out by the last take (latency)
        self.lost = 0
        #: Called (from the hub, must not block) when something was queued: parked streams use it.
        self.notify: Callable[[], None] | None = None

    # -- the hub's side (called with the hub's lock held: nothing here may block) ----------------------------

    def offer(self, message: Message) -> bool:
        """Queue ``message``; False if the subscriber is too slow and the policy let go of it."""
        try:
            self.queue.put_nowait(message)
        except queue.Full:
            pass
        else:
            if self.notify is not None:
                self.notify()
            if self.queue.qsize() > self._crowded_at:
                self.hub.crowded = True  # the publisher lets the writers run before its next event
            return True
        if self.policy == "drop-oldest":
            try:
                self.queue.get_nowait()
            except queue.Empty:
                pass
            self.lost += 1
            try:
                self.queue.put_nowait(message)
            except queue.Full:
                pass
            if self.notify is not None:
                self.notify()
            return True
        self.dropped = "slow_client"
        self._clear()
        return False

    def end(self, reason: str, final: bytes | None) -> None:
        """Let go of the subscriber (lock held): what is queued is still sent, then ``final``, then the
        stream ends."""
        if self.dropped is None and not self.closed:
            self.dropped = reason
            self.final = final
            self.wake()

    def _last_words(self) -> list[bytes]:
        """The subscription was let go of and everything queued is out: ``final``, once, then the end."""
        if self.final is None:
            raise FeedEnded
        final, self.final = self.final, None
        self.wake()  # so that the writer comes back for the end
        return [final]

    def _clear(self) -> None:
        """Free what is queued and wake the response, which then ends the stream."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.wake()

    # -- the response's side ----------------------------------------------------------------------------------

    def take_nowait(self) -> list[bytes]:
        """What is ready now (preamble, a batch of replay, everything queued), rendered; raises FeedEnded
        once the hub has let go of this subscriber or it was closed."""
        if not (self.preamble or self.backlog or self.multi or self.websocket or self.dropped is not None
                or self.closed):
            # The hot path: one channel, live events only.
            queue_ = self.queue
            count = queue_.qsize()
            if count == 1:
                message = queue_.get_nowait()
                if message is _WAKE or message.key <= self._seen:
                    return []
                self._seen = message.key
                self.delivered += 1
                self.hub.handed_out += 1
                self.taken_time = message.time
                return [message.payload]
            if not count:
                return []
        return self._take_general()

    def _take_general(self) -> list[bytes]:
        if self.preamble:
            taken, self.preamble = self.preamble, []
            return taken
        while self.backlog:
            batch = [self.backlog.popleft() for _ in range(min(REPLAY_BATCH, len(self.backlog)))]
            rendered = self._render(batch)
            self.taken_time = 0.0  # a replay's age is not a delivery latency
            self.hub.replayed_out += len(rendered)
            if rendered:
                return rendered
        if self.closed:
            raise FeedEnded
        queue_ = self.queue
        count = queue_.qsize()
        if not count:
            if self.dropped is not None:
                return self._last_words()
            return []
        get = queue_.get_nowait
        items = []
        for _ in range(count):
            try:
                items.append(get())
            except queue.Empty:
                break
        rendered = self._render(items)
        if self.dropped is not None:
            # What was queued before the hub let go is still sent (a slow client's queue was emptied);
            # the stream ends at the next take.
            if not rendered:
                return self._last_words()
            self.wake()
        return rendered

    def take(self, timeout: float) -> list[bytes] | None:
        ready = self.take_nowait()
        if ready:
            return ready
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        rendered = self._render([first]) + self.take_nowait()
        # Nothing to send (a wake-up, or duplicates): None, and the response looks at its flags.
        return rendered or None

    def _render(self, messages: list[Any]) -> list[bytes]:
        for message in messages:
            if message is not _WAKE:
                self.taken_time = message.time
                break
        out: list[bytes] = []
        cursor = self.cursor
        if self.websocket:
            seen = self._seen
            frame = self._frame
            for message in messages:
                if message is _WAKE or message.key <= seen:
                    continue
                seen = message.key
                out.append(frame(message))
            self._seen = seen
        elif not self.multi:
            seen = self._seen
            for message in messages:
                if message is _WAKE or message.key <= seen:
                    continue
                seen = message.key
                out.append(message.payload)
            self._seen = seen
        else:
            for message in messages:
                if message is _WAKE or message.key <= cursor[message.channel]:
                    continue
                cursor[message.channel] = message.key
                out.append(b"id: " + self.cursor_text().encode() + b"\n" + message.wrapped())
        self.delivered += len(out)
        self.hub.handed_out += len(out)
        return out

    def cursor_text(self) -> str:
        """The id that resumes this subscription: the message id for one channel, ``chan:id,...`` for
        several."""
        if not self.multi:
            return format_id(self._seen)
        if not self.channels:  # patterns that matched nothing yet: an id all the same, so that the client
            return "-"         # says it is resuming (and gets whole the channels that began meanwhile)
        return ",".join(f"{channel}:{format_id(self.cursor[channel])}" for channel in self.channels)

    def wake(self) -> None:
        try:
            self.queue.put_nowait(_WAKE)
        except queue.Full:
            pass  # the response has plenty to take, and will look at the flags when it does
        if self.notify is not None:
            self.notify()

    def close(self) -> None:
        """The client is gone: leave the hub."""
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.hub.unsubscribe(self, reason=self.dropped or "closed")

    # -- set-up, by the hub -------------------------------------------------------------------------------------

    def wants(self, channel: str) -> bool:
        """Whether one of this subscription's patterns matches ``channel``, and it is not followed yet."""
        matcher = self.matcher
        return (matcher is not None and channel not in self.cursor and channel not in self.refused
                and matcher.fullmatch(channel) is not None and (self.may_read is None or self.may_read(channel)))

    def follow(self, channel: str, position: Key, limit: int) -> bool:
        """Follow ``channel``, which a pattern matched, from ``position`` on (lock held). Past ``limit``
        channels it is not followed: the client is told once (``event: reset``, ``too_many_channels``) and
        False is returned."""
        if len(self.channels) >= limit:
            if len(self.refused) < limit:  # told once per channel, at most ``limit`` times
                self.refused.add(channel)
                info = {"channel": channel, "reason": "too_many_channels", "last_event_id": None, "missed": None,
                        "replayed": 0, "limit": limit}
                self.preamble.append(("event: reset\ndata: " + json.dumps(info, separators=(",", ":")) + "\n\n")
                                     .encode())
                self.wake()
            return False
        self.channels = (*self.channels, channel)
        self.cursor[channel] = position
        return True

    def begin_channel(self, channel: str, position: Key, replay: list[Message], reset: str | None,
                      missed: int | None, last_event_id: str | None) -> None:
        """Record where ``channel`` starts for this subscriber, and what it must be sent first."""
        if reset is not None:
            position = ORIGIN
            info = {"channel": channel, "reason": reset, "last_event_id": last_event_id, "missed": missed,
                    "replayed": len(replay)}
            self.preamble.append(("event: reset\ndata: " + json.dumps(info, separators=(",", ":")) + "\n\n")
                                 .encode())
        self.cursor[channel] = position
        if not self.multi:
            self._seen = position
        self.backlog.extend(replay)

    def finish_setup(self, sort: bool) -> None:
        if sort:  # several channels replayed: interleave them in publication order
            self.backlog = deque(sorted(self.backlog, key=lambda m: m.time))
        # The position block comes first: it sets the client's last event id without dispatching.
        if not self.websocket:
            self.preamble.insert(0, ("id: " + self.cursor_text() + "\n\n").encode())

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {','.join(self.channels)}>"
