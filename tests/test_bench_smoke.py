"""A smoke run of the benchmark command with tiny numbers (rover_stream alone: no peer to install), so that
`python -m bench` keeps working. The figures themselves are not checked here: bench/RESULTS.md has them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.live


@pytest.mark.timeout(300)
def test_python_m_bench_runs_end_to_end_with_tiny_numbers() -> None:
    before = set((ROOT / "bench" / "results").glob("summary-*.json"))
    done = subprocess.run([sys.executable, "-m", "bench", "fanout", "--quick", "--repeat", "1", "--systems",
                           "rover_stream"], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert "rover_stream against its peers" in done.stdout, done.stderr[-3000:]
    summaries = set((ROOT / "bench" / "results").glob("summary-*.json")) - before
    assert summaries, done.stderr[-3000:]
    summary = json.loads(max(summaries).read_text())
    assert summary["failed"] == [], summary
    figures = {(row["scenario"], row["figure"]) for row in summary["rows"]}
    assert {scenario for scenario, _ in figures} >= {"burst", "steady", "idle", "batch"}
    assert all(row["median"] is not None for row in summary["rows"] if row["scenario"] in ("burst", "batch"))
    # batches of 100 events per request, against the single publishes of the same run
    batch = {row["figure"]: row for row in summary["rows"] if row["scenario"] == "batch"}
    assert batch["events published/s"]["median"] > 0, batch
    assert batch["events published/s"]["ratio"].endswith("(single publishes)"), batch
    assert batch["deliveries/s"]["median"] > 0, batch
    assert batch["delivered (received / expected)"]["result"] == "PASS", batch
    assert "rover_stream: batch of 100: " in done.stdout and "x the events/s of single publishes" in done.stdout, \
        done.stdout[-3000:]
    for path in summaries:
        path.unlink()


@pytest.mark.timeout(300)
def test_rooms_and_churn_benchmarks_run_with_tiny_numbers() -> None:
    for suite in ("rooms", "churn"):
        done = subprocess.run([sys.executable, "-m", "bench", suite, "--quick", "--repeat", "1", "--systems",
                               "rover_stream"], cwd=ROOT, capture_output=True, text=True, timeout=280)
        assert "rover_stream against its peers" in done.stdout, done.stderr[-3000:]
        assert "failed:" not in done.stderr, done.stderr[-3000:]
        assert "Error" not in done.stdout, done.stdout[-3000:]  # a measurement that failed is a row saying why


@pytest.mark.timeout(300)
def test_the_scale_benchmark_runs_with_tiny_numbers() -> None:
    """300 subscribers over two load generators, two workers on a Redis of its own: the harness of the
    100,000-subscriber run keeps working."""
    done = subprocess.run([sys.executable, "-m", "bench", "scale", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rover_stream against its peers" in done.stdout, done.stderr[-3000:]
