"""The README's commands, run as written against a fresh server: what a newcomer types must work.

Every command line in the README's ``sh`` blocks is taken from the file itself (so an edit there is tested
at once) and run with bash, its address pointed at a test server; streams (``curl -N``) are cut after a
few seconds, as a person would with Ctrl-C. The two install commands at the top are run by
tests/test_install.py (in fresh venvs) and by CI itself.

To reproduce by hand: start ``rover-stream serve`` in a fresh checkout and paste the README's commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need

from tests.wire_helpers import get_json, wait_for, ws_client_class

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ADDRESS = "127.0.0.1:8000"

pytestmark = pytest.mark.live


def commands() -> list[str]:
    """Every command of the README's sh blocks: continuation lines joined, trailing comments cut."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", "", block)
        for line in text.splitlines():
            line = re.sub(r"\s{2,}#.*$", "", line).strip()  # a comment after the command
            if line and not line.startswith("#"):
                found.append(line)
    return found


COMMANDS = commands()
CURLS = [c for c in COMMANDS if c.startswith("curl ")]


def test_every_command_is_covered_here() -> None:
    """A new kind of command in the README needs a test: this fails until it has one."""
    known = ("curl ", "wscat ", "npx wscat ", "rover-stream ", "export ", "pip install -e . && rover-stream serve",
             "scripts/test")
    assert [c for c in COMMANDS if not c.startswith(known)] == []
    assert len(CURLS) >= 30


@pytest.fixture(scope="module")
def demo(module_server: Any) -> Any:
    return module_server(app="wsgi:app", env={"ROVER_RETRY_MS": "500"})


def run_curl(command: str, port: int, folder: Path) -> tuple[int, bytes, str]:
    """Run a README curl line as written, against ``port``; an endless stream is cut after 3 s."""
    command = command.replace(ADDRESS, f"127.0.0.1:{port}").rstrip("&").strip()
    streaming = " -N " in f" {command} "
    extra = "-sS --fail-with-body --max-time " + ("3" if streaming else "120")
    full = command.replace("curl ", f"curl {extra} ", 1)
    result = subprocess.run(["bash", "-c", full], cwd=folder, capture_output=True, timeout=180)
    return result.returncode, result.stdout, result.stderr.decode(errors="replace")


@pytest.mark.parametrize("command", CURLS, ids=[re.sub(r"\W+", "-", c[5:70]) for c in CURLS])
def test_the_curl_tour_works_as_written(command: str, demo: Any, tmp_path: Path) -> None:
    need("curl")
    code, out, err = run_curl(command, demo.port, tmp_path)
    streaming = " -N " in f" {command} "
    assert code == 0 or (streaming and code == 28 and out), (code, err, out[:500])
    if streaming and "text/plain" not in command and "/stream/count" not in command:
        assert b"data:" in out or b"retry:" in out or b": ping" in out, out[:500]
    saved = sorted(p.name for p in tmp_path.iterdir())
    if "-OJ" in command or " -o " in command:
        assert saved, "nothing saved"
        for name in saved:
            head = (tmp_path / name).read_bytes()[:200]
            assert not head.startswith(b'{"error"'), (name, head)  # never a JSON error saved as the file
        expected = {"/csv": "data.csv", "/large-file": "large_file.bin", "/download/report.pdf": "report.pdf",
                    "/download/big.bin": "big.bin", "/stream/rover-image": "received_image.jpg"}
        for path, name in expected.items():
            if re.search(re.escape(path) + r"(\s|$)", command):
                assert name in saved, saved
    if command.endswith("/api/broadcast"):
        answer = json.loads(out)
        for event in answer["events"] if " -d '[" in command else [answer]:  # a batch answers each event
            assert set(event) >= {"id", "subscribers"}, answer
    if "/api/channels/" in command:
        assert set(json.loads(out)) >= {"subscribers", "last_id", "history"}, out


