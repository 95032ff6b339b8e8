"""100,000 concurrent SSE subscribers (or fewer): connect, hold with heartbeats, broadcast, measure.

What runs
---------
All on loopback, started fresh and stopped at the end (also on Ctrl-C, SIGTERM, an error or the total time
bound ``--max-seconds``):

* ``redis-server`` without persistence (``fanout.start_redis``);
* rover_stream: ``wsgi:app`` with ``ROVER_DEMO=0`` under gunicorn with the checkout's ``gunicorn.conf.py``,
  ``--workers`` gevent workers sharing the hub through Redis (``ROVER_REDIS_URL``),
  ``ROVER_HEARTBEAT_INTERVAL=--heartbeat`` (15 s), and a stream cap per worker (``ROVER_MAX_STREAMS``)
  below the process's open-file limit (``ulimit -Hn``): a worker that the kernel's accept spread made fuller
  than the others refuses new streams with 503 (the load generator tries again) instead of failing with
  EMFILE;
* ``--loadgens`` processes of ``bench/loadgen_scale.py``, each with an equal share of the subscribers (under
  its open-file limit), its own loopback source address(es) ``127.0.0.2``, ``127.0.0.3``, ... (each under
  the ephemeral port range), connecting at ``--connect-rate``/K per second with a bounded number of
  unanswered connections, all to ``GET /realtime/<channel>`` on one channel.

Phases
------
1. **Connect** every subscriber (ready = the first SSE block, ``retry: 3000``, arrived).
2. **Hold** for ``--hold`` (60) seconds after the last one is in, counting heartbeats (``: ping`` comments)
   per subscriber; every subscriber must get at least ``hold // (heartbeat + 1)`` of them in the hold.
3. **Broadcast** ``--broadcasts`` (10) events, ``--spacing`` (3) seconds apart, ``POST /api/broadcast`` with
   the publish time (``time.monotonic()``, shared by every process of the machine) in the data. Every load
   generator records, for each broadcast and each subscriber, receive time minus publish time. Per broadcast:
   subscribers reached, p50, p99 and max (the last subscriber's delivery).

Figures: subscribers connected and held; heartbeats; per broadcast reached / p50 / p99 / max; the server's RSS
(gunicorn master and workers; Redis apart) before connecting, with everyone held, and after the broadcasts,
and per connection ((held - before) / connections); Redis ``connected_clients`` sampled from before the first
subscriber to the end; CPU in cores of the server, Redis, the load generators and the rest of the machine
(other benchmarks sharing it) per phase; the load average. JSON into ``bench/results/scale-<timestamp>.json``;
a table on stdout. Exit status 1 when a target is missed:

* every subscriber connected and held, none lost, at least the expected heartbeats each;
* every broadcast reached every subscriber exactly once, with p99 < ``--p99-target`` (2 s);
* RSS per connection < ``--rss-target`` (8 kB = 8,000 bytes), judged from 5,000 subscribers on;
* Redis connections bounded per worker (at most workers x (1 reader + the engine's publishing pool) + 1 for
  this script), whatever the number of subscribers.

Kernel limits the harness works within (nothing on the machine is changed):

* the open-file limit: each process raises its soft limit to the hard one (``fanout.spawn`` also asks for a
  higher hard limit, which only a process with CAP_SYS_RESOURCE gets); the plan takes the hard limit as it
  is and spreads subscribers over load generators and streams over workers, each under it;
* the ephemeral port range: per source address; each load generator binds its own (127.0.0.2, ...);
* somaxconn and the listen backlog: at most half the backlog of unanswered connections in all;
* ``nf_conntrack_max``: checked before starting (one entry per connection);
* TIME_WAIT: client sockets are closed with a reset at the end, so none is left behind.

Usage::

    python bench/scale.py                          # 20,000 subscribers, 2 workers, 2 load generators
    python bench/scale.py --subscribers 100000 --workers 8 --loadgens 8
    python bench/scale.py --quick                  # 300 subscribers, a few seconds of hold
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fanout  # noqa: E402  (bench/fanout.py: process, CPU, RSS and Redis helpers)

ROOT = HERE.parent
RESULTS = HERE / "results"
LOADGEN = HERE / "loadgen_scale.py"
LOOPBACK = "127.0.0.1"

try:  # the Redis engine's publishing pool per worker (the reader has one more connection)
    from rover_stream.hub.engines.redis import POOL_SIZE as REDIS_POOL_SIZE
except Exception:  # noqa: BLE001
    REDIS_POOL_SIZE = 8

log = fanout.log
#: Below this many subscribers the workers' fixed memory (a few MiB each) outweighs the streams': the RSS per
#: connection is printed but not judged (--quick).
RSS_JUDGED_FROM = 5000


class TimeBound(Exception):
    """The run went past --max-seconds."""


# -- machine readings ----------------------------------------------------------------------------------------


def read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kernel_limits() -> dict[str, Any]:
    ports = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nofile_soft": soft, "nofile_hard": hard,
        "somaxconn": read_int("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": read_int("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        "ip_local_port_range": [int(ports[0]), int(ports[1])],
        "nf_conntrack_max": read_int("/proc/sys/net/netfilter/nf_conntrack_max"),
        "nf_conntrack_count": read_int("/proc/sys/net/netfilter/nf_conntrack_count"),
        "fs_file_max": read_int("/proc/sys/fs/file-max"),
        "fs_file_nr": Path("/proc/sys/fs/file-nr").read_text().split() if Path("/proc/sys/fs/file-nr").exists()
        else None,
        "tcp_mem_pages": [int(x) for x in Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()],
        "mem_total_kib": meminfo().get("MemTotal"),
    }


def meminfo() -> dict[str, int]:
    result = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        try:
            result[name] = int(rest.split()[0])
        except (ValueError, IndexError):
            pass
    return result


def sockstat() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: sockets in use, TIME_WAIT, kernel memory (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return {}


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return (total - idle) / fanout.CLK_TCK, total / fanout.CLK_TCK


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def redis_info(port: int, section: str = "clients", timeout: float = 5.0) -> dict[str, str]:
    """``INFO <section>`` as a dict (a bulk-string answer, read to its announced length)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        data = section.encode()
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$%d\r\n%s\r\n" % (len(data), data))
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise RuntimeError(f"INFO answered {answer[:100]!r}")
        length = int(head[1:])
        while len(body) < length + 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    result = {}
    for line in body[:length].decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key] = value
    return result


