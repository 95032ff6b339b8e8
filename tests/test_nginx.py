"""deploy/nginx.conf in front of a live gunicorn, with Debian's nginx: events arrive promptly (no
buffering), heartbeats keep a quiet stream open past proxy_read_timeout, WebSocket rooms pass the upgrade,
downloads resume by Range, and nginx's request id reaches the server's logs. The HTTPS server, with a
throw-away certificate: event streams share one HTTP/2 connection, downloads over HTTP/2 are byte-exact
(Range too), wss:// from a page's origin; and the limits against slow and numerous clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, need
from wire_helpers import Publisher, request, subscribe, wait_for, ws_client_class

from rover_stream.wire.sse_parser import EventStreamParser
from tests.nginxconf import server_blocks

pytestmark = pytest.mark.live

#: proxy_read_timeout in the test: short, so that the test shows heartbeats keep a stream past it.
READ_TIMEOUT = 2

SITE = ROOT / "deploy" / "nginx.conf"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 and localhost: (certificate, key)."""
    openssl = need("openssl")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    result = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    return cert, key


def _substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}: adapt tests/test_nginx.py"
        text = text.replace(old, new)
    return text


class Nginx:
    """Debian's nginx with deploy/nginx.conf: the plain-HTTP server on ``port``, the HTTPS + HTTP/2 one on
    ``tls_port`` with a throw-away certificate (``cert``), both in front of gunicorn on ``upstream_port``.
    ``replace`` changes more of the file (e.g. lower limits)."""

    def __init__(self, directory: Path, upstream_port: int, replace: dict[str, str] | None = None) -> None:
        executable = need("nginx")
        self.port = _free_port()
        self.tls_port = _free_port()
        self.directory = directory
        self.cert, key = make_certificate(directory)
        site = _substitute(SITE.read_text(), {
            "127.0.0.1:8000": f"127.0.0.1:{upstream_port}",
            "listen 80;": f"listen 127.0.0.1:{self.port};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.tls_port} ssl http2;",
            "/etc/ssl/rover-stream/fullchain.pem": str(self.cert),
            "/etc/ssl/rover-stream/privkey.pem": str(key),
            "proxy_read_timeout 1h;": f"proxy_read_timeout {READ_TIMEOUT}s;",
            **(replace or {}),
        })
        temp = directory / "nginx-temp"
        temp.mkdir()
        user = "user root;\n" if os.getuid() == 0 else ""
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log info;\n"
            "daemon off;\nevents { worker_connections 1024; }\n"
            f"http {{\n  access_log {directory}/access.log;\n"
            "  sendfile on;\n  tcp_nopush on;\n  gzip on;\n"  # as Debian's /etc/nginx/nginx.conf has them
            + "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
            + site + "\n}\n")
        self.proc = subprocess.Popen([executable, "-p", str(directory), "-c", str(directory / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        for port in (self.port, self.tls_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError as exc:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        if self.proc.poll() is None:
                            self.proc.kill()
                        _, errors = self.proc.communicate()
                        log = directory / "error.log"
                        raise RuntimeError(f"nginx did not start: {errors.decode()}"
                                           f"{log.read_text() if log.exists() else ''}") from exc
                    time.sleep(0.05)

    def url(self, path: str) -> str:
        """The HTTPS URL of ``path``."""
        return f"https://127.0.0.1:{self.tls_port}{path}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the throw-away certificate (and verifies the host name: 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def stop(self) -> None:
        if self.proc.poll() is None:
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
        frames: list[Any] = []
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


# HTTPS and HTTP/2 (the TLS server of deploy/nginx.conf), and the limits at the edge.

#: How long the curl of a multiplexed-streams test keeps its streams open (--max-time, after which curl
#: reports every transfer with -w): the test's events must all arrive within it.
STREAM_SECONDS = 5


class CurlStreams:
    """One curl with several event streams over HTTPS (--parallel: over one HTTP/2 connection, as a
    browser's EventSources share one), each written to its own file and parsed as it grows."""

    def __init__(self, nginx: Nginx, paths: list[str], directory: Path, seconds: float = STREAM_SECONDS) -> None:
        self.files = [directory / f"stream-{i}.txt" for i in range(len(paths))]
        command = [need("curl"), "--http2", "--cacert", str(nginx.cert), "-sS", "--no-buffer", "--parallel",
                   "--parallel-max", str(len(paths)), "--max-time", str(seconds),
                   "-w", "%{http_version} %{response_code} %{num_connects}\n"]
        for path, file in zip(paths, self.files, strict=True):
            command += ["-o", str(file), nginx.url(path)]
        self.seconds = seconds
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.raw = [b""] * len(paths)
        self.parsers = [EventStreamParser() for _ in paths]
        self.events: list[list[Any]] = [[] for _ in paths]
        self.stderr = b""

    def _read(self, i: int) -> None:
        try:
            data = self.files[i].read_bytes()
        except FileNotFoundError:
            return
        if len(data) > len(self.raw[i]):
            self.events[i].extend(self.parsers[i].feed(data[len(self.raw[i]):]))
            self.raw[i] = data

    def wait(self, i: int, predicate: Any, timeout: float) -> None:
        """Until ``predicate(raw, events)`` holds for stream ``i``."""
        deadline = time.monotonic() + timeout
        self._read(i)
        while not predicate(self.raw[i], self.events[i]):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"stream {i}: {self.raw[i][-300:]!r}; curl: {self.stderr!r}")
            time.sleep(0.005)
            self._read(i)

    def finish(self) -> list[tuple[str, str, int]]:
        """Wait for curl to end the streams at --max-time: (HTTP version, status, new connections) of each
        transfer, in the order they ended."""
        out, self.stderr = self.proc.communicate(timeout=self.seconds + 10)
        assert self.proc.returncode in (0, 28), self.stderr  # 28: --max-time reached, as it must for a stream
        return [(version, status, int(connects)) for version, status, connects in
                (line.split() for line in out.decode().splitlines())]

    def close(self) -> None:
        if self.proc.returncode is None:  # not finished
            self.proc.kill()
            _, self.stderr = self.proc.communicate()


def tls_publisher(nginx: Nginx) -> Publisher:
    """A Publisher that POSTs to /api/broadcast through the HTTPS server (HTTP/1.1 over TLS)."""
    publish = Publisher(nginx.tls_port)
    publish.connection = http.client.HTTPSConnection("127.0.0.1", nginx.tls_port, timeout=10,
                                                     context=nginx.ssl_context())
    return publish


def curl_h2(nginx: Nginx, path: str, output: Path, *args: str) -> tuple[str, str]:
    """GET ``path`` through the HTTPS server with curl --http2 into ``output``: (HTTP version, status)."""
    result = subprocess.run([need("curl"), "--http2", "--cacert", str(nginx.cert), "-sS", "-o", str(output),
                             "-w", "%{http_version} %{response_code}", *args, nginx.url(path)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    version, status = result.stdout.decode().split()
    return version, status


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_event_streams_share_one_http2_connection(stack: tuple[Any, Nginx], tmp_path: Path) -> None:
    """Eight EventSources -- more than the six HTTP/1.1 connections a browser allows an origin -- as streams
    of one TLS connection with HTTP/2: each gets its events in order, and at once (no buffering)."""
    server, nginx = stack
    channels = [f"h2-{i}" for i in range(8)]
    streams = CurlStreams(nginx, [f"/realtime/{channel}" for channel in channels], tmp_path)
    publish = tls_publisher(nginx)
    try:
        for i in range(len(channels)):  # subscribed: the retry hint, then the position block
            streams.wait(i, lambda raw, events: b"\n\nid: " in raw, timeout=10)
        for n in range(3):
            for i, channel in enumerate(channels):
                sent = time.monotonic()
                publish(channel, {"n": n, "channel": channel})
                streams.wait(i, lambda raw, events: len(events) > n, timeout=2)  # noqa: B023
                assert time.monotonic() - sent < 0.5, "nginx held the event back (buffering?)"
        for i, channel in enumerate(channels):
            assert [json.loads(event.data) for event in streams.events[i]] == [
                {"n": n, "channel": channel} for n in range(3)]
            assert len({event.last_event_id for event in streams.events[i]}) == 3
        transfers = streams.finish()
    finally:
        publish.close()
        streams.close()
    assert [(version, status) for version, status, _ in transfers] == [("2", "200")] * len(channels)
    assert sum(connects for _, _, connects in transfers) == 1, f"not one connection for all: {transfers}"


def test_downloads_over_http2_are_byte_exact_with_range(stack: tuple[Any, Nginx], tmp_path: Path) -> None:
    server, nginx = stack
    content = os.urandom(5 * 1024 * 1024 + 123)
    (server.uploads / "h2-log.bin").write_bytes(content)
    path = "/download/h2-log.bin"

    whole = tmp_path / "whole.bin"
    assert curl_h2(nginx, path, whole) == ("2", "200")
    assert sha256(whole.read_bytes()) == sha256(content)

    part = tmp_path / "part.bin"
    assert curl_h2(nginx, path, part, "--range", "1000000-1999999") == ("2", "206")
    assert part.read_bytes() == content[1_000_000:2_000_000]
    assert curl_h2(nginx, path, part, "--range", "-17") == ("2", "206")
    assert part.read_bytes() == content[-17:]

    resumed = tmp_path / "resumed.bin"
    resumed.write_bytes(content[:1_234_567])  # an interrupted download
    assert curl_h2(nginx, path, resumed, "--continue-at", "-") == ("2", "206")
    assert sha256(resumed.read_bytes()) == sha256(content)

    # /large-file (32 MiB, sendfile, through "location /"): the very bytes gunicorn serves directly.
    direct, proxied = tmp_path / "direct.bin", tmp_path / "proxied.bin"
    result = subprocess.run([need("curl"), "-sS", "-o", str(direct), f"http://127.0.0.1:{server.port}/large-file"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert curl_h2(nginx, "/large-file", proxied) == ("2", "200")
    assert proxied.stat().st_size == direct.stat().st_size == 32 * 1024 * 1024
    assert sha256(proxied.read_bytes()) == sha256(direct.read_bytes())


def test_websocket_rooms_through_https_from_the_page(stack: tuple[Any, Nginx]) -> None:
    """wss:// with the Origin a page of this site sends: nginx must pass the browser's Host on (a /ws/
    location that sets proxy_set_header inherits none of the server's), or the server refuses the origin."""
    server, nginx = stack
    client = ws_client_class().connect(f"wss://127.0.0.1:{nginx.tls_port}/ws/comms/tls?user=ada",
                                       headers={"Origin": f"https://127.0.0.1:{nginx.tls_port}"},
                                       ssl_context=nginx.ssl_context())
    try:
        assert json.loads(client.receive(5))["type"] == "history"
        client.send("hello over TLS")
        frames: list[Any] = []
        while not any(f.get("type") == "message" for f in frames):
            raw = client.receive(5)
            assert raw is not None, frames
            frames.append(json.loads(raw))
        assert frames[-1]["text"] == "hello over TLS" and frames[-1]["user"] == "ada"
    finally:
        client.close()


def _post(nginx: Nginx, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", nginx.tls_port, timeout=10, context=nginx.ssl_context())
    try:
        connection.request("POST", "/api/broadcast", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_limits_against_floods(stack: tuple[Any, Nginx], tmp_path: Path) -> None:
    """deploy/nginx.conf's limits, lowered: requests in progress per address (HTTP/2 streams each count),
    the body size (the server's 64 KiB), and slow headers and bodies cut by nginx."""
    server, _ = stack
    nginx = Nginx(tmp_path, server.port, replace={
        "limit_conn rover_stream_addr 100;": "limit_conn rover_stream_addr 2;",
        "client_header_timeout 10s;": "client_header_timeout 1s;",
        "client_body_timeout 10s;": "client_body_timeout 1s;",
    })
    try:
        # Slowloris: a header, and a body, trickled in; nginx cuts both after its timeout.
        slow_header = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
        slow_header.sendall(b"GET /realtime/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_body = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
        slow_body.sendall(b"POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"chan")
        started = time.monotonic()
        assert slow_header.recv(1024) == b""  # closed without an answer (logged as 408)
        assert slow_body.recv(1024) == b""
        assert time.monotonic() - started < 4
        slow_header.close()
        slow_body.close()
        log = nginx.directory / "access.log"
        for line in ('"GET /realtime/slow HTTP/1.1" 408', '"POST /api/broadcast HTTP/1.1" 408'):
            assert wait_for(lambda: line in log.read_text(), timeout=5), log.read_text()  # noqa: B023

        # The body limit is the server's: 64 KiB reach it, one byte more is refused by nginx.
        def body(size: int) -> bytes:
            head = b'{"channel": "edge", "data": "'
            return head + b"x" * (size - len(head) - 2) + b'"}'

        status, answer = _post(nginx, body(64 * 1024))
        assert status == 200 and json.loads(answer)["channel"] == "edge", answer
        status, answer = _post(nginx, body(64 * 1024 + 1))
        assert status == 413 and b"nginx" in answer, answer

        # Over HTTP/2, streams of one connection count one by one: the third of three is refused.
        streams = CurlStreams(nginx, ["/realtime/edge-1", "/realtime/edge-2", "/realtime/edge-3"], tmp_path,
                              seconds=2)
        try:
            transfers = streams.finish()
        finally:
            streams.close()
        assert sorted((version, status) for version, status, _ in transfers) == [
            ("2", "200"), ("2", "200"), ("2", "429")], transfers
        assert sum(connects for _, _, connects in transfers) == 1

        # Over HTTP/1.1, connections: two streams open, a third request refused until one ends.
        def third() -> int:
            response = request(nginx.port, "/health")
            response.close()
            return response.status

        assert wait_for(lambda: third() == 200, timeout=5)  # the HTTP/2 streams above are over
        first, second = subscribe(nginx.port, "edge-a"), subscribe(nginx.port, "edge-b")
        try:
            assert wait_for(lambda: third() == 429, timeout=5)
        finally:
            first.response.close()
        try:
            assert wait_for(lambda: third() == 200, timeout=5)  # nginx saw the close and freed its slot
        finally:
            second.response.close()
    finally:
        nginx.stop()


def test_the_https_and_http_servers_proxy_alike() -> None:
    """Both servers of deploy/nginx.conf carry the same proxy settings and limits; only listen and TLS differ."""
    tls, plain = server_blocks(SITE.read_text())
    assert "listen 443 ssl http2;" in tls and "listen 80;" in plain
    tls_only = ("listen ", "ssl_", "add_header Strict-Transport-Security")
    assert [d for d in tls if not d.startswith(tls_only)] == [d for d in plain if not d.startswith(tls_only)]
