"""Engines: where a hub's messages get their ids and where history lives.

The :class:`~rover_stream.hub.Hub` fans messages out to this process's subscribers; an engine stores them.
Every engine implements :class:`Engine` below, and everything a deployment keeps in an engine's store --
room presence across workers, the lease that runs a producer once per deployment, what ``/health`` and
``/ready`` say of the store -- is reached through it, so nothing outside this folder knows which engine
runs. Adding an engine means adding a module here and choosing it in :func:`rover_stream.hub.create_hub`.

- :mod:`.memory` -- the embedded default: ids and bounded history in this process's memory. A local engine:
  the hub delivers a publish to its subscribers itself, under its lock.
- :mod:`.redis` -- Redis Streams, for several workers and hosts. A *remote* engine: a publish is stored,
  and every worker's reader (this one's too) delivers it, in stream order, through :meth:`Hub.deliver`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

from ..message import Key, Message
from ..presence import Presence


@dataclass
class Replay:
    """What a reconnecting subscriber gets from history: ``messages`` in order and, when its id could not
    be honoured, ``reset`` ("expired": older than the history; "unknown": not an id of this channel's
    history, e.g. from before a restart) with ``missed`` events lost (None when it cannot be known)."""

    messages: list[Message] = field(default_factory=list)
    reset: str | None = None
    missed: int | None = None


class Lease(Protocol):
    """Which process of a deployment runs a producer: one holds it at a time; it lapses if not renewed."""

    key: str
    holder: str

    def acquire(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...


class Engine(Protocol):
    """What the hub and the parts above it need of every engine. An engine is one of two kinds, declared by
    :attr:`remote`: a :class:`LocalEngine` (this process's store: the hub delivers under its lock) or a
    :class:`SharedEngine` (a store several processes share: each process's reader delivers).

    Called by the hub (with its lock held, for a local engine): :meth:`head`, :meth:`after`,
    :meth:`history`, :meth:`forget`, :meth:`idle_since`. Called by the parts above: :meth:`stats`,
    :meth:`presence`, :meth:`lease`, :meth:`health` and :meth:`checks`.
    """

    #: A short name for logs, metrics and ``/health``.
    name: str
    #: Whether the store is shared by several processes (their readers deliver) or this process's own.
    remote: bool

    def head(self, channel: str) -> Key:
        """The id of the channel's last message (or its start): a new subscriber's position."""

    def after(self, channel: str, key: Key | None) -> Replay:
        """What followed ``key`` (None: an id this engine cannot read), for a reconnecting subscriber."""

    def history(self, channel: str, after: Key | None = None) -> list[Message]:
        """The channel's kept messages, after ``after`` when given."""

    def forget(self, channel: str) -> None:
        """Drop what this process keeps of the channel (the hub is making room)."""

    def idle_since(self, channel: str) -> float:
        """When the channel last had a message here (0 if unknown): the idlest are forgotten first."""

    def info(self, channel: str) -> dict[str, Any]:
        """What the store holds of a channel: ``last_id`` (None before its first event), ``history`` (events
        a client resuming now could be given), ``oldest`` and ``newest`` (their times, or None), and
        ``subscribers`` across the deployment (None when only the hub knows: this process is it)."""

    def stats(self) -> dict[str, Any]:
        """Figures for ``/admin/stream-stats`` and the metrics; ``engine`` names the engine."""

    def presence(self) -> Presence:
        """Who is in which room: this process's members, or the deployment's for a shared store."""

    def lease(self, name: str, ttl: float) -> Lease | None:
        """A lease (lapsing after ``ttl`` seconds unrenewed) to run the producer ``name`` once per
        deployment; None when this process is the deployment (nothing to share)."""

    def health(self) -> dict[str, Any]:
        """Fields ``/health`` adds about the store (empty for an engine without one)."""

    def checks(self) -> dict[str, dict[str, Any]]:
        """Readiness checks of the store for ``/ready``: name -> ``{"ok": bool, ...}``."""


class LocalEngine(Engine, Protocol):
    """An engine whose store is this process's: the hub appends a publish and delivers it itself."""

    remote: Literal[False]

    def append(self, channel: str, event: str | None, data: Any, body: bytes) -> Message:
        """Store a message (``body``: its SSE encoding) and give it the channel's next id."""

    def holds(self, channel: str) -> bool:
        """Whether the channel has a history here."""

    def held_channels(self) -> list[str]:
        """The channels with a history here (the hub counts them against its channel limit)."""


class SharedEngine(Engine, Protocol):
    """An engine whose store several processes share. A publish is stored, and every process's reader
    (this one's too) hands it to its hub's :meth:`~rover_stream.hub.Hub.deliver`, in stream order."""

    remote: Literal[True]

    def attach(self, hub: Any) -> None:
        """The hub this process's reader delivers to."""

    def publish(self, channel: str, event: str | None, data: Any, body: bytes) -> tuple[Message, int]:
        """Store a message; returns it (with its id) and how many subscribers it reached, when known."""

    def track(self, channel: str, position: Key) -> bool:
        """Read ``channel`` from ``position`` on; True when the reader did not read it yet (wake it)."""

    def set_local_count(self, channel: str, count: int) -> None:
        """This process's subscribers of the channel (0: stop reading it)."""

    def wake_reader(self) -> None:
        """Make the reader take up newly tracked channels now."""

    def channels_matching(self, patterns: tuple[str, ...]) -> set[str]:
        """The channels the store has now whose names match one of ``patterns`` (``*`` globs)."""

    def watch_new_channels(self) -> None:
        """Hand every channel that begins from now on to the hub's :meth:`~rover_stream.hub.Hub.channel_began`
        (and, after any reconnection, call its ``rescan_patterns``)."""


#: What a hub runs on.
AnyEngine = Union[LocalEngine, SharedEngine]

__all__ = ["AnyEngine", "Engine", "LocalEngine", "Lease", "Replay", "SharedEngine"]