def test_the_resumable_download_continues_a_partial_file(demo: Any, tmp_path: Path) -> None:
    (command,) = [c for c in CURLS if " -C - " in c]
    code, _, err = run_curl(command, demo.port, tmp_path)
    assert code == 0, err
    whole = (tmp_path / "big.bin").read_bytes()
    (tmp_path / "big.bin").write_bytes(whole[: len(whole) // 3])  # as if the first try had broken off
    code, _, err = run_curl(command, demo.port, tmp_path)
    assert code == 0, err
    assert (tmp_path / "big.bin").read_bytes() == whole


def test_the_wscat_lines_reach_a_room(demo: Any) -> None:
    """wscat is a Node tool; the same URLs with a WebSocket client: typed lines reach the room."""
    urls = [re.search(r"ws://\S+?(?='|\s|$)", c).group(0) for c in COMMANDS if "wscat" in c]  # type: ignore[union-attr]
    assert urls
    for url in urls:
        url = url.replace(ADDRESS, f"127.0.0.1:{demo.port}")
        client = ws_client_class().connect(url, subprotocols=None)  # as wscat: no subprotocol, plain text
        try:
            client.send("hello from the README")
            deadline = time.monotonic() + 10
            while True:
                frame = client.receive(timeout=max(0.1, deadline - time.monotonic()))
                assert frame is not None and time.monotonic() < deadline, "no echo"
                if frame == "Message: hello from the README":
                    break
        finally:
            client.close()


def rover_stream_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_")}
    env["ROVER_URL"] = f"http://127.0.0.1:{port}"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def test_the_client_commands_work_as_written(demo: Any, tmp_path: Path) -> None:
    lines = [c for c in COMMANDS if c.startswith("rover-stream ") and not c.startswith("rover-stream serve")]
    assert {shlex.split(c)[1] for c in lines} >= {"listen", "publish", "chat", "download"}
    env = rover_stream_env(demo.port)
    listener = next(c for c in lines if c.startswith("rover-stream listen"))
    notices = tmp_path / "listen.err"
    with open(notices, "wb") as err_file:
        listen = subprocess.Popen(["bash", "-c", listener.split("|")[0] + " --max 1 --timeout 20"], cwd=tmp_path,
                                  env=env, stdout=subprocess.PIPE, stderr=err_file)
    try:
        for command in lines:
            if command.startswith("rover-stream listen"):
                continue
            if command.startswith("rover-stream chat"):
                result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, input=b"hello\n",
                                        capture_output=True, timeout=60)
            else:
                if command.startswith("rover-stream publish"):  # the listener is subscribed by now
                    assert wait_for(lambda: "listening" in notices.read_text(), 10), notices.read_text()
                result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                                        timeout=120)
            assert result.returncode == 0, (command, result.stderr[-2000:])
        out, _ = listen.communicate(timeout=30)
        assert listen.returncode == 0, notices.read_text()
        assert json.loads(out.splitlines()[0])["data"] == {"headline": "Landing confirmed"}
        # --resume names the file before asking (to find a partial one): after the URL, not the server
        assert (tmp_path / "large-file").stat().st_size == 32 * 1024 * 1024
    finally:
        listen.kill()


def test_the_production_commands_start_a_server(live_server: Any, redis_server: Any, tmp_path: Path) -> None:
    """The production block's exports and rover-stream serve, with its address and Redis pointed at the
    test's own."""
    block = [c for c in COMMANDS if c.startswith("export ")]
    assert block and any("rover-stream serve" == c for c in COMMANDS)
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = "\n".join(block).replace(ADDRESS, f"127.0.0.1:{port}").replace(
        "redis://127.0.0.1:6379/0", redis_server.url).replace("python -c", f"{sys.executable} -c")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["ROVER_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", f"{script}\nexec rover-stream serve"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                health = get_json(port, "/health")
            except OSError:
                time.sleep(0.2)
                continue
            pids.add(health["pid"])
            assert health["engine"] == "redis"
        assert '"level"' in log.read_text()  # ROVER_LOG_FORMAT=json
    finally:
        proc.terminate()
        proc.wait(30)
