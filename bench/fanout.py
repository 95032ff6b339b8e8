"""SSE fan-out of rover_stream next to three peers, on this machine, in one run.

Systems
-------
Each system is started fresh for each measurement, alone on the machine while it is measured, on a free
loopback port, and stopped afterwards (SIGTERM, then SIGKILL of its process group):

* ``rover_stream`` -- ``wsgi:app`` under gunicorn with the project's ``gunicorn.conf.py`` (one gevent worker),
  ``ROVER_HEARTBEAT_INTERVAL=15``, ``ROVER_WORKER_CONNECTIONS=12000``; ``GET /realtime/<channel>`` and
  ``POST /api/broadcast``.
* ``handwritten gevent`` -- ``bench/peers/handwritten_gevent.py``: Flask, a global list of ``queue.Queue()``
  per channel, a generator per subscriber; gunicorn, one gevent worker (``bench/peers/gunicorn_peers.conf.py``).
* ``fastapi sse-starlette`` -- ``bench/peers/fastapi_sse.py``: ``asyncio.Queue`` per subscriber,
  ``EventSourceResponse``; uvicorn, one process.
* ``flask-sse`` -- ``bench/peers/flasksse_app.py``: the flask-sse package (one Redis pub/sub connection per
  subscriber) under the same gunicorn gevent config, with a ``redis-server`` started for it (no persistence).

The peers run in their own virtual environment, ``bench/.venv-peers``, created and filled from PyPI on the first
run (``--skip-install`` uses it as it is). Every system is driven the same way, over HTTP.

Scenarios
---------
* ``burst`` -- ``--burst-subscribers`` (100) subscribers on one channel; ``--burst-connections`` (4) keep-alive
  publishers in one process publish as fast as the server answers for ``--duration`` (10) seconds. Figures:
  deliveries/s (events received by all subscribers / time from the first publish to the last event received or
  the last answer, whichever is later),
  the server's CPU time per delivery (all of its processes, Redis included), and received vs expected.
* ``steady`` -- ``--steady-subscribers`` (1,000) subscribers, ``--steady-rate`` (100) events/s for
  ``--duration`` seconds. Event k is scheduled at t0 + k/rate and carries that time; latency = receive time
  minus scheduled time, so a publisher held back by a slow server counts against the server. Figures: p50, p99,
  max latency; received vs expected.
* ``idle`` -- ``--idle-subscribers`` (5,000) subscribers and 1 event/s for ``--duration`` seconds. Figure: the
  server's RSS per connection, (RSS with N subscribers connected, after the trickle - RSS before connecting) /
  N, RSS summed over the server's processes (Redis included); every subscriber must get every event.
* ``batch`` -- the burst scenario (same subscribers, connections and duration) with every request a JSON array
  of ``--batch-size`` (100) events. rover_stream systems only (the peers' ``/api/broadcast`` takes one event).
  Figures: events published/s and deliveries/s, each with its ratio to the same system's single publishes in
  the ``burst`` scenario of the same run (``burst`` is run for the rover_stream systems when only ``batch`` is
  asked for, so that the ratio always comes from one run).

How
---
Subscribers live in one process, ``bench/loadgen_subscribers.py`` (non-blocking sockets, one epoll loop,
chunked decoding, counting ``@t<time>@`` markers in complete events); they connect gradually (at most
``--connect-rate`` per second, at most 200 unanswered), and publishing starts only once every one is ready:
its first bytes arrived (rover_stream, the hand-written peer and FastAPI send ``retry: 3000`` first), or, for
flask-sse, which sends nothing before the first event, once Redis counts them all (``PUBSUB NUMSUB``). The
publishers are another process, ``bench/loadgen_publisher.py``. The CPU time of both is reported next to the
server's (in cores: CPU seconds / wall seconds of the publishing window), to show that the load generator was
not the bottleneck on this 2-core machine. Server CPU time is read from ``/proc/<pid>/task/*/schedstat``.

Targets (rover_stream, one gevent worker): burst -- CPU per delivery <= 0.5x the best peer's and deliveries/s
>= 2x the best peer's, with nothing lost; steady -- everything delivered with p99 < 20 ms; idle -- < 10 kB
(10,000 bytes) per connection with everything delivered. ``--repeat N`` runs every measurement N times
(systems round-robin inside each repeat) and reports min/median/max; verdicts use the medians.

Output: progress on stderr, one table on stdout, and every figure in ``bench/results/fanout-<timestamp>.json``.
Exit status 1 when a target is missed or rover_stream could not be measured.

Usage: ``python bench/fanout.py [all|burst|steady|idle|batch ...] [--repeat 3] [--subscribers N] [--duration S]``
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
PEERS = HERE / "peers"
PEERS_CONF = PEERS / "gunicorn_peers.conf.py"
VENV = HERE / ".venv-peers"
RESULTS = HERE / "results"
LOADGEN_SUBSCRIBERS = HERE / "loadgen_subscribers.py"
LOADGEN_PUBLISHER = HERE / "loadgen_publisher.py"

LOOPBACK = "127.0.0.1"
CHANNEL = "bench"
# packaging: gunicorn's gevent worker imports it without declaring it
PEER_PACKAGES = ("fastapi", "uvicorn", "sse-starlette", "flask", "flask-sse", "gunicorn", "gevent", "redis",
                 "packaging")
PEER_IMPORTS = "import fastapi, uvicorn, sse_starlette, flask, flask_sse, gunicorn, gevent, redis, packaging"

START_TIMEOUT = 30.0  # seconds for a server to log its port and answer
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
SETTLE = 1.0  # seconds between "all subscribers ready" and the measurement
CLK_TCK = os.sysconf("SC_CLK_TCK")

ROVER = "rover_stream"
ROVER_REDIS = "rover_stream redis x2"  # two gevent workers sharing the hub through Redis
HANDWRITTEN = "handwritten gevent"
FASTAPI = "fastapi sse-starlette"
FLASKSSE = "flask-sse"
SYSTEMS = (ROVER, ROVER_REDIS, HANDWRITTEN, FASTAPI, FLASKSSE)
PEER_SYSTEMS = (HANDWRITTEN, FASTAPI, FLASKSSE)
SCENARIOS = ("burst", "steady", "idle", "batch")
ROVER_SYSTEMS = (ROVER, ROVER_REDIS)  # the systems whose /api/broadcast takes a batch (a JSON array of events)

GUNICORN_LISTENING = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")
UVICORN_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")

# The targets of the fan-out issue
BURST_CPU_RATIO = 0.5  # rover CPU/delivery <= 0.5 x best peer
BURST_RATE_RATIO = 2.0  # rover deliveries/s >= 2 x best peer
STEADY_P99_MS = 20.0
IDLE_KB = 10.0  # kB = 1000 bytes
# The targets of the Redis issue (burst deliveries/s of ROVER_REDIS)
REDIS_VS_ROVER = 1.5
REDIS_VS_FLASKSSE = 5.0


class Unavailable(Exception):
    """The system cannot be measured (its endpoints are missing, or a dependency is)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------------------


