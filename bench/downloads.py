"""Download and export throughput of rover_stream, next to nginx and plain Flask, on this machine.

Method
------
One temporary work dir (``tempfile.mkdtemp()``) holds an uploads folder with one file of ``--size-mib`` MiB
(a 1 MiB ``os.urandom`` block repeated, fsync'd so that its write-back does not land in the timed runs).
Three servers are started side by side, each on its own free loopback port, and all serve that same folder:

* ``rover_stream`` -- ``wsgi:app`` under gunicorn with the project's ``gunicorn.conf.py`` (one gevent
  worker); ``GET /download/<name>`` is rover_stream's ``send_from_directory`` (``os.sendfile`` fast path).
* ``nginx`` -- a minimal config written into the work dir: one worker, ``sendfile on; tcp_nopush on;``,
  ``location /download/ { alias UPLOADS/; }``. The reference for what the kernel can do.
* ``flask send_file`` -- ``bench/peers/flask_sendfile.py``, plain ``flask.send_from_directory`` under the
  same gunicorn config file. The reference for what a Flask app gets without rover_stream.

Downloads. After one untimed warm-up request per server (the file is in the page cache for all three), the
file is fetched ``--repeat`` times from each server with ``curl -s -o /dev/null`` (``--max-time 120``),
in rounds so that machine noise hits every server alike: each round takes every server once, in an order
shuffled anew (seeded, and recorded in the JSON), so that no server always follows the same one. curl's
``size_download`` must equal the file size and
``time_total`` gives MB/s (1 MB = 10^6 bytes). Reported: min/median/max per server and the ratio of medians
rover_stream/nginx and rover_stream/flask (the targets' figure), and next to it the same ratio taken round
by round (min/median/max over the rounds: two downloads a second apart share the machine's state, so the
spread of this ratio says how far one run's ratio can be trusted). On loopback the client's copy of the
bytes, not the server, sets the pace, and on a shared 2-core machine the spread of single downloads is
wide (2x between runs is common), so read the ratio with its spread, and the CPU columns with it: the
server's CPU per request and its run-queue wait are what the server costs and what the machine took away.
Over loopback the kernel's TCP work (transmitting, and delivering into the client's socket) is done by
whichever process makes the call that triggers it: the server's sendfile, or the client's read, whose
acknowledgement releases data left queued in the server's socket. So a server's CPU and curl's CPU trade
off against each other from one download to the next, and their sum is the download's total cost.

Exports. The baseline is the same ``--rows`` rows serialised in this process into memory: ``csv.writer``
over ``io.StringIO`` then ``.encode()`` for ``/csv`` (header ``id,name,value``, rows ``(i, f"item-{i}",
i*10)``), and for ``/json-stream`` the records ``{"id": i, "timestamp": time.time(), "value": i * 3.14159}``
through ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)``, joined with newlines into one string
and encoded. Each repeat times the baseline and then ``curl -s -o /dev/null`` of the streamed endpoint,
again interleaved. Reported: rows/s and the ratio of medians streamed_time / in_memory_time (target
``--export-target``, 1.15 by default). The CSV body is also checked once, outside the timed runs, with
``http.client``: byte-identical to the baseline and parsing back to exactly ``--rows`` rows plus the header;
the NDJSON body is checked to hold ``--rows`` JSON records with consecutive ids.

CPU. Next to each figure: the client's CPU (``getrusage(RUSAGE_CHILDREN)`` deltas around each curl) and the
server's: the master's children (the gunicorn or nginx workers, ``/proc/<master>/task/<master>/children``)
read before and after each request -- their CPU time from ``/proc/<pid>/task/*/schedstat`` (nanoseconds;
utime+stime of ``/proc/<pid>/stat`` where schedstats are missing) and their run-queue wait, the time they
were runnable but had no CPU. A wait that is a noticeable share of the wall time means other processes
competed for the CPUs and the wall-clock figures are inflated; the run then prints a note, and the ratio of
CPU times (server CPU / in-memory CPU, shown for information) is the figure that contention does not move.

Everything talks only to 127.0.0.1, every request is bounded in time, and the servers are always stopped
(SIGTERM, then SIGKILL of their process group after a few seconds) and the work dir removed. The table is
printed at the end and the figures are written to ``bench/results/downloads-<timestamp>.json``.

``--compare-tree DIR`` adds a fourth system, rover_stream as the checkout in DIR has it (its own
``gunicorn.conf.py`` and ``wsgi.py``, its package first on the path), to the same download rounds: a change and
its baseline measured side by side, under the same machine noise.

Usage: ``python bench/downloads.py [--size-mib 512] [--rows 1000000] [--repeat 3] [--compare-tree DIR]``
"""

