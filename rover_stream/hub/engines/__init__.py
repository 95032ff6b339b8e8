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
from typing import Any, Protocol

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
    """What the hub and the parts above it need of an engine.

    Called by the hub, with its lock held for a local engine: :meth:`head`, :meth:`after`, :meth:`history`,
    :meth:`forget`, :meth:`idle_since`, and for a local engine :meth:`append`, :meth:`holds` and
    :meth:`held_channels`; for a remote one :meth:`publish`, :meth:`track`, :meth:`set_local_count`,
    :meth:`wake_reader` and :meth:`attach`. Called by the parts above: :meth:`stats`, :meth:`presence`,
    :meth:`lease`, :meth:`health` and :meth:`checks`.
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


__all__ = ["Engine", "Lease", "Replay"]