def raise_nofile() -> None:
    """In the child before exec: the open-file limit up to its hard maximum (5,000+ sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1 << 17:
        try:  # root may raise the hard limit too (20,000 idle subscribers need more than 20,000 files)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, 1 << 17))
            hard = 1 << 17
        except (ValueError, OSError):
            pass
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def schedstat_seconds(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, run-queue wait seconds) of a process summed over its threads, from schedstat
    (nanoseconds); utime+stime of /proc/<pid>/stat where schedstats are missing."""
    run = wait = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    try:
        for tid in tasks:
            fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            run += int(fields[0]) / 1e9
            wait += int(fields[1]) / 1e9
        if run > 0:
            return run, wait
    except (OSError, IndexError, ValueError):
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, 0.0


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            found.extend(int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except OSError:
            pass
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; its log ends with:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after STOP_GRACE."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {STOP_GRACE:g} s of SIGTERM; sending SIGKILL")
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever is left of its group (gunicorn workers)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {self.popen.pid}) did not exit after SIGKILL")


def spawn(name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> Proc:
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=cwd, start_new_session=True, preexec_fn=raise_nofile)
    return Proc(name=name, popen=popen, log_path=log_path)


def base_env() -> dict[str, str]:
    """The caller's environment without ROVER_* and BENCH_* (so that defaults apply) and without proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ROVER_", "BENCH_", "VIRTUAL_ENV")) and "proxy" not in k.lower()}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_log(proc: Proc, pattern: re.Pattern[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        proc.check_alive()
        match = pattern.search(proc.log_path.read_bytes())
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not log its port within {START_TIMEOUT:g} s:\n{proc.log_tail()}")


def http_json(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw[:300]
    finally:
        conn.close()


def redis_command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One RESP command, its raw answer (enough for PING and PUBSUB NUMSUB)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
            if args[0].upper() == "PING" and answer.endswith(b"\r\n"):
                break
            if args[0].upper() == "PUBSUB" and re.search(rb"\r\n:\d+\r\n$", answer):
                break
        return answer


def redis_numsub(port: int, channel: str) -> int:
    answer = redis_command(port, "PUBSUB", "NUMSUB", channel)
    # *2\r\n$5\r\nbench\r\n:100\r\n
    match = re.search(rb"\r\n:(\d+)\r\n", answer)
    return int(match.group(1)) if match else -1


# -- the systems ---------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    procs: list[Proc]
    port: int
    sse_path: str
    ready_mode: str  # how the load generator tells that a subscriber is in: block, headers or sent
    redis_port: int | None = None

    def pids(self) -> list[int]:
        pids: list[int] = []
        for proc in self.procs:
            if proc.popen.poll() is None:
                pids.extend(descendants(proc.popen.pid))
        return pids

    def main_pids(self) -> list[int]:
        """The processes that do the serving: gunicorn's workers (its master's children), uvicorn itself."""
        result: list[int] = []
        for proc in self.procs:
            tree = descendants(proc.popen.pid)
            result.extend(tree[1:] if len(tree) > 1 else tree)
        return result

    def cpu(self) -> dict[int, tuple[float, float]]:
        result = {}
        for pid in self.pids():
            sched = schedstat_seconds(pid)
            if sched is not None:
                result[pid] = sched
        return result

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def cpu_delta(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """Summed over the processes: (CPU seconds, run-queue wait seconds) between two snapshots. A process that
    was not there before counts from zero; a negative step (a reading that fell back from schedstat to
    /proc/<pid>/stat) counts as none."""
    cpu = sum(max(0.0, now[0] - before.get(pid, (0.0, 0.0))[0]) for pid, now in after.items())
    wait = sum(max(0.0, now[1] - before.get(pid, (0.0, 0.0))[1]) for pid, now in after.items())
    return cpu, wait


@dataclass
class Env:
    """What every start needs: the interpreters, redis-server, the work dir and the user's extra settings."""

    venv_python: Path
    redis_server: str | None
    work: Path
    rover_env: dict[str, str]
    heartbeat: float = 15.0
    worker_connections: int = 12000


