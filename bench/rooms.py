"""WebSocket rooms of rover_stream next to three peers, on this machine, in one run.

Systems (each started fresh per measurement on a free loopback port, stopped in ``finally``):

* ``rover_stream`` -- ``wsgi:app`` under gunicorn with the project's ``gunicorn.conf.py`` (one gevent worker),
  ``ROVER_WORKER_CONNECTIONS=12000``, ``ROVER_WS_MESSAGE_RATE=1000000``; ``/ws/comms/<room>?user=NAME``.
* ``flask-sock handwritten`` -- ``bench/peers/ws_handwritten.py``: dict room -> set of ws, ``ws.send()`` to each.
* ``flask-socketio`` -- ``bench/peers/ws_socketio.py``: ``join_room``/``emit(to=room)``, gunicorn gevent worker.
* ``fastapi websockets`` -- ``bench/peers/ws_fastapi.py``: dict of sets, ``await ws.send_text()``; uvicorn.

Scenarios:

* ``burst`` -- ``--burst-members`` (100) in one room; member 0 sends as fast as the slowest member reads
  (at most ``--window`` frames ahead) for ``--duration`` seconds. Deliveries/s, server CPU per delivery.
* ``steady`` -- ``--steady-members`` (1,000) over 10 rooms; the first member of each room sends, together
  ``--steady-rate`` (100) messages a second for ``--duration``: everything delivered? p99 latency from each
  message's scheduled send time.
* ``idle`` -- ``--idle-members`` (2,000) over 10 rooms, reading: server RSS per connection.
* ``frozen`` -- ``--frozen-members`` (50) in one room, one never reads (SO_RCVBUF 4 KiB); ``--frozen-count``
  (5,000) frames of 1 KiB: how many of the others got every frame, p99 latency, RSS growth, corrupted frames.

The load generator is ``bench/loadgen_ws.py`` (one process, epoll). Processes, CPU and RSS readings come from
``bench/fanout.py``. Output: one table on stdout, JSON in ``bench/results/rooms-<timestamp>.json``.

Usage: ``python bench/rooms.py [all|burst|steady|idle|frozen] [--systems ...] [--duration S] [--idle-members N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (  # noqa: E402
    GUNICORN_CONF,
    LOOPBACK,
    PEERS,
    PEERS_CONF,
    RESULTS,
    ROOT,
    START_TIMEOUT,
    UVICORN_LISTENING,
    VENV,
    JsonLinesChild,
    System,
    base_env,
    cpu_delta,
    log,
    raise_nofile,
    spawn,
    start_gunicorn,
    wait_for_log,
)

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen_ws.py"
WS_PACKAGES = ("flask", "gunicorn", "gevent", "fastapi", "uvicorn", "flask-sock", "flask-socketio",
               "simple-websocket", "websockets", "packaging")
WS_IMPORTS = ("import flask, gunicorn, gevent, fastapi, uvicorn, flask_sock, flask_socketio, simple_websocket, "
              "websockets")

ROVER = "rover_stream"
HANDWRITTEN = "flask-sock handwritten"
SOCKETIO = "flask-socketio"
FASTAPI = "fastapi websockets"
SYSTEMS = (ROVER, HANDWRITTEN, SOCKETIO, FASTAPI)
SCENARIOS = ("burst", "steady", "idle", "frozen")
SETTLE = 1.0

# targets of the issue
BURST_CPU_RATIO = 0.5
BURST_RATE_RATIO = 1.5
IDLE_KB = 16.0  # KB = 1024 bytes
STEADY_P99_MS = 20.0
FROZEN_RSS_MB = 2.0


def ensure_venv(skip_install: bool) -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        if skip_install:
            raise SystemExit(f"{VENV} does not exist")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    if skip_install:
        return python
    if subprocess.run([str(python), "-c", WS_IMPORTS], capture_output=True, timeout=120).returncode != 0:
        log(f"installing into {VENV}: {' '.join(WS_PACKAGES)} ...")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *WS_PACKAGES],
                       check=True, timeout=1200)
    return python


def start_system(name: str, python: Path, work: Path) -> tuple[System, bool]:
    """The running system and whether it speaks Socket.IO."""
    if name == ROVER:
        env = base_env()
        env.update({"ROVER_LOG_LEVEL": "info", "ROVER_WORKERS": "1", "ROVER_WORKER_CONNECTIONS": "12000",
                    "ROVER_WS_MESSAGE_RATE": "1000000", "ROVER_PUBLISH_RATE": "0"})
        proc, port = start_gunicorn(ROVER, sys.executable, GUNICORN_CONF, ROOT, "wsgi:app", env, work)
        return System(ROVER, [proc], port, "/ws/comms", "ws"), False
    env = base_env()
    env["BENCH_WORKER_CONNECTIONS"] = "12000"
    if name in (HANDWRITTEN, SOCKETIO):
        app = "ws_handwritten:app" if name == HANDWRITTEN else "ws_socketio:app"
        proc, port = start_gunicorn(name, python, PEERS_CONF, PEERS, app, env, work)
        return System(name, [proc], port, "/ws/comms", "ws"), name == SOCKETIO
    cmd = [str(python), "-m", "uvicorn", "ws_fastapi:app", "--app-dir", str(PEERS), "--host", LOOPBACK, "--port",
           "0", "--log-level", "info", "--backlog", "2048"]
    proc = spawn(FASTAPI, cmd, env, work / "ws-fastapi.log")
    try:
        port = wait_for_log(proc, UVICORN_LISTENING, time.monotonic() + START_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    return System(FASTAPI, [proc], port, "/ws/comms", "ws"), False


class Loadgen(JsonLinesChild):
    """``loadgen_ws.py`` as a child process: text commands in, JSON lines out."""

    def __init__(self, port: int, socketio: bool, extra: list[str], work: Path) -> None:
        cmd = [sys.executable, str(LOADGEN), "--port", str(port), *extra]
        if socketio:
            cmd.append("--socketio")
        super().__init__(cmd, work / "loadgen-ws.log")

    def send(self, command: str) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(command.encode() + b"\n")
            self.popen.stdin.flush()
        except OSError:
            pass

    def expect(self, event: str, timeout: float, watch: Callable[[], None]) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.lines.get(timeout=0.5)
            except queue.Empty:
                watch()
                continue
            if message is None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the load generator ended before {event!r}:\n{tail}")
            if message.get("event") == event:
                return message
        raise RuntimeError(f"no {event!r} from the load generator within {timeout:g} s")

    def stop(self) -> None:
        self.send("stop")
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def loadgen_args(scenario: str, args: argparse.Namespace) -> list[str]:
    if scenario == "burst":
        return ["--mode", "burst", "--members", str(args.burst_members), "--rooms", "1", "--duration",
                str(args.duration), "--size", "32", "--window", str(args.window)]
    if scenario == "steady":
        return ["--mode", "steady", "--members", str(args.steady_members), "--rooms", "10", "--rate",
                str(args.steady_rate), "--duration", str(args.duration), "--size", "64", "--latency",
                "--drain-timeout", str(args.drain_timeout)]
    if scenario == "idle":
        return ["--mode", "idle", "--members", str(args.idle_members), "--rooms", "10", "--duration", "2"]
    return ["--mode", "frozen", "--members", str(args.frozen_members), "--rooms", "1", "--frozen", "1", "--count",
            str(args.frozen_count), "--size", "1024", "--window", str(args.window), "--latency", "--duration",
            str(max(args.duration, 10.0)), "--drain-timeout", str(args.drain_timeout)]


def measure(name: str, scenario: str, args: argparse.Namespace, python: Path, work: Path) -> dict[str, Any]:
    system, socketio = start_system(name, python, work)
    load = None
    try:
        time.sleep(0.3)
        rss_empty = system.rss()
        load = Loadgen(system.port, socketio, loadgen_args(scenario, args), work)
        ready = load.expect("ready", 120, system.check_alive)
        if ready["ready"] < ready["members"]:
            raise RuntimeError(f"only {ready['ready']}/{ready['members']} members joined: {ready['close_reasons']}")
        time.sleep(SETTLE)
        rss_ready = system.rss()
        cpu0 = system.cpu()
        load.send("go")
        done = load.expect("done", args.duration + args.drain_timeout + 60, system.check_alive)
        cpu1 = system.cpu()
        rss_done = system.rss()
        server_cpu, _wait = cpu_delta(cpu0, cpu1)
        result: dict[str, Any] = {"system": name, "scenario": scenario, "ready": ready, **done,
                                  "server_cpu_seconds": server_cpu, "rss_empty": rss_empty,
                                  "rss_ready": rss_ready, "rss_done": rss_done}
        wall = max(done["wall_seconds"], 1e-9)
        result["server_cores"] = server_cpu / wall
        result["loadgen_cores"] = done["loadgen_cpu_seconds"] / wall
        result["cpu_us_per_delivery"] = server_cpu / done["received"] * 1e6 if done["received"] else None
        result["kb_per_connection"] = (rss_ready - rss_empty) / ready["members"] / 1024
        result["rss_growth_mb"] = (rss_done - rss_ready) / 1024 / 1024
        return result
    finally:
        if load is not None:
            load.stop()
        system.stop()


FIGURES: dict[str, list[tuple[str, str, bool]]] = {  # key, label, higher is better
    "burst": [("deliveries_per_second", "deliveries/s", True), ("cpu_us_per_delivery", "server CPU us/delivery",
                                                                False)],
    "steady": [("readers_complete", "members with every frame", True), ("p99_ms", "p99 latency ms", False),
               ("cpu_us_per_delivery", "server CPU us/delivery", False)],
    "idle": [("kb_per_connection", "RSS KB/connection", False)],
    "frozen": [("readers_complete", "members with every frame", True), ("p99_ms", "p99 latency ms", False),
               ("rss_growth_mb", "RSS growth MB", False), ("corrupt", "corrupted frames", False)],
}


def figure(run: dict[str, Any], key: str) -> float | None:
    if key == "p99_ms":
        return (run.get("latency_ms") or {}).get("p99")
    value = run.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def target(scenario: str, key: str, value: float, best: float | None, run: dict[str, Any]) -> str:
    if scenario == "burst" and key == "deliveries_per_second" and best:
        return "PASS" if value >= BURST_RATE_RATIO * best else "MISS"
    if scenario == "burst" and key == "cpu_us_per_delivery" and best:
        return "PASS" if value <= BURST_CPU_RATIO * best else "MISS"
    if scenario == "idle":
        return "PASS" if value < IDLE_KB else "MISS"
    if scenario == "steady" and key == "readers_complete":
        return "PASS" if value >= run["readers"] else "MISS"
    if scenario == "steady" and key == "p99_ms":
        return "PASS" if value < STEADY_P99_MS else "MISS"
    if scenario == "frozen" and key == "readers_complete":
        return "PASS" if value >= run["readers"] else "MISS"
    if scenario == "frozen" and key == "rss_growth_mb":
        return "PASS" if value < FROZEN_RSS_MB else "MISS"
    if scenario == "frozen" and key == "corrupt":
        return "PASS" if value == 0 else "MISS"
    return ""


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario, system and figure: the median of the repeats, their spread, the ratio of
    medians to the best peer, and the target's verdict (on the median)."""
    rows = []
    for scenario in SCENARIOS:
        systems: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if r["scenario"] == scenario:
                systems.setdefault(r["system"], []).append(r)
        if not systems:
            continue
        for key, label, higher in FIGURES[scenario]:
            medians: dict[str, float] = {}
            for system, mine in systems.items():
                values = [v for v in (figure(r, key) for r in mine if "error" not in r) if v is not None]
                if values:
                    medians[system] = median(values)
            peers = [(s, v) for s, v in medians.items() if s != ROVER]
            best = (max if higher else min)(peers, key=lambda p: p[1]) if peers else None
            for system, mine in systems.items():
                row = {"scenario": scenario, "system": system, "figure": label, "value": "", "spread": "",
                       "ratio": "", "result": "", "values": [], "median_value": None, "target": ""}
                good = [r for r in mine if "error" not in r]
                if not good:
                    row["value"] = mine[0]["error"][:60]
                    rows.append(row)
                    continue
                values = [v for v in (figure(r, key) for r in good) if v is not None]
                value = medians.get(system)
                row["values"], row["median_value"] = values, value
                row["value"] = "-" if value is None else f"{value:,.2f}"
                if len(values) > 1:
                    row["spread"] = f"{min(values):,.2f}..{max(values):,.2f}"
                if value is not None and best and best[1]:
                    row["ratio"] = f"x{value / best[1]:.2f} ({best[0]})"
                if system == ROVER and value is not None:
                    row["result"] = target(scenario, key, value, best[1] if best else None, good[0])
                rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    cols = ("scenario", "system", "figure", "value", "spread", "ratio", "result")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip())
    print("\nCPU in cores during the measured window (server / load generator), received/expected:")
    for r in runs:
        if "error" not in r:
            print(f"  {r['scenario']:7} {r['system']:24} server {r['server_cores']:.2f}  loadgen "
                  f"{r['loadgen_cores']:.2f}  {r['received']:,}/{r['expected']:,}  closed {r['closed']} "
                  f"out-of-order {r['out_of_order']} frozen member: {r['frozen_closed']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--burst-members", type=int, default=100)
    parser.add_argument("--steady-members", type=int, default=1000)
    parser.add_argument("--steady-rate", type=float, default=100.0, help="messages a second over 10 rooms")
    parser.add_argument("--idle-members", type=int, default=2000)
    parser.add_argument("--frozen-members", type=int, default=50)
    parser.add_argument("--frozen-count", type=int, default=5000)
    parser.add_argument("--window", type=int, default=128, help="frames the sender may be ahead")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (median, min..max)")
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := [s for s in systems if s not in SYSTEMS]:
        raise SystemExit(f"unknown systems {unknown}; choose from {SYSTEMS}")
    raise_nofile()
    python = ensure_venv(args.skip_install) if set(systems) - {ROVER} else Path(sys.executable)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    work = Path(tempfile.mkdtemp(prefix="rooms-"))
    runs: list[dict[str, Any]] = []
    try:
        for repeat, scenario in ((r, s) for s in scenarios for r in range(args.repeat)):
            for name in systems:
                log(f"{scenario}: {name} (run {repeat + 1} of {args.repeat}) ...")
                try:
                    run = measure(name, scenario, args, python, work)
                    log(f"    {run['received']:,}/{run['expected']:,} received, "
                        f"{run['deliveries_per_second']:,.0f}/s, server {run['server_cores']:.2f} cores, "
                        f"loadgen {run['loadgen_cores']:.2f}, RSS/conn {run['kb_per_connection']:.1f} KB")
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log(f"    {name}: {type(exc).__name__}: {exc}")
                    first = (str(exc).strip().splitlines() or [""])[0]
                    run = {"system": name, "scenario": scenario, "error": f"{type(exc).__name__}: {first}"}
                runs.append(run)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = table(runs)
    if rows:
        print_table(rows, runs)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"rooms-{stamp}.json"
    out.write_text(json.dumps({"started": stamp, "argv": sys.argv[1:], "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform()}, "settings": vars(args),
        "targets": {"steady_p99_ms": STEADY_P99_MS, "burst_cpu_ratio": BURST_CPU_RATIO,
                    "burst_rate_ratio": BURST_RATE_RATIO, "idle_kb": IDLE_KB, "frozen_rss_mb": FROZEN_RSS_MB},
        "rows": rows, "runs": runs}, indent=2, default=str))
    log(f"wrote {out}")
    return 1 if any(r["system"] == ROVER and r["result"] == "MISS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
