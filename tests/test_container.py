"""Dockerfile and compose.yaml, built and run with podman: the server image (pip install ., a user without
privileges, /data), two workers sharing the hub through the redis service, nginx in front with
deploy/nginx-container.conf. Everything is checked from outside, through the ports compose.yaml publishes
on 127.0.0.1: /health, an event published with a token reaching SSE subscribers directly and through
nginx, a WebSocket room through nginx.

tests/containerlab.py makes the images compose.yaml starts from (no image registry is reachable from the
test machines) and holds every setting this machine needs and users do not. Cold (no images yet) the
module takes about two minutes; with the images kept from an earlier run, about one.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import ROOT, need
from containerlab import SERVER_IMAGE, Lab, PodmanError
from wire_helpers import Publisher, subscribe, ws_client_class

import rover_stream
from tests.nginxconf import server_blocks

PROJECT = "rover-stream-test"
START_TIMEOUT = 60  # seconds for the stack to answer once its containers run
CHANNEL = "container-news"
MAX_SUBSCRIBERS = 24


def stack_test(test: Any) -> Any:
    """The marks of a test that runs the stack: it builds images and starts containers (the first test's
    timeout covers the module's builds)."""
    for mark in (pytest.mark.container, pytest.mark.live, pytest.mark.timeout(480)):
        test = mark(test)
    return test


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    lab: Lab
    secret: str
    server_port: int   # the server container's 8000, published on 127.0.0.1
    nginx_port: int    # nginx's 80, published on 127.0.0.1
    timings: dict[str, float] = field(default_factory=dict)

    def port(self, via: str) -> int:
        return self.server_port if via == "server" else self.nginx_port

    def token(self, **claims: Any) -> str:
        return rover_stream.mint_token(self.secret, **claims)

    def exec(self, service: str, *command: str) -> str:
        return self.lab.podman("exec", self.lab.container(service), *command).stdout

    def diagnostics(self) -> str:
        return "\n".join(f"--- {service} logs:\n{self.lab.logs(service, size)}"
                         for service, size in (("redis", 1500), ("nginx", 1500), ("server", 5000)))


def _get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET",
         body: bytes | None = None, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _wait_healthy(ports: tuple[int, ...], workers: int, deadline: float) -> None:
    """Until /health answers through every port, and every worker has reported Redis connected (each worker
    connects on its own: a worker's first answers may say "not connected yet")."""
    healthy: dict[int, bool] = {}  # pid -> its latest answer was healthy
    answered: set[int] = set()     # ports that gave a healthy answer
    last: object = None
    while time.monotonic() < deadline:
        for port in ports:
            try:
                status, _, body = _get(port, "/health", timeout=2)
                last = (port, status, body[:300])
                health = json.loads(body) if status == 200 else {}
            except (OSError, ValueError) as exc:
                last, health = (port, exc), {}
            if "pid" in health:
                healthy[health["pid"]] = health.get("engine") == "redis" and health.get("redis") == "ok"
                if healthy[health["pid"]]:
                    answered.add(port)
        if answered == set(ports) and sum(healthy.values()) >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError(f"ports {ports}: not every worker healthy in time (workers: {healthy}, "
                       f"last answer: {last!r})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("podman", "podman-compose", "mmdebstrap", "iptables"):  # iptables: netavark's NAT rules
        need(tool)
    if os.geteuid() != 0:
        pytest.skip("the container test runs podman as root, as CI does")
    lab = Lab(tmp_path_factory.mktemp("containers"), project=PROJECT)
    env = {"ROVER_SECRET_KEY": secrets.token_urlsafe(48), "ROVER_WORKERS": "2", "ROVER_NGINX_ADDRESS": "127.0.0.1",
           "ROVER_SERVER_PORT": str(_free_port()), "ROVER_NGINX_PORT": str(_free_port())}
    clashes = {name: value for name, value in lab.dotenv().items() if name in env and value != env[name]
               and name not in ("ROVER_SECRET_KEY", "ROVER_SERVER_PORT", "ROVER_NGINX_PORT")}
    if clashes:  # the secret and the ports are read back from the containers; these would change the test
        pytest.fail(f"{ROOT / '.env'} sets {clashes}, which podman-compose would use instead of {env}")
    started = time.monotonic()
    try:
        lab.down(env)  # whatever a killed run left
        lab.build(env)
        lab.up(env)
        # podman-compose 1.0.3 lets a .env beside compose.yaml win over the environment: ask the containers.
        running = Stack(lab, lab.container_env("server")["ROVER_SECRET_KEY"], lab.published_port("server", 8000),
                        lab.published_port("nginx", 80))
        deadline = time.monotonic() + START_TIMEOUT
        try:
            _wait_healthy((running.server_port, running.nginx_port), int(env["ROVER_WORKERS"]), deadline)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{running.diagnostics()}") from None
    except PodmanError as exc:
        lab.down(env)
        pytest.fail(f"{exc}\n(every podman command's output: {lab.log_path})")
    except BaseException:
        lab.down(env)
        raise
    running.timings = {**lab.timings, "stack ready": time.monotonic() - started}
    print("container stack: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in running.timings.items()))
    try:
        yield running
    finally:
        lab.down(env)
        left = lab.containers()
        assert not left, f"containers left after the test: {[c.get('Names') for c in left]}"


@stack_test
@pytest.mark.parametrize("via", ["server", "nginx"])
def test_health_answers_json_with_the_redis_engine(stack: Stack, via: str) -> None:
    status, headers, body = _get(stack.port(via), "/health")
    assert status == 200 and headers["Content-Type"].startswith("application/json"), (status, headers)
    health = json.loads(body)
    assert health["status"] == "healthy" and health["engine"] == "redis" and health["redis"] == "ok", health
    if via == "nginx":
        assert headers["Server"].startswith("nginx") and headers.get("X-Request-ID"), headers


def _subscribed_pids(stack: Stack) -> set[int]:
    """The workers (pids) that have opened a stream of CHANNEL, from the server's JSON log lines."""
    pids = set()
    for line in stack.lab.logs("server", size=10**7).splitlines():
        if '"stream open"' in line and CHANNEL in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("path") == f"/realtime/{CHANNEL}":
                pids.add(int(entry["pid"]))
    return pids


@stack_test
def test_an_event_published_with_a_token_reaches_every_subscriber_directly_and_through_nginx(stack: Stack) -> None:
    # Connections each way, until both workers have subscribers: each event then goes through Redis.
    readers = {f"{via}-{i}": subscribe(stack.port(via), CHANNEL) for via in ("server", "nginx") for i in range(2)}
    token = stack.token(publish=["container-*"])
    try:
        while len(pids := _subscribed_pids(stack)) < 2 and len(readers) < MAX_SUBSCRIBERS:
            via = ("server", "nginx")[len(readers) % 2]
            readers[f"{via}-{len(readers)}"] = subscribe(stack.port(via), CHANNEL)
        print(f"{len(readers)} subscribers, on workers {sorted(pids)}")
        assert len(pids) == 2, f"{len(readers)} subscribers, all on worker {pids}"
        for via in ("nginx", "server"):
            publish = Publisher(stack.port(via), token=token)
            try:
                sent = time.monotonic()
                answer = publish(CHANNEL, {"from": via}, event="headline")
                assert answer["subscribers"] >= 1, answer
                for name, reader in readers.items():
                    event = reader.events(1, timeout=5)[0]
                    assert (event.event, json.loads(event.data), event.last_event_id) == ("headline", {"from": via},
                                                                               answer["id"]), name
                assert time.monotonic() - sent < 3, "an event was held back (nginx buffering?)"
            finally:
                publish.close()
    finally:
        for reader in readers.values():
            reader.response.close()


@stack_test
@pytest.mark.parametrize("via", ["server", "nginx"])
def test_publishing_without_a_token_is_refused(stack: Stack, via: str) -> None:
    status, _, body = _get(stack.port(via), "/api/broadcast", {"Content-Type": "application/json"}, "POST",
                           json.dumps({"channel": CHANNEL, "data": "anyone?"}).encode())
    assert status == 401 and json.loads(body)["error"] == "token_required", body


@stack_test
def test_a_websocket_room_through_nginx(stack: Stack) -> None:
    client = ws_client_class().connect(f"ws://127.0.0.1:{stack.nginx_port}/ws/comms/containers?user=ada")
    try:
        assert json.loads(client.receive(5))["type"] == "history"
        client.send("hello from outside the containers")
        frames: list[dict[str, Any]] = []
        while not any(frame.get("type") == "message" for frame in frames):
            raw = client.receive(5)
            assert raw is not None, frames
            frames.append(json.loads(raw))
        assert frames[-1]["text"] == "hello from outside the containers" and frames[-1]["user"] == "ada"
    finally:
        client.close()


@stack_test
def test_the_server_runs_two_workers_unprivileged_and_writes_to_its_volume(stack: Stack) -> None:
    assert stack.exec("server", "id", "-u").strip() == "10001"
    # gunicorn is PID 1; its workers are its children.
    parents = stack.exec("server", "python3", "-c", "import os; print(*(open(f'/proc/{p}/stat').read()"
                         ".rsplit(')', 1)[1].split()[1] for p in os.listdir('/proc') if p.isdigit()))").split()
    assert parents.count("1") == 2, parents
    # ROVER_DATA_DIR=/data, the volume: the demo's files are generated there, and served from there.
    listing = stack.exec("server", "ls", "/data/uploads").split()
    assert "report.pdf" in listing, listing
    status, headers, body = _get(stack.nginx_port, "/download/report.pdf", {"Range": "bytes=0-3"})
    assert (status, body) == (206, b"%PDF"), (status, headers)
    # The image's HEALTHCHECK passes.
    assert stack.lab.podman("healthcheck", "run", stack.lab.container("server"), check=False).returncode == 0


@stack_test
def test_the_image_refuses_an_open_hub_and_mints_tokens(stack: Stack) -> None:
    run = ("run", "--rm", "--network", "none", SERVER_IMAGE)
    refused = stack.lab.podman(*run, check=False, timeout=60)
    assert refused.returncode != 0 and "ROVER_SECRET_KEY" in refused.stdout + refused.stderr, refused
    minted = stack.lab.podman("run", "--rm", "--network", "none", "-e", f"ROVER_SECRET_KEY={stack.secret}",
                              SERVER_IMAGE, "token", "--publish", CHANNEL, timeout=60).stdout.strip()
    status, _, body = _get(stack.nginx_port, "/api/broadcast", {"Content-Type": "application/json",
                                                                "Authorization": f"Bearer {minted}"}, "POST",
                           json.dumps({"channel": CHANNEL, "data": "minted in the image"}).encode())
    assert status == 200, body


def test_the_container_nginx_config_keeps_in_step_with_deploy_nginx_conf() -> None:
    """deploy/nginx-container.conf's server proxies exactly as deploy/nginx.conf's plain-HTTP server does."""
    deploy = [block for block in server_blocks((ROOT / "deploy" / "nginx.conf").read_text())
              if "listen 80;" in block]
    (container,) = server_blocks((ROOT / "deploy" / "nginx-container.conf").read_text())
    assert len(deploy) == 1, "deploy/nginx.conf has no single plain-HTTP server (listen 80;)"
    own = ("listen ", "server_name ")
    assert [d for d in container if not d.startswith(own)] == [d for d in deploy[0] if not d.startswith(own)]
