"""Connection churn: connect / receive one event / disconnect cycles per second, rover_stream next to the
SSE peers of ``bench/fanout.py``, in one run.

Each system is started fresh (one worker, as in fanout.py); a publisher (``loadgen_publisher.py``, rate
mode) sends ``--rate`` (500) events a second on the channel for the whole measurement, and
``loadgen_churn.py`` runs ``--concurrency`` (50) clients that each connect, wait for the first event with
data, and close (with a reset, as a browser tab that goes away), for ``--duration`` (10) seconds.
Figures: cycles/s, p99 of a cycle, failed cycles, server CPU per cycle; ``--repeat`` runs give
median and min..max. Output: a table on stdout, JSON in ``bench/results/churn-<timestamp>.json``.

Usage: ``python bench/churn.py [--systems ...] [--duration S] [--repeat N] [--skip-install]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (  # noqa: E402
    CHANNEL,
    FASTAPI,
    FLASKSSE,
    HANDWRITTEN,
    LOADGEN_PUBLISHER,
    LOOPBACK,
    RESULTS,
    ROVER,
    Env,
    base_env,
    cpu_delta,
    ensure_redis,
    ensure_venv,
    log,
    raise_nofile,
    start_fastapi,
    start_flasksse,
    start_handwritten,
    start_rover,
)

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen_churn.py"
STARTERS = {ROVER: start_rover, HANDWRITTEN: start_handwritten, FASTAPI: start_fastapi, FLASKSSE: start_flasksse}
SYSTEMS = tuple(STARTERS)


def measure(name: str, env: Env, args: argparse.Namespace) -> dict[str, Any]:
    system = STARTERS[name](env)
    publisher = None
    publisher_log = open(env.work / "publisher.log", "ab")  # noqa: SIM115 (closed in finally)
    try:
        time.sleep(0.5)
        publisher = subprocess.Popen(
            [sys.executable, str(LOADGEN_PUBLISHER), "--host", LOOPBACK, "--port", str(system.port), "--channel",
             CHANNEL, "--mode", "rate", "--duration", f"{args.duration + 3:g}", "--rate", f"{args.rate:g}",
             "--connections", "2", "--payload", "64", "--start-at", repr(time.monotonic()), "--timeout", "30",
             "--max-lag", "10"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=publisher_log, env=base_env(), preexec_fn=raise_nofile)
        time.sleep(1.0)
        cpu0 = system.cpu()
        done = subprocess.run(
            [sys.executable, str(LOADGEN), "--port", str(system.port), "--path", system.sse_path, "--concurrency",
             str(args.concurrency), "--duration", f"{args.duration:g}"],
            capture_output=True, timeout=args.duration + 60, env=base_env(), preexec_fn=raise_nofile)
        cpu1 = system.cpu()
        system.check_alive()
        lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"the churn load generator failed: {done.stderr.decode()[-500:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        server_cpu, _ = cpu_delta(cpu0, cpu1)
        result.update(system=name, server_cpu_seconds=server_cpu,
                      server_cpu_ms_per_cycle=server_cpu / result["cycles"] * 1000 if result["cycles"] else None,
                      server_cores=server_cpu / max(result["seconds"], 1e-9),
                      loadgen_cores=result["loadgen_cpu_seconds"] / max(result["seconds"], 1e-9))
        return result
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(10)
        publisher_log.close()
        system.stop()


FIGURES = (("cycles_per_second", "cycles/s", True), ("p99_ms", "p99 cycle ms", False),
           ("server_cpu_ms_per_cycle", "server CPU ms/cycle", False), ("failures", "failed cycles", False))


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by_system: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_system.setdefault(run["system"], []).append(run)
    for key, label, higher in FIGURES:
        medians = {s: median([r[key] for r in rs if "error" not in r and r.get(key) is not None])
                   for s, rs in by_system.items() if any("error" not in r and r.get(key) is not None for r in rs)}
        peers = [(s, v) for s, v in medians.items() if s != ROVER]
        best = (max if higher else min)(peers, key=lambda p: p[1]) if peers else None
        for system, mine in by_system.items():
            values = [r[key] for r in mine if "error" not in r and r.get(key) is not None]
            value = medians.get(system)
            rows.append({
                "scenario": "churn", "system": system, "figure": label, "median_value": value, "values": values,
                "value": "-" if value is None else f"{value:,.2f}",
                "spread": f"{min(values):,.2f}..{max(values):,.2f}" if len(values) > 1 else "",
                "ratio": f"x{value / best[1]:.2f} ({best[0]})" if value is not None and best and best[1] else "",
                "result": "",
                "error": next((r["error"] for r in mine if "error" in r), ""),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0, help="events a second on the channel")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := [s for s in systems if s not in SYSTEMS]:
        raise SystemExit(f"unknown systems {unknown}; choose from {SYSTEMS}")
    raise_nofile()
    venv = ensure_venv(args.skip_install) if set(systems) - {ROVER} else Path(sys.executable)
    redis_server = ensure_redis(args.skip_install) if FLASKSSE in systems else None
    work = Path(tempfile.mkdtemp(prefix="churn-"))
    env = Env(venv_python=venv, redis_server=redis_server, work=work, rover_env={})
    runs: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeat):
            for name in systems:
                log(f"churn: {name} (run {repeat + 1} of {args.repeat}) ...")
                try:
                    run = measure(name, env, args)
                    log(f"    {run['cycles_per_second']:,.0f} cycles/s, {run['failures']} failed, server "
                        f"{run['server_cores']:.2f} cores, loadgen {run['loadgen_cores']:.2f}")
                except Exception as exc:  # noqa: BLE001 (reported in the table)
                    run = {"system": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
                    log(f"    {run['error']}")
                runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = table(runs)
    cols = ("system", "figure", "value", "spread", "ratio")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip())
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"churn-{stamp}.json"
    out.write_text(json.dumps({"started": stamp, "argv": sys.argv[1:], "machine": {"platform": platform.platform()},
                               "settings": vars(args), "rows": rows, "runs": runs}, indent=2, default=str))
    log(f"wrote {out}")
    return 0 if any(r["system"] == ROVER and "error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
