"""Room presence: who is in which room. This process's members here; an engine with a shared store keeps the
deployment's (:meth:`rover_stream.hub.engines.Engine.presence`)."""

from __future__ import annotations


class Presence:
    """Who is in which room, in this process (the in-process engine's)."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[int, str]] = {}

    def add(self, room: str, member_id: int, user: str) -> None:
        self.rooms.setdefault(room, {})[member_id] = user

    def remove(self, room: str, member_id: int) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.pop(member_id, None)
            if not members:
                del self.rooms[room]

    def members(self, room: str) -> list[str]:
        return sorted(self.rooms.get(room, {}).values())