from __future__ import annotations

import argparse
import csv
import http.client
import importlib.metadata
import io
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
RESULTS = HERE / "results"

LOOPBACK = "127.0.0.1"
CURL = shutil.which("curl") or "/usr/bin/curl"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FILENAME = "blob.bin"
MIB = 1024 * 1024

CURL_MAX_TIME = 120  # seconds, per request
START_TIMEOUT = 30.0  # seconds for a server to answer after it was started
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYSTEM_ROVER = "rover_stream"
SYSTEM_NGINX = "nginx"
SYSTEM_FLASK = "flask send_file"

ORDER_SEED = 20261203  # the download rounds' shuffled orders: the same in every run

LISTENING = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- servers -------------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, in seconds (None once it has gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is the state (field 3)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of one task, from /proc/.../schedstat
    (nanosecond counters; the wait says how much other processes on the machine held the task back)."""
    try:
        fields = Path(path).read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def runqueue_wait_seconds(path: str) -> float:
    stat = schedstat(path)
    return stat[1] if stat else 0.0


def process_sched(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, run-queue wait seconds) of a process, summed over its threads. The CPU time is the
    scheduler's nanosecond count where the kernel has schedstats, else utime+stime of /proc/<pid>/stat (in
    clock ticks, usually 10 ms)."""
    run = wait = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        stat = schedstat(f"/proc/{pid}/task/{tid}/schedstat")
        if stat is None:
            break
        run += stat[0]
        wait += stat[1]
    else:
        if run > 0:
            return run, wait
    seconds = proc_cpu_seconds(pid)
    return None if seconds is None else (seconds, 0.0)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def cpu(self) -> dict[int, tuple[float, float]]:
        """(CPU seconds, run-queue wait seconds) so far of each worker (the master's children)."""
        result = {}
        for pid in self.worker_pids():
            sched = process_sched(pid)
            if sched is not None:
                result[pid] = sched
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; its log ends with:\n{self.log_tail()}")

    def stop(self) -> float:
        """SIGTERM, then SIGKILL of its process group after STOP_GRACE; returns how long it took."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {STOP_GRACE:g} s of SIGTERM; sending SIGKILL")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the master and its workers
                except ProcessLookupError:
                    pass
                self.proc.wait(STOP_GRACE)
        return time.monotonic() - start


def cpu_delta(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """Summed over the workers: (CPU seconds, run-queue wait seconds) between two snapshots."""
    cpu = sum(now[0] - before.get(pid, (0.0, 0.0))[0] for pid, now in after.items())
    wait = sum(now[1] - before.get(pid, (0.0, 0.0))[1] for pid, now in after.items())
    return cpu, wait


def spawn(name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> Server:
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=cwd)
    return Server(name=name, proc=proc, log_path=log_path)


def wait_for_port(server: Server, deadline: float) -> None:
    """Parse gunicorn's "Listening at: http://127.0.0.1:NNNNN" from its log."""
    while time.monotonic() < deadline:
        server.check_alive()
        match = LISTENING.search(server.log_path.read_bytes())
        if match:
            server.port = int(match.group(1))
            return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not log its port within {START_TIMEOUT:g} s:\n{server.log_tail()}")


def wait_ready(server: Server, path: str, deadline: float) -> None:
    """Until the server answers ``GET path`` with any HTTP response below 500."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        server.check_alive()
        conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status < 500:
                return
            last = RuntimeError(f"HTTP {response.status}")
        except OSError as exc:
            last = exc
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer within {START_TIMEOUT:g} s ({last}):\n{server.log_tail()}")


def base_env() -> dict[str, str]:
    """The caller's environment without ROVER_* (so that the defaults apply) and without proxies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_") and "proxy" not in k.lower()}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gunicorn_extra_flags() -> list[str]:
    """gunicorn >= 27 opens a control socket at a fixed path (~/.gunicorn/gunicorn.ctl): two servers side by
    side, or anyone else's gunicorn, would collide on it."""
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, timeout=30)
    return ["--no-control-socket"] if "--no-control-socket" in out.stdout else []


