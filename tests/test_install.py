"""The built wheel, installed as a stranger would: a fresh venv, no checkout on ``sys.path``, the server
started from an empty folder.

To reproduce by hand::

    pip wheel --no-deps -w /tmp/dist . && python3 -m venv /tmp/venv && /tmp/venv/bin/pip install /tmp/dist/*.whl
    mkdir /tmp/empty && cd /tmp/empty && PORT=8006 /tmp/venv/bin/rover-stream serve
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.wire_helpers import Publisher, room_echo, subscribe

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.live


class Installed:
    def __init__(self, base: Path) -> None:
        dist = base / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
                       check=True, cwd=base, timeout=300)
        (self.wheel,) = dist.glob("rover_stream-*.whl")
        self.venv = base / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=120)
        self.python = self.venv / "bin" / "python"
        subprocess.run([str(self.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        str(self.wheel)], check=True, cwd=base, timeout=600, env=self.env(base))
        self.site_packages = Path(subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, env=self.env(base)).stdout.strip())

    def env(self, home: Path, **more: str) -> dict[str, str]:
        """The environment of a stranger's shell: no ROVER_ settings, no PYTHONPATH, its own HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROVER_", "PYTHON", "PROMETHEUS_"))
               and k not in ("HOST", "PORT", "WEB_CONCURRENCY", "LOG_LEVEL", "XDG_DATA_HOME", "VIRTUAL_ENV")}
        env.update(HOME=str(home), PATH=f"{self.venv / 'bin'}:{env.get('PATH', '')}", **more)
        return env

    def files(self) -> set[tuple[str, int]]:
        """Every file of site-packages but compiled bytecode, with its size."""
        return {(str(p.relative_to(self.site_packages)), p.stat().st_size)
                for p in self.site_packages.rglob("*") if p.is_file() and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serving:
    """``rover-stream serve`` of the venv, from an empty folder."""

    def __init__(self, installed: Installed, folder: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.log_path = folder.parent / f"{folder.name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(installed.venv / "bin" / "rover-stream"), "serve", *args], cwd=folder,
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log()
            if "Booting worker" in self.log():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return
                except OSError:
                    pass
            assert time.monotonic() < deadline, f"not listening on {port}:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def serving(installed: Installed, tmp_path: Path) -> Iterator[Any]:
    started: list[Serving] = []

    def start(env: dict[str, str], args: tuple[str, ...] = (), folder: str = "empty") -> Serving:
        (tmp_path / folder).mkdir()
        server = Serving(installed, tmp_path / folder, env, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_wheel_holds_the_dashboard_the_server_config_and_the_license(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for needed in ("rover_stream/demo/templates/index.html", "rover_stream/demo/static/app.js",
                   "rover_stream/demo/static/style.css", "rover_stream/server/config.py",
                   "rover_stream/server/worker.py", "rover_stream/py.typed", "rover_stream/js/rover-stream.js"):
        assert needed in names, needed
    assert any(name.endswith("licenses/LICENSE") or name.endswith("/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "bench/", "templates/", "static/")) for name in names)


def test_the_installed_command_tells_its_version(installed: Installed, tmp_path: Path) -> None:
    env = installed.env(tmp_path)
    expected = subprocess.run([str(installed.python), "-c", "import rover_stream; print(rover_stream.__version__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", expected)
    for command in ([str(installed.venv / "bin" / "rover-stream"), "--version"],
                    [str(installed.python), "-m", "rover_stream", "--version"]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"rover-stream {expected}"


def test_serve_from_an_empty_folder_on_port_serves_everything(installed: Installed, serving: Any,
                                                               tmp_path: Path) -> None:
    """PORT (as hosting platforms set it) picks the port; the dashboard, its files, the hub, rooms and
    /health answer; generated files go to the user's data folder, never into site-packages."""
    before = installed.files()
    port = free_port()
    home = tmp_path / "home"
    server = serving(installed.env(home, PORT=str(port)))
    server.wait_listening(port)

    status, headers, body = fetch(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, body[:300])
    assert b"Mission Control" in body
    assert re.search(rb'src="/static/app\.js', body), body[:2000]
    status, headers, body = fetch(port, "/static/app.js")
    assert status == 200 and b"EventSource" in body
    status, headers, body = fetch(port, "/rover-stream.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert b"export function subscribe" in body
    health = json.loads(fetch(port, "/health")[2])
    assert health["status"] == "healthy"

    reader = subscribe(port, "install-news")
    publish = Publisher(port)
    try:
        assert publish("install-news", {"n": 1})["subscribers"] == 1
        (event,) = reader.events(1, timeout=10)
        assert json.loads(event.data) == {"n": 1}
    finally:
        publish.close()
        reader.response.close()

    assert room_echo(f"ws://127.0.0.1:{port}/ws/comms/science?user=ada", "hello from a wheel")["user"] == "ada"

    for path in ("/download/report.pdf", "/download/example.txt", "/large-file"):
        status, _, body = fetch(port, path)
        assert status == 200, (path, body[:200])
    assert body[:0] == b"" and len(body) == 32 * 1024 * 1024
    assert server.stop() == 0
    data = home / ".local" / "share" / "rover-stream"
    assert (data / "large_file.bin").is_file() and (data / "uploads" / "report.pdf").is_file()
    assert installed.files() == before, sorted(installed.files() ^ before)[:20]
    assert list((tmp_path / "empty").iterdir()) == []  # nothing in the working folder either


def test_several_workers_without_redis_are_refused_at_start(installed: Installed, tmp_path: Path) -> None:
    """A split hub (each worker with its own) would lose events silently; the start-up says why instead."""
    for args, env in ((("--workers", "2"), {}), ((), {"WEB_CONCURRENCY": "3"})):
        result = subprocess.run([str(installed.venv / "bin" / "rover-stream"), "serve", *args], cwd=tmp_path,
                                env=installed.env(tmp_path, PORT=str(free_port()), **env), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0
        assert "ROVER_REDIS_URL" in result.stderr, result.stderr


def test_gunicorn_flags_cannot_split_the_hub_either(installed: Installed, tmp_path: Path) -> None:
    result = subprocess.run([str(installed.python), "-m", "gunicorn", "-c", "python:rover_stream.server.config",
                             "-w", "2", "-b", f"127.0.0.1:{free_port()}", "rover_stream.server.wsgi:app"],
                            cwd=tmp_path, env=installed.env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ROVER_REDIS_URL" in result.stdout + result.stderr


def test_log_level_and_web_concurrency_are_honoured(installed: Installed, serving: Any, tmp_path: Path,
                                                    redis_server: Any) -> None:
    port = free_port()
    server = serving(installed.env(tmp_path, PORT=str(port), WEB_CONCURRENCY="2", LOG_LEVEL="WARNING",
                                   ROVER_REDIS_URL=redis_server.url, ROVER_DEMO="false"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            pids = {json.loads(fetch(port, "/health")[2])["pid"] for _ in range(40)}
            if len(pids) == 2:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
        time.sleep(0.1)
    assert fetch(port, "/")[0] == 404  # ROVER_DEMO=false: the server alone
    assert "Booting worker" not in server.log()  # an info line: LOG_LEVEL=WARNING hides it


def test_the_readmes_first_command_in_a_brand_new_venv(tmp_path: Path) -> None:
    """``pip install -e . && rover-stream serve``, as the README opens, in a venv that has nothing yet (no
    pytest, which would bring ``packaging`` along and hide a missing dependency)."""
    first = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("\n", 1)[0]
    assert first == "pip install -e . && rover-stream serve"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROVER_", "PYTHON", "PROMETHEUS_"))
           and k not in ("HOST", "PORT", "WEB_CONCURRENCY", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", HOME=str(tmp_path), PORT=str(port),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_QUIET="1")
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", first.replace("&& rover-stream", "&& exec rover-stream")],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                status, headers, body = fetch(port, "/")
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
        assert status == 200 and b"Mission Control" in body
        assert fetch(port, "/static/app.js")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
