"""The library without the demo: a copy of the checkout with ``rover_stream/demo/`` deleted imports, serves,
and passes the library's tests, so the demo is something that uses the library and nothing more.

To reproduce by hand: copy the checkout, ``rm -r rover_stream/demo``, and run
``ROVER_DEMO=false PYTHONPATH=. python -m pytest tests/test_extension.py tests/test_hub.py`` there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Tests of the library alone (none of them uses a demo route), the live ones included.
LIBRARY_TESTS = ("tests/test_extension.py", "tests/test_hub.py", "tests/test_wire_sse.py", "tests/test_tabular.py",
                 "tests/test_pipe.py", "tests/test_live_hub.py", "tests/test_examples.py")


@pytest.fixture(scope="module")
def checkout_without_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("without-demo") / "checkout"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        source = ROOT / name
        if name.startswith("rover_stream/demo/") or not source.is_file():
            continue
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy / name)
    assert not (copy / "rover_stream" / "demo").exists()
    return copy


def environment(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROVER_", "PYTEST_"))}
    return {**env, "PYTHONPATH": str(copy), "ROVER_DEMO": "false"}


def test_the_library_imports_and_builds_its_app(checkout_without_demo: Path) -> None:
    script = ("import rover_stream, rover_stream.server.wsgi as w, rover_stream.cli; "
              f"assert rover_stream.__file__.startswith({str(checkout_without_demo)!r}), rover_stream.__file__; "
              "print(sorted(r.rule for r in w.app.url_map.iter_rules()))")
    result = subprocess.run([sys.executable, "-c", script], cwd=checkout_without_demo,
                            env=environment(checkout_without_demo), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "/realtime/<channel>" in result.stdout and "'/'" not in result.stdout


@pytest.mark.live
def test_the_library_tests_pass_without_the_demo(checkout_without_demo: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                             *LIBRARY_TESTS], cwd=checkout_without_demo, env=environment(checkout_without_demo),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
