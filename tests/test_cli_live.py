"""The ``rover-stream`` client commands as users run them, against real servers: listen (readable and
--json, several channels, 204, giving up, across a server restart on Redis without a gap or a duplicate),
publish, stats, token, download (an interrupted transfer resumed byte for byte; a changed file started
over), and chat between two users, each in a pseudo-terminal, typing while messages arrive."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from rover_stream.cli import main
from rover_stream.client import Client, ConnectionFailed, RoomClient
from tests.conftest import LiveServer
from tests.test_client import Scripted, scripted

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-tests-secret-" + "x" * 32


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command: this checkout's package, none of the caller's ROVER_* client settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROVER_URL", "ROVER_TOKEN", "ROVER_SECRET_KEY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rover_stream.cli", *args], capture_output=True, text=True,
                          env=env or cli_env(), cwd=cwd, timeout=timeout)


class Running:
    """A command running in the background; its stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "rover_stream.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=cwd)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._news: queue.Queue[str] = queue.Queue()
        self._threads = [threading.Thread(target=self._pump, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            self._news.put(line)

    def wait_for_stderr(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stderr):
            assert time.monotonic() < deadline and self.proc.poll() is None, (
                f"{text!r} not on stderr: {self.stderr}, stdout: {self.stdout}")
            try:
                self._news.get(timeout=0.05)
            except queue.Empty:
                pass

    def wait(self, timeout: float = 20) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.wait(5)


# -- without a server --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["serve"], ["token"], ["listen"], ["publish"], ["chat"], ["download"],
                                     ["stats"]])
def test_every_command_has_help_with_the_exit_codes(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert f"usage: rover-stream {' '.join(command)}".rstrip() in out
    assert "exit codes:" in out and "130" in out
    if command and command[0] not in ("serve", "token"):
        assert "--url" in out and "ROVER_URL" in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["listen"], id="listen-without-target"),
        pytest.param(["listen", "http://h/realtime/a", "b"], id="url-and-channel"),
        pytest.param(["download", "/x", "--limit-rate", "fast"], id="bad-rate"),
        pytest.param(["token", "--expires", "soon", "-p", "a", "--secret", SECRET], id="bad-duration"),
        pytest.param(["token", "--secret", SECRET], id="token-for-nothing"),
        pytest.param(["token", "-p", "a", "--secret", "short"], id="short-secret"),
        pytest.param(["publish", "news"], id="publish-without-data"),
    ],
)
def test_bad_usage_exits_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROVER_SECRET_KEY", raising=False)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    assert code == 2


def test_serve_refuses_a_bad_redis_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ROVER_REDIS_URL", "")  # restored after the test: serve writes the option there
    assert main(["serve", "--redis-url", "localhost:6379"]) == 2
    assert "ROVER_REDIS_URL" in capsys.readouterr().err


def test_token_for_channels_rooms_and_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "-p", "news", "-s", "news", "--room", "private-ops", "--expires", "2h", "--subject",
                 "ada", "--secret", SECRET]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["publish"] == ["news"] and claims["subscribe"] == ["news", "private-ops"]
    assert claims["exp"] - claims["iat"] == 7200 and claims["sub"] == "ada" and "admin" not in claims


