"""Producers: background loops that feed the hub, started with the server and stopped on shutdown.

A producer is a plain function ``run(stop)`` that publishes until ``stop`` (a ``threading.Event``) is set::

    def telemetry(stop):
        while not stop.wait(2.0):
            rs.publish("rover.telemetry", read_sensors())

    rs.add_producer(app, "rover-telemetry", telemetry)               # one per deployment
    rs.add_producer(app, "server-metrics", metrics, scope="worker")  # one in every worker process

``scope="deployment"`` (the default) means one running copy for everything that shares the hub: with the
in-process hub that is the process itself; with Redis it is every worker of every host, and the copy runs
where it holds a *lease*, a Redis key ``<prefix>lease:<name>`` set with ``SET NX PX``, renewed every
``LEASE_RENEW`` seconds by a script that only extends it for its holder. The others stand by and take over
within ``LEASE_TTL`` seconds when the holder stops or dies (a clean stop deletes the key at once).

Producers start with the worker (``post_worker_init`` in :mod:`rover_stream.server.config`), or on the
app's first request elsewhere; ``GET /health`` reports each one as ``running``, ``standby`` (another
process holds its lease),
``failed`` (its function raised; it is restarted after ``RESTART_AFTER`` seconds) or ``stopped``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from .concurrency import Task
from .runtime import StreamRuntime, get_runtime

log = logging.getLogger("rover_stream.producers")

#: Seconds a lease lasts without renewal; a dead holder is replaced within this time.
LEASE_TTL = 6.0
LEASE_RENEW = 2.0
#: Seconds before a producer whose function raised is started again.
RESTART_AFTER = 2.0
SCOPES = ("deployment", "worker")



class Producer:
    """One registered producer and the loop that keeps it running (or standing by) in this process."""

    def __init__(self, runtime: StreamRuntime, name: str, run: Callable[[threading.Event], Any],
                 scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        self.runtime = runtime
        self.name = name
        self.run = run
        self.scope = scope
        self.state = "stopped"
        self.error: str | None = None
        self.started_at: float | None = None
        self._stop = threading.Event()  # the supervisor's
        self._supervisor: Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is None:
            self._stop.clear()
            # Shared by several processes: it waits for the lease before it runs.
            shared = self.scope == "deployment" and self.runtime.hub.engine.remote
            self.state = "standby" if shared else "starting"
            self._supervisor = Task(self._supervise, name=f"rover-stream-producer-{self.name}")

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join(timeout)
        self.state = "stopped"

    # -- the supervisor: lease (when needed), run, restart after a failure -------------------------------------

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._supervise_once()
            except Exception as exc:  # noqa: BLE001 (never let the supervisor die: report, retry)
                log.exception("producer %s: supervisor failed", self.name)
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                self._stop.wait(RESTART_AFTER)
        self.state = "stopped"

    def _supervise_once(self) -> None:
        # Once per deployment: a lease in the engine's shared store (none when this process is the deployment).
        lease = self.runtime.hub.engine.lease(self.name, LEASE_TTL) if self.scope == "deployment" else None
        while not self._stop.is_set():
            if lease is not None and not lease.acquire():
                self.state = "standby"
                self._stop.wait(LEASE_RENEW)
                continue
            run_stop = threading.Event()
            if lease is not None:
                log.info("producer %s runs in this process (lease %s held by %s)", self.name, lease.key, lease.holder)
            self.state, self.error, self.started_at = "running", None, time.time()
            worker = Task(functools.partial(self._call, run_stop), name=f"rover-stream-producer-{self.name}-run")
            try:
                while not self._stop.wait(LEASE_RENEW if lease is not None else 0.5):
                    if self.state == "failed":
                        break
                    if lease is not None and not lease.renew():
                        log.warning("producer %s lost its lease; standing by", self.name)
                        break
            finally:
                run_stop.set()
                worker.join(2.0)
                worker.cancel()
                if lease is not None:
                    lease.release()
            if self.state == "failed" and not self._stop.is_set():
                self._stop.wait(RESTART_AFTER)

    def _call(self, stop: threading.Event) -> None:
        try:
            self.run(stop)
        except Exception as exc:  # noqa: BLE001 (reported, then restarted)
            log.exception("producer %s failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            return
        if not stop.is_set():  # it returned by itself: done for good
            self.state = "stopped"
            self._stop.set()

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.state, "scope": self.scope}
        if self.error:
            info["error"] = self.error
        return info


def add_producer(app: Flask, name: str, run: Callable[[threading.Event], Any], *,
                 scope: str = "deployment") -> Producer:
    """Register ``run(stop)`` as a producer of ``app`` (see the module's documentation)."""
    runtime = get_runtime(app)
    if name in runtime.producers:
        raise ValueError(f"a producer named {name!r} is already registered")
    producer = Producer(runtime, name, run, scope)
    runtime.producers[name] = producer
    if runtime.producers_started:
        producer.start()
    return producer
