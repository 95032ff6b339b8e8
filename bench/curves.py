"""Scaling curves of rover_stream's SSE fan-out (one gevent worker): deliveries/s, server CPU per delivery and
RSS per connection as the subscribers grow (``--subscribers``, 100 to 10,000), and as the event grows
(``--sizes``, 100 B to 64 KiB, with ``--size-subscribers`` subscribers).

Each point is one ``bench/fanout.py burst`` measurement of rover_stream alone (fresh server, publishers flat
out for ``--duration`` seconds). Written to ``bench/results/curves-<timestamp>.csv`` and ``.png`` (matplotlib,
installed into ``bench/.venv-peers`` if this interpreter lacks it) and ``curves-<timestamp>.json``; what
limits each curve is discussed in ``bench/RESULTS.md``.

Usage: ``python bench/curves.py [--subscribers 100,1000,5000,10000] [--sizes 100,1024,16384,65536]``
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VENV = HERE / ".venv-peers"
FIELDS = ("curve", "subscribers", "event_bytes", "deliveries_per_second", "server_cpu_us_per_delivery",
          "rss_kb_per_connection", "server_cores", "loadgen_cores", "received", "expected", "delivered_fraction")


def point(subscribers: int, size: int, duration: float) -> dict[str, Any]:
    started = time.time() - 1
    cmd = [sys.executable, str(HERE / "fanout.py"), "burst", "--systems", "rover_stream", "--burst-subscribers",
           str(subscribers), "--payload", str(size), "--duration", f"{duration:g}", "--drain-timeout", "30",
           "--connect-rate", "2000", "--skip-install", "--rover-env", "ROVER_MAX_BODY_BYTES=1048576"]
    subprocess.run(cmd, cwd=HERE.parent, stdout=subprocess.DEVNULL, timeout=duration + 300)
    found = [p for p in RESULTS.glob("fanout-*.json") if p.stat().st_mtime >= started]
    if not found:
        raise RuntimeError(f"no result for {subscribers} subscribers, {size} B")
    run = json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())["runs"][0]
    if "error" in run:
        raise RuntimeError(run["error"])
    if not run.get("received"):
        raise RuntimeError(f"nothing delivered ({run.get('publish_errors')} publish errors)")
    return {
        "subscribers": subscribers, "event_bytes": size,
        "deliveries_per_second": round(run["deliveries_per_second"], 1),
        "server_cpu_us_per_delivery": round(run["server_cpu_us_per_delivery"], 3),
        "rss_kb_per_connection": round(run["rss_per_connection_connected"] / 1024, 2),
        "server_cores": round(run["server_cores"], 3), "loadgen_cores": round(run["subscriber_loadgen_cores"], 3),
        "received": run["received"], "expected": run["expected_deliveries"],
        "delivered_fraction": round(run["received"] / max(1, run["expected_deliveries"]), 4),
    }


def plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for column, curve, x_key, x_label in ((0, "subscribers", "subscribers", "subscribers (100-byte events)"),
                                          (1, "size", "event_bytes", "event size, bytes")):
        points = sorted((r for r in rows if r["curve"] == curve), key=lambda r: float(r[x_key]))
        if not points:
            continue
        xs = [float(r[x_key]) for r in points]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(xs, [float(r["deliveries_per_second"]) for r in points], "o-", color="#e8743b")
        top.set_ylabel("deliveries / s")
        bottom.plot(xs, [float(r["rss_kb_per_connection"]) for r in points], "o-", color="#3b8ee8",
                    label="RSS KB / connection")
        bottom.plot(xs, [float(r["server_cpu_us_per_delivery"]) for r in points], "s--", color="#4caf50",
                    label="server CPU us / delivery")
        bottom.legend()
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.set_xlabel(x_label)
            axis.grid(True, alpha=0.3)
    figure.suptitle("rover_stream SSE fan-out, one gevent worker (bench/curves.py)")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)


def plot_anywhere(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        if subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True).returncode:
            subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True, timeout=900)
        subprocess.run([str(python), __file__, "--plot", str(csv_path), str(png_path)], check=True, timeout=300)
        return
    plot(csv_path, png_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="100,1000,5000,10000")
    parser.add_argument("--sizes", default="100,1024,16384,65536")
    parser.add_argument("--size-subscribers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--plot", nargs=2, metavar=("CSV", "PNG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plot:
        plot(Path(args.plot[0]), Path(args.plot[1]))
        return 0
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    points: list[dict[str, Any]] = []
    plan = [("subscribers", int(n), 100) for n in args.subscribers.split(",")]
    plan += [("size", args.size_subscribers, int(size)) for size in args.sizes.split(",")]
    for curve, subscribers, size in plan:
        print(f"curves: {subscribers} subscribers, {size} B events ...", file=sys.stderr, flush=True)
        try:
            result = {"curve": curve, **point(subscribers, size, args.duration)}
        except (RuntimeError, subprocess.SubprocessError, KeyError) as exc:
            print(f"    failed: {exc}", file=sys.stderr)
            continue
        print(f"    {result['deliveries_per_second']:,.0f} deliveries/s, {result['rss_kb_per_connection']} KB/conn, "
              f"{result['server_cpu_us_per_delivery']} us/delivery", file=sys.stderr)
        points.append(result)
    csv_path = RESULTS / f"curves-{stamp}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(points)
    png_path = RESULTS / f"curves-{stamp}.png"
    with tempfile.TemporaryDirectory():
        plot_anywhere(csv_path, png_path)
    rows = [{"scenario": f"curve {p['curve']}", "system": "rover_stream",
             "figure": f"deliveries/s at {p['subscribers']} subs x {p['event_bytes']} B",
             "median_value": p["deliveries_per_second"], "spread": "", "ratio": "", "result": ""} for p in points]
    (RESULTS / f"curves-{stamp}.json").write_text(json.dumps({"points": points, "rows": rows}, indent=2))
    print("\n".join(f"{p['curve']:12} {p['subscribers']:>6} subs {p['event_bytes']:>6} B  "
                    f"{p['deliveries_per_second']:>12,.0f}/s  {p['rss_kb_per_connection']:>6} KB/conn  "
                    f"{p['server_cpu_us_per_delivery']:>7} us/delivery" for p in points))
    print(f"wrote {csv_path} and {png_path}", file=sys.stderr)
    return 0 if points else 1


if __name__ == "__main__":
    sys.exit(main())
