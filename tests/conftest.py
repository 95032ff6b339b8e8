"""Fixtures: a Flask app for unit tests, and real gunicorn servers (gevent worker) on loopback ports."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIVE_APPS = Path(__file__).resolve().parent / "live_apps"

#: Set by .ci/run: a service a test needs (redis-server, nginx, chromium, curl) that is missing fails the
#: run instead of skipping the test.
REQUIRE_SERVICES = os.environ.get("ROVER_TEST_REQUIRE_SERVICES") == "1"


def need(executable: str) -> str:
    """The path of ``executable``, or skip (fail in CI) when it is not installed."""
    import shutil

    path = shutil.which(executable) or shutil.which(executable, path="/usr/sbin:/sbin")  # nginx lives in sbin
    if path is None:
        message = f"{executable} is not installed"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (ROVER_TEST_REQUIRE_SERVICES=1: .ci/run must install it)")
        pytest.skip(message)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Any:
    """The demo on the full server (its routes are the examples many tests exercise)."""
    from rover_stream.demo import create_demo_app

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    app = create_demo_app({
        "TESTING": True,
        "ROVER_UPLOADS_DIR": str(uploads),
        "ROVER_DATA_DIR": str(tmp_path / "var"),
        "ROVER_HEARTBEAT_INTERVAL": 0.2,
        "ROVER_FLUSH_INTERVAL": 0.02,
    })
    return app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


class LiveServer:
    """A gunicorn master with gevent worker(s), started on a free port of 127.0.0.1."""

    def __init__(self, tmp_path: Path, app: str = "stream_app:app", env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), kind: str = "gevent", netns: Any = None,
                 host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.netns = netns  # a tests/netlab.py Namespace to run in, listening on ``host`` there
        self.host = host
        self.log_path = tmp_path / f"gunicorn-{time.monotonic_ns()}.log"
        uploads = tmp_path / "uploads"
        uploads.mkdir(exist_ok=True)
        self.uploads = uploads
        environment = {
            **os.environ,
            "ROVER_BIND": f"{host}:0",
            "ROVER_UPLOADS_DIR": str(uploads),
            "ROVER_DATA_DIR": str(tmp_path / "var"),
            "ROVER_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        # This checkout first: gunicorn imports the config (and so rover_stream) before --chdir applies,
        # and an installed rover_stream elsewhere must not be what the test serves.
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
        self._log = open(self.log_path, "wb")
        if kind == "gevent":
            command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--chdir",
                       str(ROOT), "--pythonpath", str(LIVE_APPS), *args, app]
        elif kind == "threaded":
            command = [sys.executable, str(LIVE_APPS / "serve_threaded.py"), app]
            environment["PYTHONPATH"] = os.pathsep.join([str(LIVE_APPS), str(ROOT)])
        else:
            raise ValueError(kind)
        if netns is not None:
            command = netns.command(command)
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment,
                                     cwd=str(tmp_path))
        self.port = self._wait_for_port()
        self.url = f"http://{host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rf"Listening at: http://{re.escape(self.host)}:(\d+)", self.log())
            if match and "Booting worker" in self.log():
                port = int(match.group(1))
                try:
                    if self.netns is None:
                        socket.create_connection((self.host, port), timeout=1).close()
                    else:
                        self.netns.call(functools.partial(_probe, (self.host, port)))
                    return port
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not start within {timeout} s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Send ``sig`` to the master; return the seconds it took to exit (kill it after ``timeout``)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - start


def _probe(address: tuple[str, int]) -> None:
    socket.create_connection(address, timeout=1).close()


@contextlib.contextmanager
def _servers(base: Path) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(app: str = "stream_app:app", env: dict[str, str] | None = None, args: tuple[str, ...] = (),
              kind: str = "gevent", netns: Any = None, host: str = "127.0.0.1") -> LiveServer:
        server = LiveServer(base, app=app, env=env, args=args, kind=kind, netns=netns, host=host)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``live_server(env={...})`` starts a gunicorn server; all are stopped after the test."""
    with _servers(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Like ``live_server``, for servers shared by the tests of a module (they must not change its state)."""
    with _servers(tmp_path_factory.mktemp("module-server")) as start:
        yield start


class RedisServer:
    """A redis-server of the test's own, on a free loopback port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.executable = need("redis-server")
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # e.g. persistence options, for the next start()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def command(self, *args: str) -> bytes:
        """One command with redis-cli's wire format, answered raw (for CLIENT LIST, FLUSHALL...)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            connection.sendall(request.encode())
            time.sleep(0.05)
            data = b""
            connection.settimeout(0.5)
            try:
                while chunk := connection.recv(65536):
                    data += chunk
                    if data.endswith(b"\r\n") and (data[:1] != b"$" or data.count(b"\r\n") >= 2):
                        break
            except TimeoutError:
                pass
            return data


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.kill()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that starts a server carries the ``live`` marker (``-m 'not live'`` is the quick run)."""
    unmarked = [item.nodeid for item in items
                if {"live_server", "module_server"} & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("live") is None]
    if unmarked:
        raise pytest.UsageError("These tests start a server but lack @pytest.mark.live:\n  " + "\n  ".join(unmarked))