def start_gunicorn(name: str, python: Path | str, conf: Path, chdir: Path, app: str, env: dict[str, str],
                   work: Path) -> tuple[Proc, int]:
    slug = re.sub(r"\W+", "-", name)
    cmd = [str(python), "-m", "gunicorn", "-c", str(conf), "--chdir", str(chdir), "-b", f"{LOOPBACK}:0", app]
    proc = spawn(name, cmd, env, work / f"{slug}.log")
    try:
        port = wait_for_log(proc, GUNICORN_LISTENING, time.monotonic() + START_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def start_rover(env: Env) -> System:
    environ = base_env()
    environ.update({"ROVER_LOG_LEVEL": "info", "ROVER_WORKERS": "1",
                    "ROVER_HEARTBEAT_INTERVAL": f"{env.heartbeat:g}",
                    "ROVER_WORKER_CONNECTIONS": str(env.worker_connections), "ROVER_PUBLISH_RATE": "0",
                    **env.rover_env})
    proc, port = start_gunicorn(ROVER, sys.executable, GUNICORN_CONF, ROOT, "wsgi:app", environ, env.work)
    return System(ROVER, [proc], port, f"/realtime/{CHANNEL}", "block")


def start_rover_redis(env: Env) -> System:
    redis_proc, redis_port = start_redis(env)
    try:
        environ = base_env()
        environ.update({"ROVER_LOG_LEVEL": "info", "ROVER_WORKERS": "2",
                        "ROVER_REDIS_URL": f"redis://{LOOPBACK}:{redis_port}/0",
                        "ROVER_HEARTBEAT_INTERVAL": f"{env.heartbeat:g}",
                        "ROVER_WORKER_CONNECTIONS": str(env.worker_connections), "ROVER_PUBLISH_RATE": "0",
                    **env.rover_env})
        proc, port = start_gunicorn(ROVER_REDIS, sys.executable, GUNICORN_CONF, ROOT, "wsgi:app", environ,
                                    env.work)
    except BaseException:
        redis_proc.stop()
        raise
    return System(ROVER_REDIS, [redis_proc, proc], port, f"/realtime/{CHANNEL}", "block")


def peer_env(env: Env) -> dict[str, str]:
    environ = base_env()
    environ.update({"BENCH_HEARTBEAT_INTERVAL": f"{env.heartbeat:g}",
                    "BENCH_WORKER_CONNECTIONS": str(env.worker_connections)})
    return environ


def start_handwritten(env: Env) -> System:
    proc, port = start_gunicorn(HANDWRITTEN, env.venv_python, PEERS_CONF, PEERS, "handwritten_gevent:app",
                                peer_env(env), env.work)
    return System(HANDWRITTEN, [proc], port, f"/realtime/{CHANNEL}", "block")


def start_fastapi(env: Env) -> System:
    cmd = [str(env.venv_python), "-m", "uvicorn", "fastapi_sse:app", "--app-dir", str(PEERS), "--host", LOOPBACK,
           "--port", "0", "--log-level", "info", "--backlog", "2048"]
    proc = spawn(FASTAPI, cmd, peer_env(env), env.work / "fastapi.log")
    try:
        port = wait_for_log(proc, UVICORN_LISTENING, time.monotonic() + START_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return System(FASTAPI, [proc], port, f"/realtime/{CHANNEL}", "block")


def start_redis(env: Env) -> tuple[Proc, int]:
    if env.redis_server is None:
        raise Unavailable("redis-server is not installed (Debian: apt-get install -y redis-server)")
    redis_dir = env.work / "redis"
    redis_dir.mkdir(exist_ok=True)
    last = ""
    for attempt in range(3):  # the free port may be taken between the probe and redis' bind
        port = free_port()
        cmd = [env.redis_server, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(redis_dir), "--daemonize", "no", "--protected-mode", "no",
               "--maxclients", str(env.worker_connections),
               # a subscriber falling behind is measured, not disconnected (the default pubsub limit is 32 MB)
               "--client-output-buffer-limit", "pubsub 0 0 0"]
        proc = spawn("redis-server", cmd, base_env(), env.work / f"redis-{attempt}.log")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.popen.poll() is None:
            try:
                if redis_command(port, "PING", timeout=1.0).startswith(b"+PONG"):
                    return proc, port
            except OSError:
                pass
            time.sleep(0.05)
        last = proc.log_tail()
        proc.stop()
    raise RuntimeError(f"redis-server did not start:\n{last}")


def start_flasksse(env: Env) -> System:
    redis_proc, redis_port = start_redis(env)
    try:
        environ = peer_env(env)
        environ["BENCH_REDIS_URL"] = f"redis://{LOOPBACK}:{redis_port}/0"
        proc, port = start_gunicorn(FLASKSSE, env.venv_python, PEERS_CONF, PEERS, "flasksse_app:app", environ,
                                    env.work)
    except BaseException:
        redis_proc.stop()
        raise
    return System(FLASKSSE, [redis_proc, proc], port, f"/stream?channel={CHANNEL}", "sent", redis_port)


STARTERS: dict[str, Callable[[Env], System]] = {
    ROVER: start_rover, ROVER_REDIS: start_rover_redis, HANDWRITTEN: start_handwritten, FASTAPI: start_fastapi,
    FLASKSSE: start_flasksse,
}


def check_endpoints(system: System) -> None:
    """A few publishes on a channel nobody listens to: the endpoint is there and warm."""
    deadline = time.monotonic() + START_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        system.check_alive()
        try:
            status, answer = http_json(system.port, "POST", "/api/broadcast", {"channel": "warmup", "data": "w"})
        except OSError as exc:
            last = exc
            time.sleep(0.1)
            continue
        if status in (404, 405):
            raise Unavailable(f"POST /api/broadcast answers HTTP {status}: the endpoint is not there (yet)")
        if status == 200 and isinstance(answer, dict) and "subscribers" in answer:
            for _ in range(3):
                http_json(system.port, "POST", "/api/broadcast", {"channel": "warmup", "data": {"w": 1}})
            return
        last = f"HTTP {status}: {answer!r}"
        time.sleep(0.2)
    raise Unavailable(f"POST /api/broadcast did not answer as expected: {last}")


# -- load generator processes --------------------------------------------------------------------------------


class JsonLinesChild:
    """A load generator in a child process of its own session: commands go to its stdin, and each line it
    prints is a JSON object, queued in ``lines`` (None when it exits)."""

    def __init__(self, cmd: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        with open(self.log_path, "ab") as err:
            self.popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          env=base_env(), start_new_session=True, preexec_fn=raise_nofile)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                log(f"loadgen: {raw!r}")
        self.lines.put(None)


class SubscriberLoad(JsonLinesChild):
    """``loadgen_subscribers.py`` as a child process, spoken to with JSON lines."""

    def __init__(self, system: System, count: int, latency: bool, connect_rate: float, work: Path) -> None:
        cmd = [sys.executable, str(LOADGEN_SUBSCRIBERS), "--host", LOOPBACK, "--port", str(system.port),
               "--path", system.sse_path, "--count", str(count), "--ready", system.ready_mode,
               "--connect-rate", f"{connect_rate:g}"]
        if latency:
            cmd.append("--latency")
        super().__init__(cmd, work / "loadgen-subscribers.log")

    def send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(message) + "\n").encode())
        self.popen.stdin.flush()

    def expect(self, event: str, timeout: float, watch: Callable[[], None] | None = None,
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the subscribers' load generator sent no {event!r} within {timeout:g} s")
            try:
                message = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if watch is not None:
                    watch()
                continue
            if message is None:
                raise RuntimeError(f"the subscribers' load generator exited ({self.popen.poll()}); "
                                   f"its log: {self.log_path}")
            if message.get("event") == event:
                return message
            if message.get("event") == "error":
                raise RuntimeError(f"the subscribers' load generator: {message}")
            if progress is not None:
                progress(message)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.popen.wait(10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def run_publisher(system: System, mode: str, duration: float, rate: float, connections: int, payload: int,
                  start_at: float, work: Path, max_lag: float, batch: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, str(LOADGEN_PUBLISHER), "--host", LOOPBACK, "--port", str(system.port),
           "--channel", CHANNEL, "--mode", mode, "--duration", f"{duration:g}", "--rate", f"{rate:g}",
           "--connections", str(connections), "--payload", str(payload), "--start-at", repr(start_at),
           "--timeout", "30", "--max-lag", f"{max_lag:g}"]
    if batch > 1:
        cmd += ["--batch", str(batch)]
    with open(work / "loadgen-publisher.log", "ab") as err:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=base_env(),
                              timeout=duration + 90, preexec_fn=raise_nofile)
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the publisher printed no result (exit {done.returncode}); "
                           f"see {work / 'loadgen-publisher.log'}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- one measurement -----------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    subscribers: int
    duration: float
    mode: str  # burst or rate
    rate: float
    connections: int
    latency: bool
    batch: int = 1  # events per publish request (above 1: a JSON array)


def measure(system_name: str, scenario: Scenario, env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """Start the system, connect, publish, count, stop. Returns the raw figures."""
    slug = re.sub(r"\W+", "-", system_name)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-{slug}-", dir=env.work))
    run_env = Env(env.venv_python, env.redis_server, run_dir, env.rover_env, env.heartbeat, env.worker_connections)
    system = STARTERS[system_name](run_env)
    load: SubscriberLoad | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        check_endpoints(system)
        time.sleep(0.3)
        rss_before = system.rss()
        t_connect = time.monotonic()
        load = SubscriberLoad(system, scenario.subscribers, scenario.latency, args.connect_rate, run_dir)
        last_note = [0.0]

        def progress(message: dict[str, Any]) -> None:
            if time.monotonic() - last_note[0] >= 5:
                last_note[0] = time.monotonic()
                log(f"    connecting: {message.get('ready')}/{message.get('subscribers')} ready, "
                    f"{message.get('failed')} failed, {message.get('retried')} retried")

        connect_timeout = scenario.subscribers / args.connect_rate * 3 + 60
        ready = load.expect("ready", connect_timeout, system.check_alive, progress)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} of {scenario.subscribers} subscribers could not connect "
                               f"(HTTP errors: {ready['http_errors']}):\n{system.log_tail()}")
        if system.redis_port is not None:  # flask-sse: nothing is sent before the first event; ask Redis
            deadline = time.monotonic() + connect_timeout
            while (numsub := redis_numsub(system.redis_port, CHANNEL)) < scenario.subscribers:
                system.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {numsub} of {scenario.subscribers} subscribed in Redis")
                time.sleep(0.1)
        connect_seconds = time.monotonic() - t_connect
        time.sleep(SETTLE)
        rss_connected = system.rss()
        load.send({"cmd": "reset"})
        load.expect("reset", 30)
        cpu_before = system.cpu()
        start_at = time.monotonic() + 0.3
        if args.py_spy and system_name in (ROVER, ROVER_REDIS):
            profiler = start_profiler(system, scenario, start_at)
        published = run_publisher(system, scenario.mode, scenario.duration, scenario.rate, scenario.connections,
                                  args.payload, start_at, run_dir, args.max_lag, scenario.batch)
        expected = int(published["published"])
        load.send({"cmd": "wait", "expected": expected, "timeout": args.drain_timeout})
        stats = load.expect("stats", args.drain_timeout + 30, system.check_alive)
        cpu_after = system.cpu()
        rss_after = system.rss()
        server_cpu, server_wait = cpu_delta(cpu_before, cpu_after)
        if profiler is not None:
            finish_profiler(profiler)
            profiler = None
        # the publishing window: from the first publish to the last event received or the last answer, whichever
        # is later
        window_start = float(published["first_send"])
        window_end = max(float(stats["last_event"] or 0.0), float(published["last_answer"] or 0.0))
        window = max(1e-9, window_end - window_start)
        received = int(stats["received"])
        result: dict[str, Any] = {
            "system": system_name, "scenario": scenario.name, "subscribers": scenario.subscribers,
            "connect_seconds": connect_seconds, "published": expected, "publish_errors": published["errors"],
            "scheduled": published["scheduled"], "sent": published["sent"], "publisher_gave_up": published["gave_up"],
            # sent but unanswered when the publisher stopped waiting: the server may still have published them
            "in_flight_at_stop": int(published["sent"]) - expected,
            "publish_rate": published["publish_rate"], "publisher_connections": scenario.connections,
            "batch": scenario.batch, "publish_requests": published.get("requests"),
            "subscribers_reported": [published["subscribers_min"], published["subscribers_max"]],
            "expected_deliveries": expected * scenario.subscribers, "received": received,
            "missing": stats.get("missing", 0), "excess": stats.get("excess", 0),
            "short_subscribers": stats.get("short_subscribers", 0), "lost_connections": stats["lost"],
            "drain_timed_out": stats.get("timed_out", False),
            "window_seconds": window,
            # over the whole window: a run whose subscribers were dropped early does not get a short duration
            "deliveries_per_second": received / window,
            "server_cpu_seconds": server_cpu, "server_runqueue_wait_seconds": server_wait,
            "server_cpu_us_per_delivery": server_cpu / received * 1e6 if received else None,
            "server_cores": server_cpu / window,
            "subscriber_loadgen_cpu_seconds": stats["cpu_seconds"],
            "subscriber_loadgen_cores": stats["cpu_seconds"] / window,
            "publisher_cpu_seconds": published["cpu_seconds"], "publisher_cores": published["cpu_seconds"] / window,
            "publisher_lag_ms": published["lag_ms"], "latency_ms": stats.get("latency_ms"),
            "rss_before": rss_before, "rss_connected": rss_connected, "rss_after": rss_after,
            "rss_per_connection_connected": (rss_connected - rss_before) / scenario.subscribers,
            "rss_per_connection": (rss_after - rss_before) / scenario.subscribers,
            "server_pids": system.main_pids(),
        }
        return result
    finally:
        if profiler is not None:
            finish_profiler(profiler)
        if load is not None:
            load.stop()
        system.stop()