def test_listen_stops_on_204_and_refuses_what_is_not_an_event_stream() -> None:
    with scripted(Scripted((b"retry: 0\nid: 1\ndata: one\n\n",))) as server:  # then 204
        result = cli("listen", server.url + "/s", "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["data"] for line in result.stdout.splitlines()] == ["one"]
    assert "204 No Content" in result.stderr and "the server ended the stream; reconnecting" in result.stderr
    with scripted(Scripted(head=b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n")) as server:
        result = cli("listen", server.url + "/page")
    assert result.returncode == 1 and "not 'text/event-stream'" in result.stderr


def test_listen_gives_up_with_exit_3() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = cli("listen", "news", "--url", url, "--retries", "0")
    assert result.returncode == 3 and "connection refused" in result.stderr
    assert "gave up after 1 attempt." in result.stderr
    result = cli("publish", "news", "1", "--url", url)
    assert result.returncode == 3 and "Could not reach" in result.stderr


@pytest.mark.live
def test_serve_with_redis_url(tmp_path: Path, redis_server: Any) -> None:
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rover_stream.cli", "serve", "--bind", "127.0.0.1:0",
                                 "--workers", "2", "--redis-url", redis_server.url],
                                env=cli_env(ROVER_DATA_DIR=str(tmp_path)), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (match := re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        health = None
        while health is None:
            try:
                health = Client(match.group(1)).health()
            except ConnectionFailed:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert health["engine"] == "redis"
        assert log.read_text().count("Booting worker") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


# -- against an open server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(module_server: Any) -> Any:
    return module_server(app="wsgi:app", env={"ROVER_RETRY_MS": "300"})


def publish(server: Any, channel: str, data: str, *extra: str) -> dict[str, Any]:
    result = cli("publish", channel, data, "--json", "--url", server.url, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.live
def test_listen_json_output_parses_back_to_what_was_published(server: Any) -> None:
    listener = Running("listen", "cli-json", "--json", "--max", "3", "--url", server.url)
    try:
        listener.wait_for_stderr("listening to")
        answers = [publish(server, "cli-json", '{"a": [1, "é"]}'), publish(server, "cli-json", "plain text"),
                   publish(server, "cli-json", "42", "--event", "number")]
        assert listener.wait() == 0
    finally:
        listener.stop()
    assert [json.loads(line) for line in listener.stdout] == [
        {"event": "message", "id": answers[0]["id"], "data": {"a": [1, "é"]}, "channel": "cli-json"},
        {"event": "message", "id": answers[1]["id"], "data": "plain text", "channel": "cli-json"},
        {"event": "number", "id": answers[2]["id"], "data": 42, "channel": "cli-json"},
    ]


@pytest.mark.live
def test_listen_readable_lines_for_several_channels(server: Any) -> None:
    listener = Running("listen", "cli-a", "cli-b", "--max", "3", "--url", server.url)
    try:
        listener.wait_for_stderr("listening to")
        publish(server, "cli-a", "hello")
        publish(server, "cli-b", '{"n": 2}', "--event", "tick")
        publish(server, "cli-a", "two\nlines \x1b[2J")
        assert listener.wait() == 0
    finally:
        listener.stop()
    first, second, third, fourth = listener.stdout
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] cli-a #\S+ message: hello", first), first
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] cli-b #\S+ tick: \{\"n\": 2\}", second), second
    assert third.endswith(" message: two") and fourth == "    lines \\x1b[2J"  # escapes shown, not obeyed


@pytest.mark.live
def test_listen_timeout_and_last_event_id(server: Any) -> None:
    first = publish(server, "cli-replay", "1")
    publish(server, "cli-replay", "2")
    started = time.monotonic()
    result = cli("listen", "cli-replay", "--json", "--url", server.url, "--last-event-id", first["id"],
                 "--timeout", "1")
    assert result.returncode == 0 and 1 <= time.monotonic() - started < 10
    assert [json.loads(line)["data"] for line in result.stdout.splitlines()] == [2]


@pytest.mark.live
def test_listen_interrupted_exits_130(server: Any) -> None:
    listener = Running("listen", "cli-interrupted", "--url", server.url)
    try:
        listener.wait_for_stderr("listening to")
        listener.proc.send_signal(signal.SIGINT)
        assert listener.wait() == 130
    finally:
        listener.stop()


@pytest.mark.live
def test_publish_string_stdin_and_errors(server: Any) -> None:
    listener = Running("listen", "cli-pub", "--json", "--max", "2", "--url", server.url)
    try:
        listener.wait_for_stderr("listening to")
        result = subprocess.run([sys.executable, "-m", "rover_stream.cli", "publish", "cli-pub", "-", "--url",
                                 server.url], input="from stdin\n", capture_output=True, text=True, env=cli_env(),
                                timeout=20)
        assert result.returncode == 0 and re.fullmatch(r"published on cli-pub as #\S+ \(1 subscriber\)\n",
                                                       result.stdout), result.stdout
        publish(server, "cli-pub", "[1, 2]", "--string")
        assert listener.wait() == 0
    finally:
        listener.stop()
    assert [json.loads(line)["data"] for line in listener.stdout] == ["from stdin\n", [1, 2]]
    bad = cli("publish", "bad name", "1", "--url", server.url)
    assert bad.returncode == 1 and "Invalid channel name 'bad name'" in bad.stderr and "400" in bad.stderr


@pytest.mark.live
def test_stats(server: Any) -> None:
    result = cli("stats", "--url", server.url)
    assert result.returncode == 0 and re.search(r"^active_streams: \d+$", result.stdout, re.M), result.stdout
    stats = json.loads(cli("stats", "--json", "--url", server.url).stdout)
    assert {"active_streams", "total_bytes_streamed", "avg_throughput_mbps", "connection_errors"} <= set(stats)


# -- download ----------------------------------------------------------------------------------------------

def wait_for_size(path: Path, size: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        assert time.monotonic() < deadline, f"{path} never reached {size} bytes"
        time.sleep(0.02)


@pytest.mark.live
def test_download_resumed_after_an_interruption_is_byte_identical(server: Any, tmp_path: Path) -> None:
    original = os.urandom(6 * 1024 * 1024)
    (server.uploads / "cli-big.bin").write_bytes(original)
    out = tmp_path / "big.bin"
    first = Running("download", "/download/cli-big.bin", "-o", str(out), "--limit-rate", "4M", "--url",
                    server.url)
    wait_for_size(out, 512 * 1024)
    first.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait() == 130
    assert "run again with --resume" in "\n".join(first.stderr)
    partial = out.stat().st_size
    assert 0 < partial < len(original)
    assert json.loads((tmp_path / "big.bin.part.json").read_text())["size"] == len(original)
    result = cli("download", "/download/cli-big.bin", "-o", str(out), "--resume", "--progress", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert f"resumed at byte {partial}" in result.stderr and "100.0%" in result.stderr
    assert "not checked" not in result.stderr  # resumed with If-Range against the saved ETag
    assert result.stdout.strip() == str(out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(original).digest()
    assert not (tmp_path / "big.bin.part.json").exists()


@pytest.mark.live
def test_download_of_a_file_changed_since_starts_over(server: Any, tmp_path: Path) -> None:
    source = server.uploads / "cli-changing.bin"
    source.write_bytes(os.urandom(4 * 1024 * 1024))
    out = tmp_path / "changing.bin"
    first = Running("download", "/download/cli-changing.bin", "-o", str(out), "--limit-rate", "4M", "--url",
                    server.url)
    wait_for_size(out, 256 * 1024)
    first.proc.send_signal(signal.SIGTERM)  # killed outright: the partial file and its sidecar stay
    first.wait()
    newer = os.urandom(3 * 1024 * 1024)
    source.write_bytes(newer)
    result = cli("download", "/download/cli-changing.bin", "-o", str(out), "--resume", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert "downloaded it again" in result.stderr
    assert out.read_bytes() == newer


@pytest.mark.live
def test_download_names_the_file_as_the_server_does(server: Any, tmp_path: Path) -> None:
    (server.uploads / "cli-report.txt").write_text("report\n")
    result = cli("download", f"{server.url}/download/cli-report.txt", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "cli-report.txt", result.stderr
    assert (tmp_path / "cli-report.txt").read_text() == "report\n"
    again = cli("download", f"{server.url}/download/cli-report.txt", "--resume", cwd=tmp_path)
    assert again.returncode == 0 and "complete already" in again.stderr
    missing = cli("download", "/download/cli-nothing.bin", "--url", server.url, cwd=tmp_path)
    assert missing.returncode == 1 and "No file named 'cli-nothing.bin'" in missing.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "cli-report.txt"]


# -- chat in a terminal ------------------------------------------------------------------------------------

class Terminal:
    """A command in a pseudo-terminal: the keys typed to it, and everything it printed."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "rover_stream.cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=cli_env(TERM="xterm"), start_new_session=True)
        os.close(slave)
        self.output = ""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program exited and the terminal is gone
            return False
        self.output += data.decode("utf-8", "replace")
        return bool(data)

    def expect(self, text: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline and self._read(0.05), f"{text!r} not in {self.output!r}"

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float = 5) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        while self._read(0):
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.mark.live
def test_chat_between_two_users_in_terminals(server: Any) -> None:
    ada = Terminal("chat", "cli-room", "--user", "ada", "--url", server.url)
    grace = None
    try:
        ada.expect("* in cli-room: ada")
        ada.expect("ada> ")
        grace = Terminal("chat", "cli-room", "--user", "grace", "--url", server.url)
        grace.expect("* in cli-room: ada, grace")
        ada.expect("* grace joined")
        ada.type("hel")  # ada is in the middle of a line...
        ada.expect("ada> hel")
        grace.type("hello ada\r")
        # ...when grace's message comes: it is printed above, and ada's prompt comes back with her input
        ada.expect("grace: hello ada\r\nada> hel")
        ada.type("lo\x7fo ✓\r")  # with a Backspace
        grace.expect("ada: hello ✓")
        ada.expect("ada: hello ✓")
        grace.type("\x03")  # Ctrl-C: grace leaves
        assert grace.wait() == 0
        assert "* you left cli-room" in grace.output
        ada.expect("* grace left")
        ada.type("\x04")  # Ctrl-D on an empty line: ada leaves
        assert ada.wait() == 0
    finally:
        ada.close()
        if grace is not None:
            grace.close()


@pytest.mark.live
def test_chat_without_a_terminal_sends_each_line_of_stdin(server: Any) -> None:
    with RoomClient(server.url, "cli-pipe", "observer") as observer:
        assert [observer.receive(2)["type"] for _ in range(3)] == ["history", "presence", "join"]  # type: ignore[index]
        result = subprocess.run([sys.executable, "-m", "rover_stream.cli", "chat", "cli-pipe", "--user", "ci",
                                 "--url", server.url], input="deploy done\n\nsecond ✓\n", capture_output=True,
                                text=True, env=cli_env(), timeout=20)
        assert result.returncode == 0, result.stderr
        assert "* in cli-pipe: ci, observer" in result.stdout and "* you left cli-pipe" in result.stdout
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "leave":
            frame = observer.receive(5)
            assert frame is not None, frames
            frames.append(frame)
    assert [(f["type"], f["user"], f.get("text")) for f in frames] == [
        ("join", "ci", None), ("message", "ci", "deploy done"), ("message", "ci", "second ✓"), ("leave", "ci", None)]


# -- against a server with a secret ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(module_server: Any) -> Any:
    return module_server(app="wsgi:app", env={"ROVER_SECRET_KEY": SECRET})


def mint(*args: str) -> str:
    result = cli("token", *args, env=cli_env(ROVER_SECRET_KEY=SECRET))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.live
def test_tokens_from_the_token_command_open_publish_listen_and_stats(secured: Any) -> None:
    url = ["--url", secured.url]
    refused = cli("publish", "private-cli", "1", *url)
    assert refused.returncode == 1 and "401" in refused.stderr and "bearer token is required" in refused.stderr
    token = mint("-p", "private-cli", "-s", "private-cli", "--expires", "5m")
    listener = Running("listen", "private-cli", "--json", "--max", "1", *url, env=cli_env(ROVER_TOKEN=token))
    try:
        listener.wait_for_stderr("listening to")
        assert cli("publish", "private-cli", '"secret plans"', "--token", token, *url).returncode == 0
        assert listener.wait() == 0
    finally:
        listener.stop()
    assert json.loads(listener.stdout[0])["data"] == "secret plans"
    not_admin = cli("stats", "--token", token, *url)
    assert not_admin.returncode == 1 and "403" in not_admin.stderr and "not an admin token" in not_admin.stderr
    assert cli("stats", "--token", mint("--admin"), *url).returncode == 0


# -- across a restart --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # type: ignore[no-any-return]


def post_until_accepted(port: int, channel: str, data: Any, timeout: float = 30) -> None:
    """POST one event; while the server restarts (refused, reset before an answer, 503), try again."""
    body = json.dumps({"channel": channel, "data": data})
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("POST", "/api/broadcast", body, {"Content-Type": "application/json",
                                                                "Connection": "close"})
            response = connection.getresponse()
            if response.status == 200:
                return
            assert response.status == 503, response.read()
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            pass
        finally:
            connection.close()
        assert time.monotonic() < deadline, f"event {data} was not accepted in {timeout} s"
        time.sleep(0.05)


@pytest.mark.live
def test_listen_resumes_across_a_server_restart_without_gap_or_duplicate(tmp_path: Path, redis_server: Any) -> None:
    """The server runs on Redis, whose history outlives it. A publisher posts 0..59 while the server is
    stopped (SIGTERM) and started again; ``listen --json`` must print exactly 0..59."""
    total, port = 60, free_port()
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_REDIS_URL": redis_server.url, "ROVER_RETRY_MS": "300",
           "ROVER_SHUTDOWN_RETRY_MS": "300"}
    first = LiveServer(tmp_path, app="wsgi:app", env=env)
    second = None
    listener = Running("listen", "cli-seq", "--json", "--max", str(total), "--url", first.url, "--timeout", "45")
    try:
        listener.wait_for_stderr("listening to")
        posted: list[int] = []

        def publish_all() -> None:
            for number in range(total):
                post_until_accepted(port, "cli-seq", number)
                posted.append(number)
                time.sleep(0.02)

        publisher = threading.Thread(target=publish_all, daemon=True)
        publisher.start()
        deadline = time.monotonic() + 10
        while len(posted) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.stop()
        second = LiveServer(tmp_path, app="wsgi:app", env=env)
        publisher.join(30)
        assert posted == list(range(total))
        assert listener.wait(30) == 0, listener.stderr
    finally:
        listener.stop()
        first.stop()
        if second is not None:
            second.stop()
    events = [json.loads(line) for line in listener.stdout]
    assert [e["data"] for e in events] == list(range(total)), "a gap or a duplicate"
    assert {e["event"] for e in events} == {"message"}  # no reset: the history covered the outage
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(set(ids))
    notices = "\n".join(listener.stderr)
    assert "the server is shutting down" in notices
    assert re.search(r"reconnected after \d+\.\d s \(resuming after id \d+-\d+\)", notices), notices