def start_gunicorn(name: str, chdir: Path, app: str, env_extra: dict[str, str], work: Path,
                   tree: Path | None = None) -> Server:
    """gunicorn with the checkout's gunicorn.conf.py; with ``tree``, another checkout's rover_stream, its
    gunicorn.conf.py and its wsgi.py (the master imports rover_stream from its working directory, before
    --chdir, so the tree is both the working directory and first on PYTHONPATH)."""
    env = base_env()
    # info, not warning: gunicorn logs "Listening at" at info level, and the port is read from it.
    env.update({"ROVER_LOG_LEVEL": "info", "ROVER_WORKERS": "1", **env_extra})
    conf = GUNICORN_CONF
    if tree is not None:
        conf = tree / "gunicorn.conf.py"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--chdir", str(chdir),
           "-b", f"{LOOPBACK}:0", *gunicorn_extra_flags(), app]
    slug = re.sub(r"\W+", "-", name)
    return spawn(name, cmd, env, work / f"{slug}.log", cwd=tree)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
{user}
events {{
    worker_connections 64;
}}

http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp/client_body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;

    server {{
        listen {host}:{port};
        location /download/ {{
            alias {uploads}/;
        }}
    }}
}}
"""


def start_nginx(work: Path, uploads: Path) -> Server:
    (work / "nginx-tmp").mkdir(exist_ok=True)
    # As root, nginx's workers would run as "nobody", which cannot enter the 0700 temp dir: keep our user.
    user = "user root;" if os.geteuid() == 0 else ""
    last_error: Exception | None = None
    for _ in range(3):  # the free port may be taken between our probe and nginx's bind: try again
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, uploads=uploads, host=LOOPBACK, port=port, user=user))
        cmd = [NGINX, "-e", str(work / "nginx-error.log"), "-p", str(work), "-c", str(conf)]
        server = spawn(SYSTEM_NGINX, cmd, base_env(), work / "nginx.log")
        server.port = port
        try:
            wait_ready(server, "/", time.monotonic() + START_TIMEOUT)
            return server
        except RuntimeError as exc:
            last_error = exc
            server.stop()
            err = work / "nginx-error.log"
            if err.exists() and "Address already in use" not in err.read_text(errors="replace"):
                break
    raise RuntimeError(f"nginx did not start: {last_error}")


# -- measuring -----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    size: int
    client_cpu: float
    server_cpu: float
    server_wait: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def curl(server: Server, path: str, expect_size: int | None = None) -> Sample:
    """One GET with curl to /dev/null; checks status 200 (and the size when given)."""
    url = server.url + path
    cmd = [CURL, "-s", "-o", os.devnull, "--noproxy", "*", "--max-time", str(CURL_MAX_TIME),
           "-w", "%{http_code} %{size_download} %{time_total}", url]
    server_before = server.cpu()
    client_before = children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CURL_MAX_TIME + 30)
    client_cpu = children_cpu() - client_before
    server_cpu, server_wait = cpu_delta(server_before, server.cpu())
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 3:
        raise RuntimeError(f"curl {url} failed (exit {done.returncode}, {done.stdout!r} {done.stderr!r}); "
                           f"{server.name}'s log ends with:\n{server.log_tail()}")
    status, size, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    if status != 200:
        raise RuntimeError(f"curl {url}: HTTP {status}")
    if expect_size is not None and size != expect_size:
        raise RuntimeError(f"curl {url}: received {size} bytes, expected {expect_size}")
    return Sample(seconds=seconds, size=size, client_cpu=client_cpu, server_cpu=server_cpu, server_wait=server_wait)


SELF_SCHEDSTAT = "/proc/thread-self/schedstat"


@dataclass
class InProcess:
    seconds: float
    cpu: float
    wait: float
    size: int


def in_process(function: Callable[[int], bytes], rows: int) -> InProcess:
    """Wall time, CPU time and run-queue wait of this process serialising ``rows`` rows into memory."""
    wait = runqueue_wait_seconds(SELF_SCHEDSTAT)
    cpu = time.process_time()
    start = time.perf_counter()
    data = function(rows)
    seconds = time.perf_counter() - start
    return InProcess(seconds, time.process_time() - cpu, runqueue_wait_seconds(SELF_SCHEDSTAT) - wait, len(data))


def csv_in_memory(rows: int) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("id", "name", "value"))
    writer.writerows((i, f"item-{i}", i * 10) for i in range(rows))
    return buffer.getvalue().encode("utf-8")


def ndjson_in_memory(rows: int) -> bytes:
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    text = "\n".join(encode({"id": i, "timestamp": time.time(), "value": i * 3.14159}) for i in range(rows))
    return (text + "\n").encode("utf-8") if rows else b""


def http_get(server: Server, path: str) -> bytes:
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=CURL_MAX_TIME)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def verify_csv(server: Server, rows: int, expected: bytes) -> dict[str, Any]:
    body = http_get(server, f"/csv?rows={rows}")
    parsed = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    problems = []
    if not parsed or parsed[0] != ["id", "name", "value"]:
        problems.append(f"header is {parsed[:1]!r}")
    if len(parsed) != rows + 1:
        problems.append(f"{len(parsed) - 1} data rows instead of {rows}")
    if body != expected:
        problems.append(f"body differs from the in-memory CSV ({len(body)} vs {len(expected)} bytes)")
    if problems:
        raise RuntimeError("CSV check failed: " + "; ".join(problems))
    return {"bytes": len(body), "data_rows": len(parsed) - 1, "identical_to_in_memory": True}


def verify_ndjson(server: Server, rows: int) -> dict[str, Any]:
    body = http_get(server, f"/json-stream?rows={rows}")
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise RuntimeError("NDJSON check failed: the body does not end with a newline")
    ids = [json.loads(line)["id"] for line in lines]
    if ids != list(range(rows)):
        raise RuntimeError(f"NDJSON check failed: {len(ids)} records, ids not 0..{rows - 1}")
    return {"bytes": len(body), "records": len(ids)}


# -- statistics and report -----------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    scenario: str
    system: str
    median: str
    spread: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""
    cpu: str = ""
    wait: str = ""
    client_cpu: str = ""


HEADERS = Row("scenario", "system", "median", "min / max", "ratio", "target", "result", "CPU", "runq wait",
              "curl CPU")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        names = list(Row.__dataclass_fields__)
        cells = [[getattr(r, n) for n in names] for r in [HEADERS, *self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
        lines = []
        for index, row in enumerate(cells):
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        return "\n".join(lines)


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_s(value: float) -> str:
    return f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_pressure() -> str:
    """The kernel's CPU pressure line (how often runnable tasks waited for a CPU), if available."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "unavailable"