def start_profiler(system: System, scenario: Scenario, start_at: float) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy")
    pids = system.main_pids()
    if py_spy is None or not pids:
        log("    py-spy: not installed, or no worker to profile")
        return None
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"fanout-pyspy-{scenario.name}-{stamp}.txt"
    cmd = [py_spy, "record", "--pid", str(pids[0]), "--duration", str(int(scenario.duration + 1)),
           "--format", "raw", "--output", str(out), "--nonblocking", "--rate", "200"]
    log(f"    py-spy: recording the rover_stream worker into {out}")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def finish_profiler(profiler: subprocess.Popen[bytes]) -> None:
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(5)


# -- setup ---------------------------------------------------------------------------------------------------


def ensure_venv(skip_install: bool) -> Path:
    python = VENV / "bin" / "python"
    if skip_install:
        if not python.exists():
            raise SystemExit(f"--skip-install: {VENV} does not exist; run once without --skip-install")
        return python
    if not python.exists():
        log(f"creating {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    check = subprocess.run([str(python), "-c", PEER_IMPORTS], capture_output=True, timeout=120)
    if check.returncode != 0:
        log(f"installing the peers into {VENV}: {' '.join(PEER_PACKAGES)} ...")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
                       check=True, timeout=1200)
    return python


def ensure_redis(skip_install: bool) -> str | None:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    if found or skip_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    log("installing redis-server (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in ([["apt-get", "install", "-y", "redis-server"]],
                 [["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]]):
        ok = all(subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=900).returncode == 0 for cmd in step)
        if ok:
            break
    return shutil.which("redis-server")


def versions(venv_python: Path, redis_server: str | None) -> dict[str, str]:
    result: dict[str, str] = {"python": platform.python_version()}
    for name in ("rover-stream", "gunicorn", "gevent", "greenlet", "flask"):
        try:
            result[f"main:{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            result[f"main:{name}"] = "-"
    code = ("import importlib.metadata as m, json; out = {}\n"
            f"for n in {PEER_PACKAGES + ('starlette', 'greenlet', 'h11', 'httptools', 'uvloop')!r}:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = '-'\n"
            "print(json.dumps(out))")
    done = subprocess.run([str(venv_python), "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode == 0 and venv_python != Path(sys.executable):
        result.update({f"peers:{k}": v for k, v in json.loads(done.stdout).items()})
    if redis_server:
        out = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"v=(\S+)", out)
        result["redis-server"] = match.group(1) if match else out.strip()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=30)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=30)
    result["rover_stream commit"] = git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return result


# -- figures and the table -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One figure of one system in one scenario over the repeats."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self, fmt: Callable[[float], str]) -> str:
        if len(self.values) < 2:
            return ""
        return f"{fmt(min(self.values))} .. {fmt(max(self.values))}"


FIGURES: dict[str, list[tuple[str, str, Callable[[dict[str, Any]], float | None], Callable[[float], str]]]] = {
    # scenario: [(key, label, getter, format)]
    "burst": [
        ("deliveries_per_second", "deliveries/s", lambda r: r["deliveries_per_second"], lambda v: f"{v:,.0f}"),
        ("cpu_us", "server CPU per delivery (us)", lambda r: r["server_cpu_us_per_delivery"], lambda v: f"{v:.2f}"),
        ("delivered", "delivered (received / expected)",
         lambda r: r["received"] / r["expected_deliveries"] if r["expected_deliveries"] else 0.0,
         lambda v: f"{v * 100:.3f}%"),
        ("publish_rate", "events published/s", lambda r: r["publish_rate"], lambda v: f"{v:,.0f}"),
    ],
    "steady": [
        ("p50", "latency p50 (ms)", lambda r: (r["latency_ms"] or {}).get("p50"), lambda v: f"{v:.2f}"),
        ("p99", "latency p99 (ms)", lambda r: (r["latency_ms"] or {}).get("p99"), lambda v: f"{v:.2f}"),
        ("max", "latency max (ms)", lambda r: (r["latency_ms"] or {}).get("max"), lambda v: f"{v:.2f}"),
        ("delivered", "delivered (received / expected)",
         lambda r: r["received"] / r["expected_deliveries"] if r["expected_deliveries"] else 0.0,
         lambda v: f"{v * 100:.3f}%"),
        ("lag_p99", "publisher lag p99 (ms)", lambda r: r["publisher_lag_ms"]["p99"], lambda v: f"{v:.2f}"),
        ("published", "events published / scheduled", lambda r: r["published"] / r["scheduled"] if r["scheduled"]
         else 0.0, lambda v: f"{v * 100:.1f}%"),
    ],
    "batch": [
        ("publish_rate", "events published/s", lambda r: r["publish_rate"], lambda v: f"{v:,.0f}"),
        ("deliveries_per_second", "deliveries/s", lambda r: r["deliveries_per_second"], lambda v: f"{v:,.0f}"),
        ("cpu_us", "server CPU per delivery (us)", lambda r: r["server_cpu_us_per_delivery"], lambda v: f"{v:.2f}"),
        ("delivered", "delivered (received / expected)",
         lambda r: r["received"] / r["expected_deliveries"] if r["expected_deliveries"] else 0.0,
         lambda v: f"{v * 100:.3f}%"),
    ],
    "idle": [
        ("kb_per_conn", "server RSS per connection (kB)", lambda r: r["rss_per_connection"] / 1000,
         lambda v: f"{v:.2f}"),
        ("kb_per_conn_connected", "  same, before the trickle (kB)",
         lambda r: r["rss_per_connection_connected"] / 1000, lambda v: f"{v:.2f}"),
        ("delivered", "delivered (received / expected)",
         lambda r: r["received"] / r["expected_deliveries"] if r["expected_deliveries"] else 0.0,
         lambda v: f"{v * 100:.3f}%"),
    ],
}
CPU_FIGURES: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
    ("server", lambda r: r["server_cores"]),
    ("subscribers' load generator", lambda r: r["subscriber_loadgen_cores"]),
    ("publisher", lambda r: r["publisher_cores"]),
]


def collect(runs: list[dict[str, Any]], scenario: str, system: str, key: str) -> Figure:
    for figure_key, _label, getter, _fmt in FIGURES[scenario]:
        if figure_key == key:
            values = [getter(r) for r in runs if r["scenario"] == scenario and r["system"] == system
                      and "error" not in r]
            return Figure([float(v) for v in values if v is not None])
    raise KeyError(key)


def best_peer(runs: list[dict[str, Any]], scenario: str, key: str, higher_is_better: bool) -> tuple[str, float]:
    best: tuple[str, float] | None = None
    for system in PEER_SYSTEMS:
        figure = collect(runs, scenario, system, key)
        if not figure.values:
            continue
        value = figure.median
        if best is None or (value > best[1] if higher_is_better else value < best[1]):
            best = (system, value)
    return best if best is not None else ("-", float("nan"))


def run_delivered(r: dict[str, Any]) -> bool:
    """Every scheduled event published, and every subscriber got every published event once (extra copies are
    tolerated only for events whose publish request was unanswered when the publisher stopped waiting)."""
    return ("error" not in r and not r["publisher_gave_up"] and r["publish_errors"] == 0 and r["missing"] == 0
            and r["excess"] <= r["in_flight_at_stop"] * r["subscribers"] and r["lost_connections"] == 0)


def all_delivered(runs: list[dict[str, Any]], scenario: str, system: str) -> bool:
    mine = [r for r in runs if r["scenario"] == scenario and r["system"] == system]
    return bool(mine) and all(run_delivered(r) for r in mine)


def verdicts(runs: list[dict[str, Any]], scenarios: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (scenario, system, figure): the median, min..max, the ratio to the best peer, target."""
    rows: list[dict[str, Any]] = []
    ratio_keys = {"burst": {"deliveries_per_second": True, "cpu_us": False},
                  "steady": {"p99": False, "p50": False, "max": False},
                  "idle": {"kb_per_conn": False}, "batch": {}}
    for scenario in scenarios:
        bests = {key: best_peer(runs, scenario, key, higher) for key, higher in ratio_keys[scenario].items()}
        for system in SYSTEMS:
            mine = [r for r in runs if r["scenario"] == scenario and r["system"] == system]
            if not mine:
                continue
            errors = [r["error"] for r in mine if "error" in r]
            if len(errors) == len(mine):
                rows.append({"scenario": scenario, "system": system, "figure": "not measured",
                             "median": errors[0][:70], "spread": "", "ratio": "", "target": "",
                             "result": "MISS" if system == ROVER else ""})
                continue
            delivered_ok = all_delivered(runs, scenario, system)
            for key, label, _getter, fmt in FIGURES[scenario]:
                figure = collect(runs, scenario, system, key)
                if not figure.values:
                    continue
                row: dict[str, Any] = {"scenario": scenario, "system": system, "figure": label,
                                       "median": fmt(figure.median), "spread": figure.spread(fmt),
                                       "median_value": figure.median, "values": figure.values,
                                       "ratio": "", "target": "", "result": ""}
                if key in bests and bests[key][0] != "-" and bests[key][1]:
                    row["ratio"] = f"x{figure.median / bests[key][1]:.2f} ({bests[key][0]})"
                    row["ratio_value"] = figure.median / bests[key][1]
                if scenario == "batch" and key in BATCH_RATIO_KEYS:  # against single publishes, not a peer
                    single = collect(runs, "burst", system, key)
                    if single.values and single.median:
                        row["ratio"] = f"x{figure.median / single.median:.2f} (single publishes)"
                        row["ratio_value"] = figure.median / single.median
                if system == ROVER_REDIS:
                    target, passed = redis_target(runs, scenario, key, figure.median, delivered_ok)
                    if target:
                        row["target"] = target
                        row["result"] = "PASS" if passed else "MISS"
                elif system == ROVER:
                    target, passed = rover_target(scenario, key, figure.median, bests, delivered_ok)
                    if target and key in bests and bests[key][0] == "-" and target.endswith("best peer"):
                        row["target"] = target + " (no peer measured)"
                    elif target:
                        row["target"] = target
                        row["result"] = "PASS" if passed else "MISS"
                elif key == "delivered" and not delivered_ok:
                    row["result"] = delivery_problems(mine)
                rows.append(row)
            if len(errors):
                rows.append({"scenario": scenario, "system": system, "figure": f"{len(errors)} run(s) failed",
                             "median": errors[0][:70], "spread": "", "ratio": "", "target": "",
                             "result": "MISS" if system == ROVER else ""})
    return rows


BATCH_RATIO_KEYS = ("publish_rate", "deliveries_per_second")  # batch figures compared with burst's


def batch_ratios(runs: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """For each rover_stream system measured in ``batch``: its events/s and deliveries/s (medians) against its
    single publishes in ``burst`` of the same run."""
    found = []
    for system in ROVER_SYSTEMS:
        if not any(r["scenario"] == "batch" and r["system"] == system for r in runs):
            continue
        entry: dict[str, Any] = {"system": system, "batch_size": batch_size}
        for key, name in (("publish_rate", "events_per_second"), ("deliveries_per_second", "deliveries_per_second")):
            batch = collect(runs, "batch", system, key)
            single = collect(runs, "burst", system, key)
            entry[name] = {"batch": batch.median if batch.values else None,
                           "single": single.median if single.values else None,
                           "ratio": batch.median / single.median if batch.values and single.values
                           and single.median else None}
        found.append(entry)
    return found


def print_batch_ratios(ratios: list[dict[str, Any]]) -> None:
    if not ratios:
        return
    print()
    for entry in ratios:
        events, deliveries = entry["events_per_second"], entry["deliveries_per_second"]
        head = f"{entry['system']}: batch of {entry['batch_size']}: "
        if events["ratio"] is None:
            why = "batch not measured" if events["batch"] is None else "burst (single publishes) not measured"
            print(head + f"no ratio to single publishes ({why} in this run)")
            continue
        line = (head + f"{events['ratio']:.1f}x the events/s of single publishes "
                f"({events['batch']:,.0f} vs {events['single']:,.0f} events published/s)")
        if deliveries["ratio"] is not None:
            line += (f"; deliveries/s {deliveries['batch']:,.0f} vs {deliveries['single']:,.0f} "
                     f"({deliveries['ratio']:.1f}x)")
        print(line)


def delivery_problems(mine: list[dict[str, Any]]) -> str:
    missing = sum(r.get("missing", 0) for r in mine if "error" not in r)
    excess = sum(r.get("excess", 0) for r in mine if "error" not in r)
    lost = sum(r.get("lost_connections", 0) for r in mine if "error" not in r)
    gave_up = sum(1 for r in mine if r.get("publisher_gave_up"))
    errors = sum(r.get("publish_errors", 0) for r in mine if "error" not in r)
    parts = [f"{missing:,} lost" if missing else "", f"{excess:,} extra" if excess else "",
             f"{lost} streams ended" if lost else "", f"{errors} publish errors" if errors else "",
             f"publisher gave up in {gave_up} run(s)" if gave_up else ""]
    return "(" + ", ".join(p for p in parts if p) + ")"


def rover_target(scenario: str, key: str, value: float, bests: dict[str, tuple[str, float]],
                 delivered_ok: bool) -> tuple[str, bool]:
    if scenario == "burst" and key == "deliveries_per_second":
        best = bests[key][1]
        return f">= x{BURST_RATE_RATIO:g} best peer", value >= BURST_RATE_RATIO * best
    if scenario == "burst" and key == "cpu_us":
        best = bests[key][1]
        return f"<= x{BURST_CPU_RATIO:g} best peer", value <= BURST_CPU_RATIO * best
    if scenario == "steady" and key == "p99":
        return f"< {STEADY_P99_MS:g} ms", value < STEADY_P99_MS
    if scenario == "idle" and key == "kb_per_conn":
        return f"< {IDLE_KB:g} kB", value < IDLE_KB
    if key == "delivered":
        return "all, every run", delivered_ok
    return "", True


def redis_target(runs: list[dict[str, Any]], scenario: str, key: str, value: float,
                 delivered_ok: bool) -> tuple[str, bool]:
    """Two workers on Redis against one in-process worker and against flask-sse, in burst deliveries/s."""
    if key == "delivered":
        return "all, every run", delivered_ok
    if scenario != "burst" or key != "deliveries_per_second":
        return "", True
    one = collect(runs, scenario, ROVER, key)
    flasksse = collect(runs, scenario, FLASKSSE, key)
    parts, passed = [], True
    if one.values:
        parts.append(f">= x{REDIS_VS_ROVER:g} {ROVER} ({value / one.median:.2f})")
        passed &= value >= REDIS_VS_ROVER * one.median
    if flasksse.values:
        parts.append(f">= x{REDIS_VS_FLASKSSE:g} flask-sse ({value / flasksse.median:.2f})")
        passed &= value >= REDIS_VS_FLASKSSE * flasksse.median
    return ("; ".join(parts), passed) if parts else ("needs rover_stream or flask-sse in the run", False)


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [("scenario", "scenario"), ("system", "system"), ("figure", "figure"), ("median", "median"),
               ("spread", "min .. max"), ("ratio", "vs best peer"), ("target", "target"), ("result", "result")]
    widths = {key: max(len(title), *(len(str(r.get(key, ""))) for r in rows)) for key, title in columns}
    line = "  ".join(title.ljust(widths[key]) for key, title in columns)
    print(line)
    print("-" * len(line))
    previous = None
    for row in rows:
        if previous is not None and (row["scenario"], row["system"]) != previous:
            print()
        previous = (row["scenario"], row["system"])
        print("  ".join(str(row.get(key, "")).ljust(widths[key]) for key, _title in columns).rstrip())


def print_cpu_table(runs: list[dict[str, Any]], scenarios: Sequence[str]) -> None:
    print()
    print("CPU during the publishing window, in cores (CPU seconds / wall seconds; this machine has "
          f"{os.cpu_count()}), medians:")
    header = f"{'scenario':8}  {'system':22}  " + "  ".join(f"{name:>28}" for name, _ in CPU_FIGURES)
    print(header + f"  {'server run-queue wait':>22}")
    for scenario in scenarios:
        for system in SYSTEMS:
            mine = [r for r in runs if r["scenario"] == scenario and r["system"] == system and "error" not in r]
            if not mine:
                continue
            cells = "  ".join(f"{statistics.median(getter(r) for r in mine):>28.2f}" for _, getter in CPU_FIGURES)
            wait = statistics.median(r["server_runqueue_wait_seconds"] / r["window_seconds"] for r in mine)
            print(f"{scenario:8}  {system:22}  {cells}  {wait:>22.2f}")


# -- main ----------------------------------------------------------------------------------------------------


def scenarios_from(args: argparse.Namespace) -> dict[str, Scenario]:
    n = args.subscribers
    return {
        "burst": Scenario("burst", n or args.burst_subscribers, args.duration, "burst", 0.0, args.burst_connections,
                          latency=False),
        "steady": Scenario("steady", n or args.steady_subscribers, args.duration, "rate", args.steady_rate,
                           args.steady_connections, latency=True),
        "idle": Scenario("idle", n or args.idle_subscribers, args.duration, "rate", args.idle_rate, 1,
                         latency=True),
        "batch": Scenario("batch", n or args.burst_subscribers, args.duration, "burst", 0.0, args.burst_connections,
                          latency=False, batch=args.batch_size),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # several may be named (burst batch); no choices= here: argparse refuses an empty nargs="*" list with them
    parser.add_argument("scenario", nargs="*", metavar="SCENARIO", default="all",
                        help=f"one or more of: {', '.join(SCENARIOS)}, all")
    parser.add_argument("--scenario", dest="scenario_opt", choices=(*SCENARIOS, "all"), default=None,
                        help="the same as the positional argument")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (min/median/max)")
    parser.add_argument("--subscribers", type=int, default=0, help="override every scenario's subscriber count")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per measurement")
    parser.add_argument("--burst-subscribers", type=int, default=100)
    parser.add_argument("--burst-connections", type=int, default=4, help="concurrent keep-alive publishers")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="batch: events per POST /api/broadcast request (a JSON array)")
    parser.add_argument("--steady-subscribers", type=int, default=1000)
    parser.add_argument("--steady-rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--steady-connections", type=int, default=4, help="keep-alive publisher connections")
    parser.add_argument("--idle-subscribers", type=int, default=5000)
    parser.add_argument("--idle-rate", type=float, default=1.0, help="events per second")
    parser.add_argument("--payload", type=int, default=100, help="bytes of data per event")
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="subscriber connections per second")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds after the last publish for every event to arrive")
    parser.add_argument("--max-lag", type=float, default=5.0,
                        help="steady/idle: the publisher stops once an event is this many seconds late")
    parser.add_argument("--rover-env", action="append", default=[], metavar="ROVER_X=VALUE",
                        help="an extra setting for rover_stream (repeatable)")
    parser.add_argument("--py-spy", action="store_true",
                        help="record rover_stream's worker with py-spy during publishing (raw stacks into results/)")
    parser.add_argument("--skip-install", action="store_true",
                        help="use bench/.venv-peers and redis-server as they are; install nothing")
    parser.add_argument("--keep-work", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    if isinstance(args.scenario, str):  # none named: the default
        args.scenario = [args.scenario]
    unknown = [name for name in args.scenario if name not in (*SCENARIOS, "all")]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join((*SCENARIOS, 'all'))}")
    if args.scenario_opt:
        args.scenario = args.scenario_opt
    elif len(args.scenario) == 1:
        args.scenario = args.scenario[0]  # one name: a string, as before
    if args.batch_size < 1:
        parser.error("--batch-size is at least 1")
    return args


def scenario_plan(requested: str | list[str], systems: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The scenarios to run, in order, and the systems of each. ``batch`` runs on the rover_stream systems only,
    and brings ``burst`` with it (for those systems) when it was not asked for, so that its ratio to single
    publishes comes from the same run."""
    names = [requested] if isinstance(requested, str) else list(requested)
    if "all" in names:
        names = list(SCENARIOS)
    names = [name for name in SCENARIOS if name in names]  # the usual order, each once
    plan = {name: list(systems) for name in names}
    if "batch" in plan:
        rover = [s for s in systems if s in ROVER_SYSTEMS]
        skipped = [s for s in systems if s not in ROVER_SYSTEMS]
        if skipped:
            log(f"note: batch runs on the rover_stream systems only (the peers' /api/broadcast takes one event); "
                f"skipping {', '.join(skipped)} there")
        if not rover:
            log("note: batch: no rover_stream system among --systems; nothing to run there")
        plan["batch"] = rover
        if "burst" not in plan and rover:
            log(f"note: batch: running burst (single publishes) for {', '.join(rover)} too, so that the ratio "
                "comes from this run")
            plan = {"burst": rover, **plan}
        names = [name for name in SCENARIOS if name in plan]
    return names, plan


def check_batch_size(args: argparse.Namespace, rover_env: dict[str, str]) -> None:
    """A batch rover_stream would refuse (more events than ROVER_MAX_BATCH, or a body over
    ROVER_MAX_BODY_BYTES) is a usage error, not a measurement."""
    max_batch = int(rover_env.get("ROVER_MAX_BATCH", 1000))
    if args.batch_size > max_batch:
        raise SystemExit(f"--batch-size {args.batch_size} is over rover_stream's ROVER_MAX_BATCH ({max_batch}); "
                         f"add --rover-env ROVER_MAX_BATCH={args.batch_size}")
    max_body = int(rover_env.get("ROVER_MAX_BODY_BYTES", 64 * 1024))
    # each event {"channel":"bench","data":"@k<k>@t<time>@xxx..."}, and a comma
    body = args.batch_size * (max(args.payload, 40) + len(CHANNEL) + 25) + 2
    if body > max_body:
        raise SystemExit(f"--batch-size {args.batch_size} with --payload {args.payload} makes request bodies of "
                         f"about {body:,} bytes, over ROVER_MAX_BODY_BYTES ({max_body:,}); add --rover-env "
                         f"ROVER_MAX_BODY_BYTES={1 << (body - 1).bit_length()}")


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems: {unknown}; choose from {SYSTEMS}")
    rover_env = {}
    for item in args.rover_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("ROVER_"):
            raise SystemExit(f"--rover-env wants ROVER_NAME=VALUE, not {item!r}")
        rover_env[key] = value
    raise_nofile()
    # SIGTERM ends the run the same way as Ctrl-C: every finally stops what it started.
    signal.signal(signal.SIGTERM, interrupt)

    scenario_names, plan = scenario_plan(args.scenario, systems)
    if "batch" in plan:
        check_batch_size(args, rover_env)
    venv_python = ensure_venv(args.skip_install) if set(systems) & set(PEER_SYSTEMS) else Path(sys.executable)
    redis_server = ensure_redis(args.skip_install) if FLASKSSE in systems or ROVER_REDIS in systems else None
    scenarios = scenarios_from(args)
    work = Path(tempfile.mkdtemp(prefix="fanout-"))
    env = Env(venv_python, redis_server, work, rover_env)
    info = versions(venv_python, redis_server)
    log(f"work dir {work}; versions: {info}")
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for repeat in range(args.repeat):
            for name in scenario_names:
                scenario = scenarios[name]
                for system in plan[name]:
                    log(f"[{repeat + 1}/{args.repeat}] {name}: {system}, {scenario.subscribers} subscribers, "
                        f"{scenario.duration:g} s" + (f", batches of {scenario.batch}" if scenario.batch > 1 else "")
                        + " ...")
                    try:
                        result = measure(system, scenario, env, args)
                    except (Unavailable, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        log(f"    {system}: {type(exc).__name__}: {exc}")
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        result = {"system": system, "scenario": name, "error": f"{type(exc).__name__}: {first}",
                                  "error_detail": str(exc)}
                    else:
                        log("    " + summary_line(result))
                    result["repeat"] = repeat
                    runs.append(result)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        if args.keep_work:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = verdicts(runs, scenario_names)
    print_table(rows)
    print_cpu_table(runs, scenario_names)
    ratios = batch_ratios(runs, args.batch_size) if "batch" in scenario_names else []
    print_batch_ratios(ratios)
    print(f"\nburst: {scenarios['burst'].connections} concurrent keep-alive publisher connections in one process; "
          f"payload {args.payload} bytes per event. Total time {time.monotonic() - started:.0f} s.")

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"fanout-{stamp}.json"
    out.write_text(json.dumps({
        "started": stamp, "argv": sys.argv[1:], "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                                                          "platform": platform.platform()},
        "versions": info, "settings": {k: v for k, v in vars(args).items()},
        "scenarios": {k: vars(v) for k, v in scenarios.items() if k in scenario_names},
        "targets": {"burst_cpu_ratio": BURST_CPU_RATIO, "burst_rate_ratio": BURST_RATE_RATIO,
                    "steady_p99_ms": STEADY_P99_MS, "idle_kb": IDLE_KB},
        "rows": rows, "runs": runs, **({"batch_ratios": ratios} if ratios else {}),
    }, indent=2, default=str))
    log(f"wrote {out}")
    rover_rows = [r for r in rows if r["system"] == ROVER]
    missed = not rover_rows or any(r["result"] == "MISS" for r in rover_rows)
    return 1 if missed else 0


def summary_line(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms") or {}
    text = (f"{r['received']:,}/{r['expected_deliveries']:,} delivered, {r['deliveries_per_second']:,.0f}/s, "
            f"server {r['server_cores']:.2f} cores")
    if r["server_cpu_us_per_delivery"] is not None:
        text += f" ({r['server_cpu_us_per_delivery']:.2f} us/delivery)"
    text += f", loadgen {r['subscriber_loadgen_cores']:.2f} + publisher {r['publisher_cores']:.2f} cores"
    if lat:
        text += f", latency p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms"
    text += f", RSS/conn {r['rss_per_connection'] / 1000:.1f} kB, publish rate {r['publish_rate']:,.0f}/s"
    return text


if __name__ == "__main__":
    sys.exit(main())
