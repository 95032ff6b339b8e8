"""The package ships ``py.typed``: its annotations must hold. mypy, strict, over the library (the modules
that import untyped libraries -- gunicorn, prometheus_client -- say so where they do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_library() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
                             "--cache-dir", str(ROOT / ".mypy_cache"), "rover_stream"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_over_library_and_tests() -> None:
    """The tests call the library as users do; mypy over both catches a signature the tests no longer
    match (a test that type-checks against a changed API is one that still runs the API it means)."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--explicit-package-bases",
                             "--cache-dir", str(ROOT / ".mypy_cache"), "rover_stream", "tests"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
