"""Start-up checks of a server's configuration, shared by ``rover-stream serve`` (which answers before
gunicorn starts) and the gunicorn hooks (which also see flags given to gunicorn itself). Importing this
module does nothing else."""

from __future__ import annotations


def split_hub_problem(workers: int, redis_url: str | None) -> str | None:
    """Why ``workers`` processes cannot share the hub, or None. Each worker holds its own in-process hub:
    without Redis a subscriber on one worker never sees what is published on another."""
    if workers > 1 and not redis_url:
        return (f"{workers} workers need a shared hub: set ROVER_REDIS_URL (redis://host:6379/0), or run one "
                "worker. Without it each worker would hold a hub of its own, and subscribers would miss "
                "what other workers publish.")
    return None