def versions() -> dict[str, str]:
    result = {"python": platform.python_version(), "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for package in ("rover-stream", "flask", "gunicorn", "gevent", "werkzeug"):
        try:
            result[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            result[package] = "not installed"
    for name, cmd in (("nginx", [NGINX, "-v"]), ("curl", [CURL, "--version"])):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            result[name] = (done.stderr + done.stdout).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            result[name] = "unknown"
    return result


def contention_note(what: str, waited: float, elapsed: float) -> str | None:
    """A note when a measured task spent a noticeable share of its wall time waiting for a CPU."""
    if elapsed > 0 and waited / elapsed > 0.05:
        return (f"{what} waited {waited:.2f} s of {elapsed:.2f} s for a CPU (median): other processes competed for "
                "the CPUs, so its wall-clock figures are inflated")
    return None


# -- the benchmark -------------------------------------------------------------------------------------------


def bench_downloads(servers: list[Server], size: int, repeat: int, report: Report, args: argparse.Namespace) -> None:
    path = f"/download/{FILENAME}"
    for server in servers:  # warm-up, untimed: first request, lazy imports, page cache
        curl(server, path, size)
    samples: dict[str, list[Sample]] = {s.name: [] for s in servers}
    shuffle = random.Random(ORDER_SEED).shuffle
    orders: list[list[str]] = []
    for run in range(repeat):
        order = list(servers)
        shuffle(order)  # a fixed order would give every server the same predecessor in every round
        orders.append([server.name for server in order])
        for server in order:
            sample = curl(server, path, size)
            samples[server.name].append(sample)
            log(f"  download {run + 1}/{repeat} {server.name:16} {size / sample.seconds / 1e6:9.1f} MB/s "
                f"(server CPU {sample.server_cpu:.2f} s, run-queue wait {sample.server_wait:.2f} s, "
                f"curl CPU {sample.client_cpu:.2f} s)")

    scenario = f"download {size // MIB} MiB"
    results: dict[str, Any] = {}
    for name, taken in samples.items():
        stats = summary([size / s.seconds / 1e6 for s in taken])
        result = results[name] = {
            "mb_per_s": stats,
            "mb_per_s_runs": [size / s.seconds / 1e6 for s in taken],
            "seconds": [s.seconds for s in taken],
            "server_cpu_s": [s.server_cpu for s in taken],
            "server_runqueue_wait_s": [s.server_wait for s in taken],
            "client_cpu_s": [s.client_cpu for s in taken],
        }
        report.rows.append(Row(scenario, name, fmt_rate(stats["median"], "MB/s"),
                               f"{stats['min']:,.0f} / {stats['max']:,.0f}",
                               cpu=fmt_s(median(result["server_cpu_s"])),
                               wait=fmt_s(median(result["server_runqueue_wait_s"])),
                               client_cpu=fmt_s(median(result["client_cpu_s"]))))
    rover = results[SYSTEM_ROVER]["mb_per_s"]
    ratios = {}
    for peer, target in ((SYSTEM_NGINX, args.nginx_target), (SYSTEM_FLASK, args.flask_target)):
        other = results[peer]["mb_per_s"]
        ratio = rover["median"] / other["median"]
        ok = ratio >= target
        # Round by round: rover_stream's download against the peer's of the same round.
        paired = [mine / theirs for mine, theirs in zip(results[SYSTEM_ROVER]["mb_per_s_runs"],
                                                        results[peer]["mb_per_s_runs"], strict=True)]
        per_round = summary(paired)
        ratios[f"rover_stream/{peer}"] = {
            "ratio_of_medians": ratio,
            "ratio_of_best": rover["max"] / other["max"],
            "ratio_per_round": paired,
            "ratio_per_round_summary": per_round,
            "target_min": target,
            "pass": ok,
        }
        report.rows.append(Row(scenario, f"rover_stream / {peer}", "", "", f"{ratio:.3f}", f">= {target:.2f}",
                               verdict(ok)))
        report.rows.append(Row(scenario, "  the same, round by round", "",
                               f"{per_round['min']:.3f} / {per_round['max']:.3f}", f"{per_round['median']:.3f}",
                               "(info)"))
    for name in results:
        if name.startswith(SYSTEM_ROVER + " @"):  # --compare-tree: the same ratios, for information
            mine = results[name]["mb_per_s_runs"]
            by_round = summary([a / b for a, b in zip(mine, results[SYSTEM_NGINX]["mb_per_s_runs"], strict=True)])
            ratio = results[name]["mb_per_s"]["median"] / results[SYSTEM_NGINX]["mb_per_s"]["median"]
            ratios[f"{name}/{SYSTEM_NGINX}"] = {"ratio_of_medians": ratio, "ratio_per_round_summary": by_round}
            report.rows.append(Row(scenario, f"{name} / {SYSTEM_NGINX}", "", "", f"{ratio:.3f}", "(info)"))
            report.rows.append(Row(scenario, "  the same, round by round", "",
                                   f"{by_round['min']:.3f} / {by_round['max']:.3f}", f"{by_round['median']:.3f}",
                                   "(info)"))
    for name, result in results.items():
        waited = median(result["server_runqueue_wait_s"])
        note = contention_note(f"download: the {name} server", waited, median(result["seconds"]))
        if note:
            report.notes.append(note)
    report.data["downloads"] = {"size_bytes": size, "repeat": repeat, "systems": results, "ratios": ratios,
                                "round_orders": orders}


def bench_exports(rover: Server, rows: int, repeat: int, report: Report, args: argparse.Namespace) -> None:
    kinds: list[tuple[str, str, Callable[[int], bytes]]] = [
        ("csv", f"/csv?rows={rows}", csv_in_memory),
        ("ndjson", f"/json-stream?rows={rows}", ndjson_in_memory),
    ]
    expected_csv = csv_in_memory(rows)  # also a warm-up of the baseline
    checks = {"csv": verify_csv(rover, rows, expected_csv), "ndjson": verify_ndjson(rover, rows)}
    log(f"  checks: {checks}")
    csv_size = len(expected_csv)
    del expected_csv
    for _, path, _ in kinds:  # warm-up of the streamed side, untimed
        curl(rover, path)

    baseline: dict[str, list[InProcess]] = {k: [] for k, _, _ in kinds}
    streamed: dict[str, list[Sample]] = {k: [] for k, _, _ in kinds}
    for run in range(repeat):
        for kind, path, in_memory in kinds:
            measured = in_process(in_memory, rows)
            baseline[kind].append(measured)
            sample = curl(rover, path, csv_size if kind == "csv" else None)
            streamed[kind].append(sample)
            log(f"  export {run + 1}/{repeat} {kind:6} in memory {measured.seconds:.3f} s (CPU {measured.cpu:.2f} s), "
                f"streamed {sample.seconds:.3f} s (server CPU {sample.server_cpu:.2f} s, run-queue wait "
                f"{sample.server_wait:.2f} s, curl CPU {sample.client_cpu:.2f} s)")

    results: dict[str, Any] = {}
    for kind, path, _ in kinds:
        scenario = f"{kind} {rows:,} rows"
        base = summary([b.seconds for b in baseline[kind]])
        base_cpu = median([b.cpu for b in baseline[kind]])
        base_wait = median([b.wait for b in baseline[kind]])
        stream = summary([s.seconds for s in streamed[kind]])
        server_cpu = median([s.server_cpu for s in streamed[kind]])
        server_wait = median([s.server_wait for s in streamed[kind]])
        client_cpu = median([s.client_cpu for s in streamed[kind]])
        ratio = stream["median"] / base["median"]
        cpu_ratio = server_cpu / base_cpu if base_cpu else float("nan")
        ok = ratio <= args.export_target
        results[kind] = {
            "path": path,
            "in_memory_s": base,
            "in_memory_cpu_s": [b.cpu for b in baseline[kind]],
            "in_memory_runqueue_wait_s": [b.wait for b in baseline[kind]],
            "in_memory_rows_per_s": rows / base["median"],
            "in_memory_bytes": baseline[kind][-1].size,
            "streamed_s": stream,
            "streamed_rows_per_s": rows / stream["median"],
            "streamed_bytes": [s.size for s in streamed[kind]],
            "server_cpu_s": [s.server_cpu for s in streamed[kind]],
            "server_runqueue_wait_s": [s.server_wait for s in streamed[kind]],
            "client_cpu_s": [s.client_cpu for s in streamed[kind]],
            "ratio_streamed_over_in_memory": ratio,
            "ratio_of_best": stream["min"] / base["min"],
            "ratio_server_cpu_over_in_memory_cpu": cpu_ratio,
            "target_max": args.export_target,
            "pass": ok,
            "check": checks[kind],
        }
        report.rows.append(Row(scenario, "in memory (baseline)", fmt_rate(rows / base["median"], "rows/s"),
                               f"{rows / base['max']:,.0f} / {rows / base['min']:,.0f}",
                               cpu=fmt_s(base_cpu), wait=fmt_s(base_wait)))
        report.rows.append(Row(scenario, "rover_stream streamed", fmt_rate(rows / stream["median"], "rows/s"),
                               f"{rows / stream['max']:,.0f} / {rows / stream['min']:,.0f}",
                               f"{ratio:.3f}", f"<= {args.export_target:.2f}", verdict(ok),
                               fmt_s(server_cpu), fmt_s(server_wait), fmt_s(client_cpu)))
        report.rows.append(Row(scenario, "  server CPU / in-memory CPU", "", "", f"{cpu_ratio:.3f}", "(info)"))
        for what, waited, elapsed in (("the rover_stream worker", server_wait, stream["median"]),
                                      ("the in-memory baseline", base_wait, base["median"])):
            note = contention_note(f"{kind}: {what}", waited, elapsed)
            if note:
                report.notes.append(note)
    report.data["exports"] = {"rows": rows, "repeat": repeat, "results": results}


def write_upload(path: Path, size_mib: int) -> int:
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        for _ in range(size_mib):
            out.write(block)
        # On disk before anything is timed: otherwise the kernel writes the file back about 30 s later
        # (vm.dirty_expire_centisecs), in the middle of the timed downloads or exports.
        out.flush()
        os.fsync(out.fileno())
    return size_mib * MIB


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=512, help="size of the downloaded file (default 512)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the CSV/NDJSON exports")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per system and scenario")
    parser.add_argument("--export-target", type=float, default=1.15,
                        help="largest streamed_time / in_memory_time that passes (default 1.15)")
    parser.add_argument("--nginx-target", type=float, default=0.80,
                        help="smallest rover_stream/nginx download throughput ratio that passes (default 0.80)")
    parser.add_argument("--flask-target", type=float, default=1.00,
                        help="smallest rover_stream/flask download throughput ratio that passes (default 1.00)")
    parser.add_argument("--compare-tree", default=None, metavar="DIR",
                        help="also download from rover_stream as another checkout has it (e.g. `git worktree add "
                             "DIR HEAD~1`), in the same rounds: before/after figures from one run")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rows < 1 or args.repeat < 1:
        parser.error("--size-mib, --rows and --repeat must be at least 1")
    if args.rows > 10_000_000:
        parser.error("--rows is at most 10000000 (the server's MAX_ROWS)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM to the bench should still stop the servers and remove the work dir (finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    report = Report()
    started = datetime.now(timezone.utc)
    report.data.update({"started": started.isoformat(), "args": vars(args), "versions": versions(),
                        "load_before": {"loadavg": os.getloadavg(), "cpu_pressure": cpu_pressure()}})
    work = Path(tempfile.mkdtemp(prefix="rover-bench-"))
    servers: list[Server] = []
    try:
        uploads = work / "uploads"
        uploads.mkdir()
        log(f"writing {args.size_mib} MiB to {uploads / FILENAME}")
        size = write_upload(uploads / FILENAME, args.size_mib)

        log("starting rover_stream, nginx and flask send_file")
        deadline = time.monotonic() + START_TIMEOUT
        rover = start_gunicorn(SYSTEM_ROVER, ROOT, "wsgi:app",
                               {"ROVER_UPLOADS_DIR": str(uploads), "ROVER_DATA_DIR": str(work / "var")}, work)
        servers.append(rover)
        flask_peer = start_gunicorn(SYSTEM_FLASK, PEERS, "flask_sendfile:app", {"BENCH_UPLOADS_DIR": str(uploads)},
                                    work)
        servers.append(flask_peer)
        compared: list[Server] = []
        if args.compare_tree is not None:
            tree = Path(args.compare_tree).resolve()
            compared.append(start_gunicorn(f"{SYSTEM_ROVER} @{tree.name}", tree, "wsgi:app",
                                           {"ROVER_UPLOADS_DIR": str(uploads), "ROVER_DATA_DIR": str(work / "var-2")},
                                           work, tree=tree))
            servers.extend(compared)
        for server in (rover, flask_peer, *compared):
            wait_for_port(server, deadline)
            wait_ready(server, "/health", deadline)
        nginx = start_nginx(work, uploads)
        servers.append(nginx)
        for server in servers:
            log(f"  {server.name:16} {server.url}  master {server.proc.pid} workers {server.worker_pids()}")

        log(f"downloads: {size // MIB} MiB x {args.repeat}, in rounds of every server in a shuffled order")
        bench_downloads([rover, nginx, flask_peer, *compared], size, args.repeat, report, args)
        log(f"exports: {args.rows:,} rows x {args.repeat}")
        bench_exports(rover, args.rows, args.repeat, report, args)
        for server in servers:
            server.check_alive()
    finally:
        for server in servers:
            report.data.setdefault("stop_seconds", {})[server.name] = server.stop()
        shutil.rmtree(work, ignore_errors=True)

    report.data["finished"] = datetime.now(timezone.utc).isoformat()
    report.data["load_after"] = {"loadavg": os.getloadavg(), "cpu_pressure": cpu_pressure()}
    report.data["notes"] = report.notes
    RESULTS.mkdir(exist_ok=True)
    gitignore = RESULTS / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n!.gitignore\n")
    out = RESULTS / f"downloads-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report.data, indent=2) + "\n")

    print()
    print(report.table())
    print()
    print("CPU: per request, of the server's worker(s) (/proc schedstat, or utime+stime), or of this process for the")
    print("in-memory baseline (time.process_time);")
    print("runq wait: time that task was runnable but waiting for a CPU; curl CPU: the client's. All medians.")
    print("MB = 10^6 bytes. Ratios are of medians; the CPU-time ratio is informational and immune to CPU contention.")
    loads = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {loads} on {os.cpu_count()} CPUs")
    for note in report.notes:
        print(f"note: {note}")
    print(f"figures written to {out}")
    return 0 if all(row.result != "MISS" for row in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