def redis_commands(port: int) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``)."""
    try:
        info = redis_info(port, "commandstats")
    except (OSError, RuntimeError) as exc:
        log(f"    redis INFO commandstats failed: {exc}")
        return {}
    result = {}
    for key, value in info.items():
        match = re.search(r"calls=(\d+)", value)
        if key.startswith("cmdstat_") and match:
            result[key[len("cmdstat_"):]] = int(match.group(1))
    return result


def diff_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


# -- the load generators -------------------------------------------------------------------------------------


class Loadgen(fanout.JsonLinesChild):
    def __init__(self, index: int, cmd: list[str], log_path: Path) -> None:
        self.index = index
        self.last: dict[str, Any] = {}
        self.ready: dict[str, Any] | None = None
        super().__init__(cmd, log_path)

    def send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(message) + "\n").encode())
        self.popen.stdin.flush()

    def drain(self) -> None:
        """Take the progress lines waiting (non-blocking); remember the last and the ready one."""
        while True:
            try:
                message = self.lines.get_nowait()
            except queue.Empty:
                return
            self.take(message)

    def take(self, message: dict[str, Any] | None) -> None:
        if message is None:
            raise RuntimeError(f"load generator {self.index} exited ({self.popen.poll()}); its log ends with:\n"
                               + tail(self.log_path))
        if message.get("event") == "error":
            raise RuntimeError(f"load generator {self.index}: {message}")
        if message.get("event") in ("progress", "ready"):
            self.last = message
        if message.get("event") == "ready":
            self.ready = message

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"load generator {self.index} sent no {event!r} within {timeout:g} s")
            try:
                message = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self.take(message)
            assert message is not None
            if message.get("event") == event:
                return message

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                self.send({"cmd": "quit"})
            except (OSError, ValueError):
                pass

    def kill(self, grace: float) -> None:
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                log(f"load generator {self.index} (pid {self.popen.pid}) did not exit after SIGKILL")
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def ask_all(loadgens: list[Loadgen], cmd: str, event: str, timeout: float) -> list[dict[str, Any]]:
    for lg in loadgens:
        lg.send({"cmd": cmd})
    return [lg.expect(event, timeout) for lg in loadgens]


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- figures -------------------------------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class Run:
    """One run: what was started, the readings, and the cleanup."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="scale-"))
        self.redis: fanout.Proc | None = None
        self.redis_port = 0
        self.server: fanout.Proc | None = None
        self.port = 0
        self.loadgens: list[Loadgen] = []
        self.samples: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"phases": {}}
        self.t0 = time.monotonic()
        self.stamp = args.stamp
        self.loadavg_max = list(os.getloadavg())

    # -- process trees ---------------------------------------------------------------------------------------

    def server_pids(self) -> list[int]:
        return fanout.descendants(self.server.popen.pid) if self.server and self.server.popen.poll() is None else []

    def worker_pids(self) -> list[int]:
        return self.server_pids()[1:]

    def redis_pids(self) -> list[int]:
        return [self.redis.popen.pid] if self.redis and self.redis.popen.poll() is None else []

    def loadgen_pids(self) -> list[int]:
        return [lg.popen.pid for lg in self.loadgens if lg.popen.poll() is None]

    def cpu_snapshot(self) -> dict[str, Any]:
        def group(pids: list[int]) -> dict[int, tuple[float, float]]:
            return {pid: s for pid in pids if (s := fanout.schedstat_seconds(pid)) is not None}

        return {"t": time.monotonic(), "server": group(self.server_pids()), "redis": group(self.redis_pids()),
                "loadgens": group(self.loadgen_pids()), "self": group([os.getpid()]), "machine": machine_cpu()}

    def phase(self, name: str, before: dict[str, Any], after: dict[str, Any], **extra: Any) -> dict[str, Any]:
        wall = max(1e-9, after["t"] - before["t"])
        result: dict[str, Any] = {"seconds": wall}
        ours = 0.0
        for key in ("server", "redis", "loadgens", "self"):
            cpu, wait = fanout.cpu_delta(before[key], after[key])
            ours += cpu
            result[f"{key}_cpu_seconds"] = cpu
            result[f"{key}_cores"] = cpu / wall
            result[f"{key}_runqueue_wait_seconds"] = wait
        busy = after["machine"][0] - before["machine"][0]
        result["machine_busy_cores"] = busy / wall
        result["others_cores"] = max(0.0, busy - ours) / wall  # everything else on the machine
        result.update(extra)
        self.result["phases"][name] = result
        return result

    def check_alive(self) -> None:
        for proc in (self.redis, self.server):
            if proc is not None:
                proc.check_alive()
        for lg in self.loadgens:
            if lg.popen.poll() is not None:
                lg.drain()
                raise RuntimeError(f"load generator {lg.index} exited ({lg.popen.poll()}):\n{tail(lg.log_path)}")
        self.loadavg_max = [max(a, b) for a, b in zip(self.loadavg_max, os.getloadavg(), strict=True)]

    def sample(self, label: str) -> dict[str, Any]:
        workers = self.worker_pids()
        try:
            clients = int(redis_info(self.redis_port)["connected_clients"])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            clients = -1
            log(f"    redis INFO failed: {exc}")
        server_pids = self.server_pids()
        ready = sum(int((lg.ready or lg.last).get("ready", 0)) for lg in self.loadgens)
        loadavg = list(os.getloadavg())
        entry: dict[str, Any] = {
            "label": label, "t": round(time.monotonic() - self.t0, 2), "subscribers_ready": ready,
            "redis_connected_clients": clients,
            "server_rss": sum(fanout.rss_bytes(p) for p in server_pids),
            "worker_rss": [fanout.rss_bytes(p) for p in workers], "worker_fds": [fd_count(p) for p in workers],
            "redis_rss": sum(fanout.rss_bytes(p) for p in self.redis_pids()),
            "loadgen_rss": sum(fanout.rss_bytes(p) for p in self.loadgen_pids()),
            "loadavg": loadavg, "sockstat_tcp": sockstat(),
            "nf_conntrack_count": read_int("/proc/sys/net/netfilter/nf_conntrack_count"),
            "mem_available_kib": meminfo().get("MemAvailable"),
        }
        self.samples.append(entry)
        self.loadavg_max = [max(a, b) for a, b in zip(self.loadavg_max, loadavg, strict=True)]
        return entry

    # -- start -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        args = self.args
        redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(redis_server).exists():
            raise RuntimeError("redis-server is not installed (Debian: apt-get install -y redis-server)")
        self.redis_server = redis_server
        env = fanout.Env(Path(sys.executable), redis_server, self.work, {}, worker_connections=10000)
        self.redis, self.redis_port = fanout.start_redis(env)
        environ = fanout.base_env()
        environ.update({
            "ROVER_DEMO": "0", "ROVER_LOG_LEVEL": args.log_level, "ROVER_WORKERS": str(args.workers),
            "ROVER_REDIS_URL": f"redis://{LOOPBACK}:{self.redis_port}/0",
            "ROVER_HEARTBEAT_INTERVAL": f"{args.heartbeat:g}",
            "ROVER_WORKER_CONNECTIONS": str(args.worker_connections),
            "ROVER_MAX_STREAMS": str(args.max_streams), "ROVER_PUBLISH_RATE": "0",
        })
        environ.update(args.rover_env_dict)
        if args.backlog:
            environ["GUNICORN_CMD_ARGS"] = f"--backlog {args.backlog}"  # wins over gunicorn.conf.py's value
        self.environ = {k: v for k, v in environ.items() if k.startswith(("ROVER_", "GUNICORN_"))}
        self.server, self.port = fanout.start_gunicorn(f"rover_stream redis x{args.workers}", sys.executable,
                                                       fanout.GUNICORN_CONF, ROOT, "wsgi:app", environ, self.work)
        deadline = time.monotonic() + fanout.START_TIMEOUT
        while True:  # every worker booted
            self.check_alive()
            booted = self.server.log_path.read_bytes().count(b"Booting worker with pid")
            if booted >= args.workers and len(self.worker_pids()) >= args.workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{booted} of {args.workers} workers booted within {fanout.START_TIMEOUT:g} s:\n"
                                   + self.server.log_tail())
            time.sleep(0.1)
        system = fanout.System("rover_stream", [self.redis, self.server], self.port, f"/realtime/{args.channel}",
                               "block")
        fanout.check_endpoints(system)
        for _ in range(4 * args.workers):  # a publish or two per worker, whichever accepts it
            fanout.http_json(self.port, "POST", "/api/broadcast", {"channel": "warmup", "data": "w"})
        time.sleep(args.settle)

    def start_loadgens(self, plan: list[dict[str, Any]]) -> None:
        args = self.args
        for entry in plan:
            cmd = [sys.executable, str(LOADGEN), "--id", str(entry["id"]), "--host", LOOPBACK, "--port",
                   str(self.port), "--path", f"/realtime/{args.channel}", "--count", str(entry["count"]),
                   "--sources", ",".join(entry["sources"]), "--connect-rate", f"{entry['rate']:g}",
                   "--max-pending", str(entry["max_pending"]), "--attempts", str(args.attempts)]
            self.loadgens.append(Loadgen(entry["id"], cmd, self.work / f"loadgen-{entry['id']}.log"))

    # -- stop ------------------------------------------------------------------------------------------------

    def wait_released(self, timeout: float = 60.0) -> None:
        """After the load generators reset their connections: how long the workers take to close theirs (their
        descriptors back to the baseline), before they are told to stop."""
        base = self.samples[0]["worker_fds"] if self.samples else []
        workers = self.worker_pids()
        if not base or not workers or self.server is None or self.server.popen.poll() is not None:
            return
        started = time.monotonic()
        fds = [fd_count(p) for p in workers]
        while time.monotonic() - started < timeout:
            fds = [fd_count(p) for p in workers]
            if min(fds) <= 0 or sum(fds) <= sum(base) + 20 * len(workers):  # a worker gone: 0 or -1
                break
            time.sleep(0.2)
        self.result["release_seconds"] = time.monotonic() - started
        self.result["worker_fds_after_release"] = fds
        self.result["workers_gone_during_release"] = sum(1 for x in fds if x <= 0)

    def stop(self) -> None:
        for lg in self.loadgens:
            lg.stop()
        for lg in self.loadgens:
            lg.kill(20)
        self.wait_released()
        for proc in (self.server, self.redis):
            if proc is not None:
                proc.stop()
        if self.server is not None:
            self.result["server_log_at_end"] = scan_log(self.server.log_path)
        for pid in self.server_pids() + self.redis_pids():  # should be none left
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the run -------------------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace, limits: dict[str, Any]) -> list[dict[str, Any]]:
    """Subscribers per load generator, their source addresses, rate and pending bound, within the limits."""
    n, k = args.subscribers, args.loadgens
    fd_cap = limits["nofile_hard"] - 100
    low, high = limits["ip_local_port_range"]
    port_cap = max(1000, (high - low + 1) - 2000)  # per source address, with room for whatever else runs
    per_loadgen = math.ceil(n / k)
    if per_loadgen > fd_cap:
        raise SystemExit(f"{per_loadgen} subscribers per load generator is above the open-file limit "
                         f"({limits['nofile_hard']}): use --loadgens {math.ceil(n / fd_cap)} or more")
    backlog = min(args.backlog or 2048, limits["somaxconn"] or 4096)
    max_pending = max(5, min(args.max_pending, (backlog // 2) // k))
    plan, start, address = [], 0, 2
    for i in range(k):
        count = n // k + (1 if i < n % k else 0)
        naddr = max(1, math.ceil(count / port_cap))
        sources = [f"127.0.0.{address + j}" for j in range(naddr)]
        address += naddr
        if address > 254:
            raise SystemExit("not enough 127.0.0.x source addresses for this plan")
        plan.append({"id": i, "count": count, "first": start, "sources": sources, "rate": args.connect_rate / k,
                     "max_pending": max_pending})
        start += count
    return plan


def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = kernel_limits()
    plan = make_plan(args, limits)
    n = args.subscribers
    capacity = args.workers * args.max_streams
    if n > capacity:
        raise SystemExit(f"{n} subscribers need more than {args.workers} workers x {args.max_streams} streams: "
                         f"use --workers {math.ceil(n / args.max_streams)} or more")
    if args.max_streams + 500 > limits["nofile_hard"]:
        raise SystemExit(f"--max-streams {args.max_streams} leaves a worker too few of its "
                         f"{limits['nofile_hard']} descriptors")
    conntrack_max, conntrack = limits["nf_conntrack_max"], limits["nf_conntrack_count"]
    if conntrack_max and conntrack is not None and conntrack + n + 1000 > conntrack_max:
        raise SystemExit(f"the connection tracking table holds {conntrack} of {conntrack_max} entries: no room for "
                         f"{n} more (wait for old entries to expire)")
    mem = meminfo()
    need_kib = n * 40  # ~7 kB server + ~4 kB kernel per socket end + ~2 kB load generator, with a margin
    if mem.get("MemAvailable", 0) < need_kib:
        raise SystemExit(f"{mem.get('MemAvailable', 0) // 1024} MiB available; {need_kib // 1024} MiB wanted")
    r = Run(args)
    r.result.update({"plan": plan, "kernel_limits": limits})
    log(f"work dir {r.work}; {n:,} subscribers, {args.workers} workers (cap {args.max_streams:,} streams each), "
        f"{args.loadgens} load generators x ~{plan[0]['count']:,} (sources {plan[0]['sources'][0]}.."
        f"{plan[-1]['sources'][-1]}), {args.connect_rate:g} connections/s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    try:
        r.start()
        r.result["settings_env"] = r.environ
        base = r.sample("baseline")
        commands_base = redis_commands(r.redis_port)
        log(f"server up on port {r.port}: {len(r.worker_pids())} workers, RSS {base['server_rss'] / 2**20:.1f} MiB, "
            f"redis clients {base['redis_connected_clients']}")
        # -- connect ---------------------------------------------------------------------------------------
        cpu_a = r.cpu_snapshot()
        t_connect = time.monotonic()
        r.start_loadgens(plan)
        connect_timeout = connect_budget(args)
        profiler = start_profiler(r, "connect", min(60.0, n / args.connect_rate * 2 + 5), args)
        next_note = next_sample = time.monotonic()
        marks = sorted({max(1, n // 100), n // 10, n // 2})
        while True:
            r.check_alive()
            for lg in r.loadgens:
                lg.drain()
            ready = sum(int((lg.ready or lg.last).get("ready", 0)) for lg in r.loadgens)
            now = time.monotonic()
            if marks and ready >= marks[0]:
                while marks and ready >= marks[0]:
                    marks.pop(0)
                r.sample(f"connecting {ready}")
                next_sample = now + 5
            elif now >= next_sample:
                r.sample(f"connecting {ready}")
                next_sample = now + 5
            if now >= next_note:
                failed = sum(int(lg.last.get("failed", 0)) for lg in r.loadgens)
                retried = sum(int(lg.last.get("retried", 0)) for lg in r.loadgens)
                fds = r.samples[-1]["worker_fds"]
                log(f"    connecting: {ready:,}/{n:,} ready, {failed} failed, {retried} retried; worker fds {fds}; "
                    f"load {os.getloadavg()[0]:.2f}")
                next_note = now + 10
            if all(lg.ready is not None for lg in r.loadgens):
                break
            if now - t_connect > connect_timeout:
                raise RuntimeError(f"only {ready:,} of {n:,} subscribers connected within {connect_timeout:.0f} s")
            time.sleep(0.2)
        connect_seconds = time.monotonic() - t_connect
        cpu_b = r.cpu_snapshot()
        finish_profiler(profiler)
        readies = [lg.ready or {} for lg in r.loadgens]
        connected = sum(int(x.get("ready", 0)) for x in readies)
        failed = sum(int(x.get("failed", 0)) for x in readies)
        http_errors: dict[str, int] = {}
        for x in readies:
            for key, value in x.get("http_errors", {}).items():
                http_errors[key] = http_errors.get(key, 0) + value
        connected_sample = r.sample("all connected")
        commands_connected = redis_commands(r.redis_port)
        r.phase("connect", cpu_a, cpu_b, connections_per_second=connected / max(1e-9, connect_seconds))
        log(f"connected {connected:,}/{n:,} in {connect_seconds:.1f} s ({failed} failed, retried "
            f"{sum(int(x.get('retried', 0)) for x in readies)}, HTTP errors {http_errors}); worker fds "
            f"{connected_sample['worker_fds']}; server RSS {connected_sample['server_rss'] / 2**20:.1f} MiB")
        if failed:
            log(f"    {failed} subscribers could not connect; the server log ends with:\n"
                + (r.server.log_tail() if r.server else ""))
        # -- hold ------------------------------------------------------------------------------------------
        ask_all(r.loadgens, "hold", "hold", 30)
        t_hold = time.monotonic()
        hold_end = t_hold + args.hold
        while time.monotonic() < hold_end:
            r.check_alive()
            time.sleep(min(5.0, max(0.0, hold_end - time.monotonic())))
            if time.monotonic() < hold_end - 1:
                entry = r.sample("holding")
                log(f"    holding: {time.monotonic() - t_hold:.0f}/{args.hold:g} s; redis clients "
                    f"{entry['redis_connected_clients']}; server RSS {entry['server_rss'] / 2**20:.1f} MiB; "
                    f"load {entry['loadavg'][0]:.2f}")
        held_seconds = time.monotonic() - t_hold
        held_sample = r.sample("end of hold")
        hold_stats = ask_all(r.loadgens, "stats", "stats", 60)
        cpu_c = r.cpu_snapshot()
        r.phase("hold", cpu_b, cpu_c)
        open_after_hold = sum(s["open"] for s in hold_stats)
        log(f"held {held_seconds:.1f} s: {open_after_hold:,} open, {sum(s['lost'] for s in hold_stats)} lost, "
            f"{sum(s['hold_heartbeats'] for s in hold_stats):,} heartbeats in the hold (min per subscriber "
            f"{min(s['hold_heartbeats_min'] for s in hold_stats)})")
        # -- broadcasts ------------------------------------------------------------------------------------
        published: list[dict[str, Any]] = []
        profiler = start_profiler(r, "broadcast", args.broadcasts * args.spacing + 2, args)
        conn = http.client.HTTPConnection(LOOPBACK, r.port, timeout=30)
        pad = "x" * max(0, args.payload - 40)
        for k in range(args.broadcasts):
            r.check_alive()
            t_pub = time.monotonic()
            body = json.dumps({"channel": args.channel, "data": f"@b{k}@t{t_pub:.6f}@{pad}"}).encode()
            try:
                conn.request("POST", "/api/broadcast", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, r.port, timeout=30)
                raw, status = str(exc).encode(), 0
            t_answer = time.monotonic()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = raw[:200].decode(errors="replace")
            published.append({"k": k, "t_publish": t_pub, "answer_ms": (t_answer - t_pub) * 1e3, "status": status,
                              "answer": answer})
            if status != 200:
                log(f"    broadcast {k}: HTTP {status} {answer}")
            if k < args.broadcasts - 1:
                time.sleep(max(0.0, t_pub + args.spacing - time.monotonic()))
        conn.close()
        finish_profiler(profiler)
        drain_end = time.monotonic() + args.drain_timeout
        while True:
            stats = ask_all(r.loadgens, "stats", "stats", 60)
            reached = [sum(int(s["reached"].get(str(k), 0)) for s in stats) for k in range(args.broadcasts)]
            still_open = sum(s["open"] for s in stats)
            if all(x >= still_open for x in reached) or time.monotonic() > drain_end:
                break
            time.sleep(1.0)
        cpu_d = r.cpu_snapshot()
        after_sample = r.sample("after broadcasts")
        commands_after = redis_commands(r.redis_port)
        reports = ask_all(r.loadgens, "report", "report", 120)
        delivered = sum(int(v) for rep in reports for v in rep["reached"].values())
        beats = sum(rep["heartbeats"] for rep in reports) - sum(s["heartbeats"] for s in hold_stats)
        bphase = r.phase("broadcast", cpu_c, cpu_d, deliveries=delivered, heartbeats=beats)
        bphase["server_cpu_us_per_write"] = bphase["server_cpu_seconds"] / max(1, delivered + beats) * 1e6
        bphase["loadgen_cpu_us_per_read"] = bphase["loadgens_cpu_seconds"] / max(1, delivered + beats) * 1e6
        # -- figures ---------------------------------------------------------------------------------------
        broadcasts = []
        for entry in published:
            k = entry["k"]
            latencies: list[float] = []
            for rep in reports:
                latencies.extend(v / 1e3 for v in rep["latency_us"].get(str(k), []) if v >= 0)
            latencies.sort()
            firsts = [rep["first_rx"][str(k)] for rep in reports if str(k) in rep["first_rx"]]
            lasts = [rep["last_rx"][str(k)] for rep in reports if str(k) in rep["last_rx"]]
            broadcasts.append({
                **{key: entry[key] for key in ("k", "answer_ms", "status")},
                "subscribers_reported": entry["answer"].get("subscribers") if isinstance(entry["answer"], dict)
                else None,
                "reached": len(latencies),
                "p50_ms": percentile(latencies, 0.50), "p90_ms": percentile(latencies, 0.90),
                "p99_ms": percentile(latencies, 0.99), "max_ms": latencies[-1] if latencies else float("nan"),
                "min_ms": latencies[0] if latencies else float("nan"),
                "first_rx_ms": (min(firsts) - entry["t_publish"]) * 1e3 if firsts else None,
                "last_rx_ms": (max(lasts) - entry["t_publish"]) * 1e3 if lasts else None,
                "per_loadgen_last_ms": [round((rep["last_rx"][str(k)] - entry["t_publish"]) * 1e3, 1)
                                        if str(k) in rep["last_rx"] else None for rep in reports],
            })
        final_open = sum(rep["open"] for rep in reports)
        lost = sum(rep["lost"] for rep in reports)
        excess = sum(rep["excess"] for rep in reports)
        heartbeats_total = sum(rep["heartbeats"] for rep in reports)
        hold_min = min(s["hold_heartbeats_min"] for s in hold_stats)
        no_hb = sum(s["no_hold_heartbeat"] for s in hold_stats)
        clients = [s["redis_connected_clients"] for s in r.samples if s["redis_connected_clients"] >= 0]
        clients_with_subs = [s["redis_connected_clients"] for s in r.samples
                             if s["subscribers_ready"] > 0 and s["redis_connected_clients"] >= 0]
        rss_base, rss_held, rss_after = base["server_rss"], held_sample["server_rss"], after_sample["server_rss"]
        r.result.update({
            "subscribers": n, "connected": connected, "failed": failed, "http_errors": http_errors,
            "retried": sum(int(x.get("retried", 0)) for x in readies),
            "connect_errors": merge([x.get("errors", {}) for x in readies]),
            "connect_seconds": connect_seconds, "held_seconds": held_seconds, "open_after_hold": open_after_hold,
            "open_at_end": final_open, "lost": lost, "ended": merge([rep.get("ended", {}) for rep in reports]),
            "heartbeats_total": heartbeats_total,
            "hold_heartbeats": sum(s["hold_heartbeats"] for s in hold_stats), "hold_heartbeats_min": hold_min,
            "hold_heartbeats_max": max(s["hold_heartbeats_max"] for s in hold_stats),
            "subscribers_without_hold_heartbeat": no_hb,
            "hold_heartbeats_expected_min": expected_heartbeats(args),
            "broadcasts": broadcasts, "excess_deliveries": excess,
            "rss": {"server_before": rss_base, "server_connected": connected_sample["server_rss"],
                    "server_held": rss_held, "server_after_broadcasts": rss_after,
                    "per_connection_held": (rss_held - rss_base) / max(1, connected),
                    "per_connection_after_broadcasts": (rss_after - rss_base) / max(1, connected),
                    "redis_before": base["redis_rss"], "redis_held": held_sample["redis_rss"],
                    "workers_held": held_sample["worker_rss"], "workers_before": base["worker_rss"],
                    "loadgens_held": held_sample["loadgen_rss"],
                    "kernel_tcp_pages_before": base["sockstat_tcp"].get("mem"),
                    "kernel_tcp_pages_held": held_sample["sockstat_tcp"].get("mem")},
            "worker_fds_connected": connected_sample["worker_fds"],
            "redis_clients": {"before": base["redis_connected_clients"],
                              "with_subscribers_min": min(clients_with_subs, default=-1),
                              "with_subscribers_max": max(clients_with_subs, default=-1),
                              "end_of_hold": held_sample["redis_connected_clients"],
                              "after": after_sample["redis_connected_clients"], "max": max(clients, default=-1),
                              "bound": args.workers * (1 + REDIS_POOL_SIZE) + 1},
            "redis_commands": {"connect": diff_counts(commands_base, commands_connected),
                               "hold_and_broadcasts": diff_counts(commands_connected, commands_after)},
            "loadgen_cpu_seconds_total": sum(rep["cpu_seconds"] for rep in reports),
            "server_log": scan_log(r.server.log_path) if r.server else {},
            "broadcast_window_seconds": bphase["seconds"],
        })
        return r.result
    finally:
        r.result["samples"] = r.samples
        r.result["loadavg_max"] = r.loadavg_max
        r.result["total_seconds"] = time.monotonic() - r.t0
        r.stop()
        if args.keep_work:
            log(f"logs kept in {r.work}")
        else:
            shutil.rmtree(r.work, ignore_errors=True)


def connect_budget(args: argparse.Namespace) -> float:
    """Seconds allowed for connecting everyone (--connect-timeout): three times the planned time, or 100
    connections a second, whichever is longer, plus two minutes. (The server manages 200-450 a second on
    this 2-core machine when other benchmarks share it, and slows as it fills: see the report.)"""
    if args.connect_timeout > 0:
        return float(args.connect_timeout)
    return max(args.subscribers / args.connect_rate * 3, args.subscribers / 100) + 120


def start_profiler(r: Run, phase: str, seconds: float, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """py-spy on the first worker for ``seconds`` (raw stacks into results/), with --py-spy."""
    py_spy = shutil.which("py-spy")
    workers = r.worker_pids()
    if not args.py_spy or py_spy is None or not workers:
        if args.py_spy:
            log("    py-spy: not installed, or no worker")
        return None
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-pyspy-{phase}-{r.stamp}.txt"
    log(f"    py-spy: recording worker {workers[0]} for {seconds:.0f} s into {out}")
    return subprocess.Popen([py_spy, "record", "--pid", str(workers[0]), "--duration", str(max(1, int(seconds))),
                             "--format", "raw", "--output", str(out), "--nonblocking", "--rate", "100"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def finish_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    try:
        profiler.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(profiler.pid, signal.SIGKILL)
        profiler.wait(5)


def merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + int(value)
    return out


def expected_heartbeats(args: argparse.Namespace) -> int:
    """Heartbeats every subscriber must get in the hold: one per interval (the writer looks at most every
    second, hence + 1); none when the hold is shorter than that."""
    return int(args.hold // (args.heartbeat + 1))


def scan_log(path: Path) -> dict[str, int]:
    counts = {"lines": 0, "tracebacks": 0, "errors": 0, "warnings": 0, "slow_client": 0, "too_many_streams": 0,
              "history_gap": 0, "worker_timeouts": 0, "workers_booted": 0}
    try:
        with open(path, "rb") as f:
            for line in f:
                counts["lines"] += 1
                if b"Traceback" in line:
                    counts["tracebacks"] += 1
                if b"ERROR" in line or b"[error]" in line.lower():
                    counts["errors"] += 1
                if b"WARNING" in line or b"[warning]" in line.lower():
                    counts["warnings"] += 1
                if b"WORKER TIMEOUT" in line:
                    counts["worker_timeouts"] += 1
                if b"Booting worker with pid" in line:
                    counts["workers_booted"] += 1
                for key in ("slow_client", "too_many_streams", "history_gap"):
                    if key.encode() in line:
                        counts[key] += 1
    except OSError:
        pass
    return counts


# -- verdicts and output -------------------------------------------------------------------------------------


def verdict_rows(res: dict[str, Any], args: argparse.Namespace, system: str) -> list[dict[str, Any]]:
    n = res["subscribers"]
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: Any, shown: str, target: str, ok: bool | None) -> None:
        rows.append({"scenario": f"scale {n:,}", "system": system, "figure": figure, "median_value": value,
                     "median": shown, "spread": "", "ratio": "", "target": target,
                     "result": "" if ok is None else ("PASS" if ok else "MISS")})

    row("subscribers connected", res["connected"], f"{res['connected']:,} / {n:,} in {res['connect_seconds']:.0f} s"
        f" ({res['retried']} retried)", "all", res["connected"] == n and not res["failed"])
    row("held, still open", res["open_after_hold"], f"{res['open_after_hold']:,} for {res['held_seconds']:.1f} s",
        f"all, >= {args.hold:g} s", res["open_after_hold"] == n and res["held_seconds"] >= args.hold)
    row("heartbeats in the hold", res["hold_heartbeats"],
        f"{res['hold_heartbeats']:,} (min {res['hold_heartbeats_min']}/subscriber; "
        f"{res['heartbeats_total']:,} in all)", f">= {res['hold_heartbeats_expected_min']} each",
        res["hold_heartbeats_min"] >= res["hold_heartbeats_expected_min"])
    for b in res["broadcasts"]:
        ok = b["reached"] == n and b["status"] == 200 and b["p99_ms"] < args.p99_target * 1e3
        row(f"broadcast {b['k']}: p99 ms (reached; p50 / p99 / max)", b["p99_ms"],
            f"{b['reached']:,}/{n:,}  {b['p50_ms']:,.0f} / {b['p99_ms']:,.0f} / {b['max_ms']:,.0f} ms",
            f"all, p99 < {args.p99_target * 1e3:,.0f} ms", ok)
    worst = max((b["p99_ms"] for b in res["broadcasts"]), default=float("nan"))
    row("worst broadcast p99 ms", worst, f"{worst:,.0f} ms", f"< {args.p99_target * 1e3:,.0f} ms",
        bool(res["broadcasts"]) and worst < args.p99_target * 1e3)
    dropped = res["lost"] + res["excess_deliveries"] + sum(n - b["reached"] for b in res["broadcasts"])
    row("dropped (lost streams, missing or extra events)", dropped,
        f"{res['lost']} streams lost, {sum(n - b['reached'] for b in res['broadcasts']):,} missing, "
        f"{res['excess_deliveries']} extra", "none", dropped == 0)
    rss = res["rss"]
    per = rss["per_connection_held"]
    row("server RSS per connection, held (kB)", per / 1000,
        f"{per / 1000:.2f} kB ({(rss['server_held'] - rss['server_before']) / 2**20:,.0f} MiB over "
        f"{rss['server_before'] / 2**20:,.0f} MiB)",
        f"< {args.rss_target / 1000:g} kB" if n >= RSS_JUDGED_FROM else f"(judged from {RSS_JUDGED_FROM:,} on)",
        per < args.rss_target if n >= RSS_JUDGED_FROM else None)
    row("server RSS per connection, after broadcasts (kB)", rss["per_connection_after_broadcasts"] / 1000,
        f"{rss['per_connection_after_broadcasts'] / 1000:.2f} kB", "", None)
    rc = res["redis_clients"]
    row("Redis connected clients (max)", rc["max"],
        f"before {rc['before']}, with subscribers {rc['with_subscribers_min']}..{rc['with_subscribers_max']}, "
        f"after {rc['after']}", f"<= {rc['bound']} ({args.workers} x {1 + REDIS_POOL_SIZE} + 1)",
        0 <= rc["max"] <= rc["bound"])
    return rows


def print_report(res: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    n = res["subscribers"]
    la = res["machine"]["loadavg_start"]
    lm = res["loadavg_max"]
    print(f"\nscale: {n:,} SSE subscribers on one channel, {args.workers} gevent workers on Redis, "
          f"{args.loadgens} load generators; {os.cpu_count()} cores; load average at start "
          f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, highest during the run {lm[0]:.2f} {lm[1]:.2f} {lm[2]:.2f}\n")
    cols = [("figure", "figure"), ("median", "value"), ("target", "target"), ("result", "result")]
    widths = {key: max(len(title), *(len(str(r[key])) for r in rows)) for key, title in cols}
    header = "  ".join(title.ljust(widths[key]) for key, title in cols)
    print(header)
    print("-" * len(header))
    for r in rows:
        print("  ".join(str(r[key]).ljust(widths[key]) for key, _ in cols).rstrip())
    print("\nbroadcasts (ms from publish; answer = the POST's round trip; last per load generator):")
    print(f"{'k':>2}  {'reached':>9}  {'answer':>7}  {'first':>7}  {'p50':>7}  {'p90':>7}  {'p99':>7}  {'max':>7}  "
          "last per load generator")
    for b in res["broadcasts"]:
        print(f"{b['k']:>2}  {b['reached']:>9,}  {b['answer_ms']:>7.1f}  {b['first_rx_ms'] or 0:>7.1f}  "
              f"{b['p50_ms']:>7.0f}  {b['p90_ms']:>7.0f}  {b['p99_ms']:>7.0f}  {b['max_ms']:>7.0f}  "
              + " ".join(f"{x:.0f}" if x is not None else "-" for x in b["per_loadgen_last_ms"]))
    print("\nCPU in cores (CPU seconds / wall seconds) and run-queue wait per phase:")
    print(f"{'phase':9}  {'seconds':>7}  {'server':>7}  {'redis':>6}  {'loadgens':>8}  {'harness':>7}  "
          f"{'others':>6}  {'machine':>7}  {'server wait':>11}")
    for name, p in res["phases"].items():
        print(f"{name:9}  {p['seconds']:>7.1f}  {p['server_cores']:>7.2f}  {p['redis_cores']:>6.2f}  "
              f"{p['loadgens_cores']:>8.2f}  {p['self_cores']:>7.2f}  {p['others_cores']:>6.2f}  "
              f"{p['machine_busy_cores']:>7.2f}  {p['server_runqueue_wait_seconds'] / p['seconds']:>11.2f}")
    b = res["phases"].get("broadcast", {})
    if b:
        print(f"broadcast phase: {b['deliveries']:,} deliveries + {b['heartbeats']:,} heartbeats; server "
              f"{b['server_cpu_us_per_write']:.1f} us CPU per event written, load generators "
              f"{b['loadgen_cpu_us_per_read']:.1f} us per event read")
    rss = res["rss"]
    fds = res["worker_fds_connected"]
    print(f"\nworkers: descriptors when all connected {fds} (streams per worker ~ these); RSS held "
          f"{[round(x / 2**20) for x in rss['workers_held']]} MiB; Redis RSS {rss['redis_held'] / 2**20:.1f} MiB; "
          f"load generators {rss['loadgens_held'] / 2**20:.0f} MiB; kernel TCP memory "
          f"{(rss['kernel_tcp_pages_held'] or 0) * 4 / 1024:.0f} MiB held")
    print(f"connect: {res['connect_seconds']:.1f} s, HTTP errors {res['http_errors'] or 'none'}, connection errors "
          f"{res['connect_errors'] or 'none'}; server log: {res['server_log']}")
    connect_cmds = res["redis_commands"]["connect"]
    print("Redis commands while connecting, per subscriber: " + (", ".join(
        f"{name} {calls / max(1, res['connected']):.2f}" for name, calls in
        sorted(connect_cmds.items(), key=lambda kv: -kv[1]) if name not in ("info",)) or "-"))
    limits = res["kernel_limits"]
    conntrack = [x["nf_conntrack_count"] for x in res["samples"] if x.get("nf_conntrack_count") is not None]
    tw = [x["sockstat_tcp"].get("tw", 0) for x in res["samples"]]
    print(f"kernel: open files {limits['nofile_soft']}/{limits['nofile_hard']} per process (most descriptors: "
          f"worker {max(max(x['worker_fds'] or [0]) for x in res['samples'])}, load generator "
          f"{max(p['count'] for p in res['plan']) + 10}); somaxconn {limits['somaxconn']}; ports "
          f"{limits['ip_local_port_range'][0]}-{limits['ip_local_port_range'][1]} per source address (at most "
          f"{max(math.ceil(p['count'] / len(p['sources'])) for p in res['plan']):,} used); conntrack "
          f"{max(conntrack, default=0):,} of {limits['nf_conntrack_max']} at most; TIME_WAIT at most "
          f"{max(tw, default=0):,}")
    if "release_seconds" in res:
        gone = res.get("workers_gone_during_release", 0)
        print(f"after the load generators reset their connections, the workers closed theirs in "
              f"{res['release_seconds']:.1f} s (descriptors {res['worker_fds_after_release']}"
              + (f"; {gone} workers had exited: see the server log at the end below" if gone else "") + ")")
    if "server_log_at_end" in res:
        print(f"server log at the end: {res['server_log_at_end']}")
    print(f"total time {res['total_seconds']:.0f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gevent workers (Redis hub)")
    parser.add_argument("--loadgens", type=int, default=0,
                        help="load generator processes (0: one per 14,000 subscribers, at least 2)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to hold everyone before broadcasting")
    parser.add_argument("--broadcasts", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=3.0, help="seconds between broadcasts")
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="new connections per second, in all")
    parser.add_argument("--connect-timeout", type=float, default=0,
                        help="seconds for every subscriber to connect (0: max(3x planned, N/100 s) + 120 s)")
    parser.add_argument("--max-pending", type=int, default=200,
                        help="unanswered connections per load generator at most (also capped so that all of "
                             "them fit in half the listen backlog)")
    parser.add_argument("--attempts", type=int, default=20, help="connection tries per subscriber")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="ROVER_HEARTBEAT_INTERVAL, seconds")
    parser.add_argument("--max-streams", type=int, default=0,
                        help="ROVER_MAX_STREAMS per worker (0: the hard open-file limit - 2,000, at most 18,000)")
    parser.add_argument("--worker-connections", type=int, default=0,
                        help="ROVER_WORKER_CONNECTIONS (0: max-streams / 0.9, as MAX_STREAMS 'auto' assumes)")
    parser.add_argument("--backlog", type=int, default=0,
                        help="gunicorn --backlog (0: gunicorn.conf.py's own, 2048)")
    parser.add_argument("--payload", type=int, default=100, help="bytes of data per broadcast")
    parser.add_argument("--channel", default="scale")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds after the last broadcast for every delivery to arrive")
    parser.add_argument("--p99-target", type=float, default=2.0, help="seconds")
    parser.add_argument("--rss-target", type=float, default=8000.0, help="bytes per connection")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before the RSS baseline")
    parser.add_argument("--log-level", default="info", help="ROVER_LOG_LEVEL of the server")
    parser.add_argument("--rover-env", action="append", default=[], metavar="ROVER_X=VALUE",
                        help="an extra setting for rover_stream (repeatable)")
    parser.add_argument("--max-seconds", type=float, default=0,
                        help="bound on the whole run (0: from the sizes: connect x3 + hold + broadcasts + 300 s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny: 300 subscribers, 2 workers, 2 load generators, 2 s heartbeat, 5 s hold, "
                             "3 broadcasts")
    parser.add_argument("--py-spy", action="store_true",
                        help="record the first worker with py-spy while connecting and while broadcasting "
                             "(raw stacks into results/scale-pyspy-<phase>-<timestamp>.txt)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work dir (server and loadgen logs)")
    args = parser.parse_args(argv)
    args.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.quick:
        args.subscribers, args.workers, args.loadgens = 300, 2, 2
        args.hold, args.broadcasts, args.spacing, args.heartbeat = 5.0, 3, 1.0, 2.0
        args.connect_rate, args.drain_timeout, args.settle = 500.0, 10.0, 1.0
    if args.loadgens <= 0:
        args.loadgens = max(2, math.ceil(args.subscribers / 14000))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if args.max_streams <= 0:
        args.max_streams = max(100, min(18000, hard - 2000))
    if args.worker_connections <= 0:
        args.worker_connections = max(100, math.ceil(args.max_streams / 0.9))
    args.rover_env_dict = {}
    for item in args.rover_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("ROVER_"):
            parser.error(f"--rover-env wants ROVER_NAME=VALUE, not {item!r}")
        args.rover_env_dict[key] = value
    if args.max_seconds <= 0:
        args.max_seconds = (connect_budget(args) + args.hold
                            + args.broadcasts * args.spacing + args.drain_timeout + 300)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeBound(f"the run took longer than --max-seconds {args.max_seconds:.0f}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.max_seconds) + 1)
    started = args.stamp
    machine = {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()), "platform": platform.platform()}
    system = f"rover_stream redis x{args.workers}"
    error = None
    res: dict[str, Any] = {}
    try:
        res = run(args)
    except (KeyboardInterrupt, TimeBound, RuntimeError, OSError, subprocess.SubprocessError, fanout.Unavailable) as exc:
        error = ("interrupted (Ctrl-C or SIGTERM)" if isinstance(exc, KeyboardInterrupt)
                 else f"{type(exc).__name__}: {exc}")
        log(error)
    finally:
        signal.alarm(0)
    machine["loadavg_end"] = list(os.getloadavg())
    out: dict[str, Any] = {"started": started, "argv": sys.argv[1:], "machine": machine,
                           "settings": {k: v for k, v in vars(args).items()}, "error": error}
    try:
        out["versions"] = fanout.versions(Path(sys.executable), shutil.which("redis-server"))
    except Exception as exc:  # noqa: BLE001
        out["versions"] = {"error": str(exc)}
    rows: list[dict[str, Any]] = []
    if error is None:
        res["machine"] = machine
        rows = verdict_rows(res, args, system)
        print_report(res, rows, args)
    else:
        rows = [{"scenario": f"scale {args.subscribers:,}", "system": system, "figure": "not measured",
                 "median": error[:80], "median_value": None, "spread": "", "ratio": "", "target": "",
                 "result": "MISS"}]
        print(f"\nscale: not measured: {error}")
    out.update({"rows": rows, "result": res})
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale-{started}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    log(f"wrote {path}")
    return 1 if any(r["result"] == "MISS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
