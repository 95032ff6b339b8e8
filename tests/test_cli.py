"""The ``rover-stream`` command: serve starts gunicorn with gevent workers; bad settings exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs):  # type: ignore[no-untyped-def]
    return subprocess.Popen([sys.executable, "-m", "rover_stream.cli", *args],
                            env={**os.environ, **(env or {})}, **kwargs)


@pytest.mark.live
def test_serve_runs_gunicorn_with_gevent_and_answers(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = run_cli("serve", "--bind", "127.0.0.1:0", env={"ROVER_DATA_DIR": str(tmp_path)},
                       stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (match := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text())):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert "Using worker: rover_stream.server.worker.Worker" in log.read_text()
        url = f"http://127.0.0.1:{match.group(1)}/health"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    assert b'"status":"healthy"' in answer.read()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_invalid_setting_exits_2_with_a_message_naming_it() -> None:
    proc = run_cli("serve", env={"ROVER_HEARTBEAT_INTERVAL": "soon"}, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert b"ROVER_HEARTBEAT_INTERVAL" in err and b"'soon'" in err


def test_help_lists_serve() -> None:
    proc = run_cli("--help", stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and b"serve" in out


def test_an_open_server_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    """Without ROVER_SECRET_KEY, binding 0.0.0.0 stops the start-up (before any socket is bound)."""
    env = {**os.environ, "ROVER_BIND": "0.0.0.0:0"}
    env.pop("ROVER_SECRET_KEY", None)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                            cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "Refusing to listen on 0.0.0.0:0 without ROVER_SECRET_KEY" in result.stdout + result.stderr


def test_chat_shows_a_reconnection_as_two_lines() -> None:
    from rover_stream.cli import format_frame

    assert format_frame({"type": "disconnected", "room": "ops", "code": 1001, "reason": "server shutting down"}) \
        == ["* connection closed (1001: server shutting down); reconnecting"]
    assert format_frame({"type": "disconnected", "room": "ops", "code": 1006, "reason": "\x1b[31mred"}) \
        == ["* connection closed (1006: \\x1b[31mred); reconnecting"]
    assert format_frame({"type": "reconnected", "room": "ops", "code": 1001}) == ["* reconnected"]
