"""One command for every benchmark: ``python -m bench [all|fanout|rooms|downloads|churn|curves|scale]``.

It runs the benchmark scripts of this folder in turn (each installs the peers it needs into
``bench/.venv-peers`` on first use, starts each system fresh on loopback, and stops it), then prints one
table: for each scenario and figure, rover_stream's median, the spread of the repeats (min..max), the best
peer and rover_stream's ratio to it, and the target's verdict. Every script also writes its own JSON to
``bench/results/``; this command writes the combined table to ``bench/results/summary-<timestamp>.json``.

``--repeat N`` (3 by default) repeats every measurement; ``--quick`` shrinks every scenario (tens of
clients, a second or two each: minutes in all, used by the test suite as a smoke run, with
``--systems rover_stream`` so that no peer needs installing). Exit status: 1 if a benchmark failed to run
or a target was missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SUITES = ("fanout", "rooms", "churn", "downloads", "curves", "scale")


def commands(suite: str, args: argparse.Namespace) -> list[list[str]]:
    """The command lines that run ``suite``."""
    py = [sys.executable]
    common = ["--skip-install"] if args.skip_install else []
    systems = args.systems
    if suite == "fanout":
        cmd = py + [str(HERE / "fanout.py"), "all", "--repeat", str(args.repeat)] + common
        if systems:
            cmd += ["--systems", systems]
        if args.quick:
            cmd += ["--duration", "1.5", "--burst-subscribers", "20", "--steady-subscribers", "50",
                    "--idle-subscribers", "200", "--drain-timeout", "10"]
        return [cmd]
    if suite == "rooms":
        cmd = py + [str(HERE / "rooms.py"), "all", "--repeat", str(args.repeat)] + common
        if systems:
            cmd += ["--systems", ",".join(s for s in systems.split(",") if s in (
                "rover_stream", "flask-sock handwritten", "flask-socketio", "fastapi websockets")) or "rover_stream"]
        if args.quick:
            cmd += ["--duration", "1.5", "--burst-members", "10", "--steady-members", "40", "--idle-members",
                    "100", "--frozen-members", "5", "--frozen-count", "200", "--drain-timeout", "5"]
        return [cmd]
    if suite == "churn":
        cmd = py + [str(HERE / "churn.py"), "--repeat", str(args.repeat)] + common
        if systems:
            cmd += ["--systems", ",".join(s for s in systems.split(",") if s in (
                "rover_stream", "handwritten gevent", "fastapi sse-starlette", "flask-sse")) or "rover_stream"]
        if args.quick:
            cmd += ["--duration", "1.5", "--concurrency", "5"]
        return [cmd]
    if suite == "downloads":
        cmd = py + [str(HERE / "downloads.py"), "--repeat", str(args.repeat)]
        if args.quick:
            cmd += ["--size-mib", "8", "--rows", "20000"]
        return [cmd]
    if suite == "scale":  # 20,000 subscribers on 2 workers (the 100,000 run: see RESULTS.md)
        return [py + [str(HERE / "scale.py")] + (["--quick"] if args.quick else [])]
    cmd = py + [str(HERE / "curves.py")]
    if args.quick:
        cmd += ["--subscribers", "20,50", "--sizes", "100,4096", "--duration", "1"]
    return [cmd]


def newest(prefix: str, since: float) -> Path | None:
    found = [p for p in RESULTS.glob(f"{prefix}-*.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def number(text: Any) -> float | None:
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def rows_of(suite: str, path: Path) -> list[dict[str, Any]]:
    """Normalised rows: scenario, system, figure, median, spread, ratio, result."""
    data = json.loads(path.read_text())
    if suite == "downloads":
        rows = []
        downloads = data.get("downloads", {})
        systems = downloads.get("systems", {})
        mine = systems.get("rover_stream", {}).get("mb_per_s", {})
        nginx = systems.get("nginx", {}).get("mb_per_s", {})
        if mine:
            ratio = mine["median"] / nginx["median"] if nginx.get("median") else None
            rows.append({"scenario": "download", "system": "rover_stream", "figure": "MB/s",
                         "median": mine["median"], "spread": f"{mine['min']:,.0f}..{mine['max']:,.0f}",
                         "ratio": f"x{ratio:.2f} (nginx)" if ratio else "",
                         "result": ("PASS" if ratio >= 0.8 else "MISS") if ratio else ""})
        for kind, result in data.get("exports", {}).get("results", {}).items():
            ratio = result["streamed_s"]["median"] / result["in_memory_s"]["median"]
            rows.append({"scenario": f"export {kind}", "system": "rover_stream", "figure": "time / in-memory",
                         "median": ratio, "spread": "", "ratio": f"x{ratio:.2f} (in memory)",
                         "result": "PASS" if ratio <= 1.15 else "MISS"})
        return rows
    rows = []
    for row in data.get("rows", []):
        if row.get("system") != "rover_stream" and not row.get("system", "").startswith("rover_stream"):
            continue
        value = row.get("median_value")
        if value is None:
            value = number(row.get("median", row.get("value")))
        rows.append({"scenario": row.get("scenario", suite), "system": row["system"], "figure": row["figure"],
                     "median": value, "spread": row.get("spread", ""), "ratio": row.get("ratio", ""),
                     "result": row.get("result", "")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    parser.add_argument("--systems", default="", help="comma-separated systems (default: all of each suite)")
    parser.add_argument("--skip-install", action="store_true", help="use bench/.venv-peers as it is")
    args = parser.parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    RESULTS.mkdir(exist_ok=True)
    table: list[dict[str, Any]] = []
    failed: list[str] = []
    for suite in suites:
        started = time.time() - 1
        for cmd in commands(suite, args):
            print(f"\n=== {suite}: {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}",
                  file=sys.stderr, flush=True)
            done = subprocess.run(cmd, cwd=HERE.parent)
            if done.returncode not in (0, 1):  # 1: a target missed (the table says which)
                failed.append(f"{suite} (exit {done.returncode})")
        prefix = {"curves": "curves"}.get(suite, suite)
        path = newest(prefix, started)
        if path is None:
            failed.append(f"{suite} (no results)")
            continue
        table.extend({"suite": suite, **row} for row in rows_of(suite, path))
    print("\nrover_stream against its peers (medians of the repeats; ratio to the best peer):\n")
    cols = ("scenario", "system", "figure", "median", "spread", "ratio", "result")
    shown = [{**r, "median": "-" if r["median"] is None else f"{r['median']:,.2f}"} for r in table]
    widths = {c: max([len(c)] + [len(str(r[c])) for r in shown]) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in shown:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"summary-{stamp}.json"
    out.write_text(json.dumps({"argv": sys.argv[1:], "rows": table, "failed": failed}, indent=2, default=str))
    print(f"\nwrote {out}", file=sys.stderr)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    missed = [r for r in table if r["result"] == "MISS"]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
