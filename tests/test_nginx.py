"""deploy/nginx.conf in front of a live gunicorn, with Debian's nginx: events arrive promptly (no
buffering), heartbeats keep a quiet stream open past proxy_read_timeout, WebSocket rooms pass the upgrade,
downloads resume by Range, and nginx's request id reaches the server's logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, need
from wire_helpers import Publisher, request, subscribe, ws_client_class

pytestmark = pytest.mark.live

#: proxy_read_timeout in the test: short, so that the test shows heartbeats keep a stream past it.
READ_TIMEOUT = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    def __init__(self, directory: Path, upstream_port: int) -> None:
        executable = need("nginx")
        self.port = _free_port()
        self.directory = directory
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        site = site.replace("127.0.0.1:8000", f"127.0.0.1:{upstream_port}")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        site = site.replace("proxy_read_timeout 1h;", f"proxy_read_timeout {READ_TIMEOUT}s;")
        temp = directory / "nginx-temp"
        temp.mkdir()
        user = "user root;\n" if os.getuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log info;\n"
            "daemon off;\nevents { worker_connections 1024; }\n"
            f"http {{\n  access_log {directory}/access.log;\n"
            + "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
            + site + "\n}\n")
        self.proc = subprocess.Popen([executable, "-p", str(directory), "-c", str(directory / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    errors = self.proc.stderr.read().decode()  # type: ignore[union-attr]
                    raise RuntimeError(f"nginx did not start: {errors}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def stack(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Nginx]]:
    server = module_server(app="wsgi:app", env={"ROVER_HEARTBEAT_INTERVAL": "0.5", "ROVER_LOG_FORMAT": "json",
                                                "ROVER_METRICS_INTERVAL": "0"})
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), server.port)
    yield server, nginx
    nginx.stop()


def test_events_arrive_promptly_through_nginx(stack: tuple[Any, Nginx]) -> None:
    server, nginx = stack
    reader = subscribe(nginx.port, "proxied")
    publish = Publisher(nginx.port)
    try:
        for i in range(5):
            sent = time.monotonic()
            publish("proxied", {"i": i})
            event = reader.events(1, timeout=2)[0]
            assert json.loads(event.data) == {"i": i}
            assert time.monotonic() - sent < 0.5, "nginx held the event back (buffering?)"
    finally:
        publish.close()
        reader.response.close()


def test_heartbeats_keep_a_quiet_stream_past_proxy_read_timeout(stack: tuple[Any, Nginx]) -> None:
    server, nginx = stack
    reader = subscribe(nginx.port, "quiet")
    publish = Publisher(nginx.port)
    try:
        time.sleep(READ_TIMEOUT * 2 + 0.5)  # twice nginx's read timeout without an event
        publish("quiet", "still here")
        assert reader.events(1, timeout=3)[0].data == "still here"
        assert reader.raw.count(b": ping") >= READ_TIMEOUT * 2  # what kept it open
    finally:
        publish.close()
        reader.response.close()


def test_websocket_rooms_through_nginx(stack: tuple[Any, Nginx]) -> None:
    server, nginx = stack
    client = ws_client_class().connect(f"ws://127.0.0.1:{nginx.port}/ws/comms/proxied?user=ada")
    try:
        assert json.loads(client.receive(5))["type"] == "history"
        client.send("hello through nginx")
        frames = []
        while not any(f.get("type") == "message" for f in frames):
            raw = client.receive(5)
            assert raw is not None, frames
            frames.append(json.loads(raw))
        assert frames[-1]["text"] == "hello through nginx" and frames[-1]["user"] == "ada"
    finally:
        client.close()


def test_downloads_resume_by_range_through_nginx(stack: tuple[Any, Nginx], tmp_path: Path) -> None:
    server, nginx = stack
    content = os.urandom(3 * 1024 * 1024 + 17)
    (server.uploads / "rover-log.bin").write_bytes(content)
    out = tmp_path / "rover-log.bin"
    out.write_bytes(content[:1_000_000])  # an interrupted download
    curl = need("curl")
    result = subprocess.run([curl, "-sS", "-C", "-", "-o", str(out), f"http://127.0.0.1:{nginx.port}/download/rover-log.bin"],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == content
    part = request(nginx.port, "/download/rover-log.bin", {"Range": "bytes=-17"})
    try:
        assert part.status == 206 and part.body() == content[-17:]
    finally:
        part.close()


def test_nginx_request_id_reaches_the_logs(stack: tuple[Any, Nginx]) -> None:
    server, nginx = stack
    response = request(nginx.port, "/realtime/traced")
    try:
        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32  # nginx's $request_id, passed on by deploy/nginx.conf
    finally:
        response.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f'"request_id": "{request_id}"' not in server.log():
        time.sleep(0.05)
    assert f'"request_id": "{request_id}"' in server.log()
