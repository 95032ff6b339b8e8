"""rover-stream.js, the browser client, in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) against gunicorn: served under the extension's prefix, a subscriber and a room member that come
back from a server restart without losing anything, resets reported, tokens renewed, the README's example.

The pages are a blank page of the test app (tests/live_apps/js_client_app.py: rover_stream under ``/rt``)
that imports the module from the server, as a site's own pages would. To try it by hand: ``cd
tests/live_apps && rover-stream serve --app js_client_app:app``, open http://127.0.0.1:8000/ and, in the
console, ``rs = await import("/rt/rover-stream.js")``.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_SERVICES, ROOT, LiveServer, need
from flask import Flask

import rover_stream as rs
from rover_stream.client import RoomClient
from tests.wire_helpers import Publisher

PREFIX = "/rt"
APP = "js_client_app:app"
SECRET = "s" * 40
LIBRARY = ROOT / "rover_stream" / "js" / "rover-stream.js"
README = (ROOT / "README.md").read_text()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
#: What the browser logs while a server restarts or refuses a token: expected, not a failure.
EXPECTED_ERRORS = ("request failed", "ERR_CONNECTION_REFUSED", "503 (SERVICE UNAVAILABLE)", "401 (UNAUTHORIZED)",
                   "Unexpected response code: 503", "HTTP Authentication failed")
QUIET = {"ROVER_METRICS_INTERVAL": "0"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = need("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRE_SERVICES:
            pytest.fail("playwright is not installed (pip install -e '.[test]')")
        pytest.skip("playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(module_server: Any) -> Any:
    """The test app, rover_stream under /rt."""
    return module_server(app=APP, env=QUIET)


class ClientPage:
    """A blank page of the server's origin with rover-stream.js imported as ``window.rs``. Records console
    errors and failed requests (``unexpected()``: those a restart or a refused token do not explain)."""

    def __init__(self, browser: Any, url: str, prefix: str | None = PREFIX) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.logged: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.goto(url + "/")
        if prefix is not None:
            self.page.evaluate("async (url) => { window.rs = await import(url); }", f"{prefix}/rover-stream.js")

    def _console(self, message: Any) -> None:
        (self.errors if message.type == "error" else self.logged).append(message.text)

    def run(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def wait(self, condition: str, timeout: float = 10) -> None:
        self.page.wait_for_function(condition, timeout=timeout * 1000)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(known in e for known in EXPECTED_ERRORS)]

    def close(self) -> None:
        self.context.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def frames_until(member: RoomClient, predicate: Any, timeout: float = 10) -> dict[str, Any]:
    """The first frame ``member`` receives that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = member.receive(timeout=max(0.05, deadline - time.monotonic()))
        if frame is not None and predicate(frame):
            return frame
    raise AssertionError(f"no such frame within {timeout} s")


# -- served by the extension ----------------------------------------------------------------------------------

def test_the_module_is_served_at_the_root_and_under_a_prefix_with_an_etag() -> None:
    prefixed = Flask("host")
    rs.RoverStream(prefixed, url_prefix=PREFIX, config={"ROVER_METRICS_INTERVAL": 0})
    for app, path in ((rs.create_app({"ROVER_METRICS_INTERVAL": 0}), "/rover-stream.js"),
                      (prefixed, f"{PREFIX}/rover-stream.js")):
        client = app.test_client()
        answer = client.get(path)
        assert answer.status_code == 200 and answer.data == LIBRARY.read_bytes()
        assert answer.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert answer.headers["Cache-Control"] == "no-cache" and answer.headers["ETag"]
        again = client.get(path, headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status_code == 304 and again.data == b""
    assert prefixed.test_client().get("/rover-stream.js").status_code == 404  # the host's own URL space


@pytest.mark.live
def test_gunicorn_serves_the_module_under_the_prefix_and_chromium_imports_it(browser: Any, server: Any) -> None:
    status, headers, body = fetch(f"{server.url}{PREFIX}/rover-stream.js")
    assert status == 200 and body == LIBRARY.read_bytes()
    assert headers["Content-Type"] == "text/javascript; charset=utf-8" and headers["Cache-Control"] == "no-cache"
    assert fetch(f"{server.url}{PREFIX}/rover-stream.js", {"If-None-Match": headers["ETag"]})[0] == 304
    page = ClientPage(browser, server.url)
    try:
        exported = page.run("() => Object.keys(window.rs).sort()")
        assert exported == ["RoomClient", "RoverStreamError", "Subscription", "joinRoom", "subscribe"]
        assert page.errors == []
    finally:
        page.close()


# -- subscriptions --------------------------------------------------------------------------------------------

@pytest.mark.live
def test_handlers_get_each_event_by_name_with_its_channel(browser: Any, server: Any) -> None:
    """Several channels on one EventSource: each event's data is unwrapped and its channel told; events
    without a name go to ``message``; text that is not JSON stays text."""
    page = ClientPage(browser, server.url)
    publish = Publisher(server.port, prefix=PREFIX)
    try:
        page.run("""() => {
            window.got = [];
            const keep = (data, event) => window.got.push([event.channel, event.type, data, event.id]);
            window.feed = rs.subscribe(["alpha", "beta"], { message: keep, tick: keep },
                                       { onStateChange: (state) => { window.state = state; } });
        }""")
        page.wait("window.state === 'open'")
        publish("alpha", {"n": 1})
        publish("beta", "plain text", event="tick")
        publish("beta", {"ignored": True}, event="unhandled")
        publish("alpha", [2], event="tick")
        page.wait("window.got.length === 3")
        got = page.run("window.got")
        assert [row[:3] for row in got] == [["alpha", "message", {"n": 1}], ["beta", "tick", "plain text"],
                                            ["alpha", "tick", [2]]]
        assert all(re.fullmatch(r"alpha:\S+,beta:\S+", row[3]) for row in got)  # the cursor over both
        assert page.run("window.feed.lastEventId") == got[-1][3]
        page.run("window.feed.close()")
        assert page.run("window.state") == "closed"
        assert page.unexpected() == []  # closing the EventSource aborts its request: that is all
    finally:
        publish.close()
        page.close()


@pytest.mark.live
def test_a_subscriber_survives_a_server_restart_without_a_gap(browser: Any, tmp_path: Path) -> None:
    port = free_port()
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_RETRY_MS": "500", **QUIET}
    first = LiveServer(tmp_path, app=APP, env=env)
    second = None
    page = ClientPage(browser, first.url)
    publish = Publisher(port, prefix=PREFIX)
    try:
        page.run("""() => {
            window.got = []; window.states = [];
            window.feed = rs.subscribe("numbers", { count: (data) => window.got.push(data.n) },
                                       { onStateChange: (state) => window.states.push(state) });
        }""")
        page.wait("window.states.includes('open')")
        for n in range(1, 11):
            publish("numbers", {"n": n}, event="count")
        page.wait("window.got.length === 10")
        first.stop()  # SIGTERM: the stream ends with its final event
        page.wait("window.feed.state !== 'open'")
        publish.close()
        second = LiveServer(tmp_path, app=APP, env=env)
        publish = Publisher(port, prefix=PREFIX)
        for n in range(11, 21):  # published whether or not the page is back yet
            publish("numbers", {"n": n}, event="count")
            time.sleep(0.05)
        page.wait("window.got.length >= 20", timeout=15)
        page.page.wait_for_timeout(300)  # nothing more comes: no duplicate
        assert page.run("window.got") == list(range(1, 21))
        assert page.run("window.feed.state") == "open"
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.live
def test_a_reset_reaches_the_callback_with_its_reason_and_what_was_lost(browser: Any, live_server: Any) -> None:
    """The history holds 5 events; a client resuming after the first of 10 has lost 4 of them."""
    server = live_server(app=APP, env={"ROVER_HISTORY_SIZE": "5", **QUIET})
    publish = Publisher(server.port, prefix=PREFIX)
    page = ClientPage(browser, server.url)
    try:
        ids = [publish("log", {"n": n}, event="line")["id"] for n in range(1, 11)]
        page.run("""(lastEventId) => {
            window.got = []; window.resets = [];
            window.feed = rs.subscribe("log", { line: (data) => window.got.push(data.n) },
                                       { lastEventId, onReset: (reset) => window.resets.push(reset) });
        }""", ids[0])
        page.wait("window.got.length === 5")
        assert page.run("window.resets") == [
            {"channel": "log", "reason": "expired", "lastEventId": ids[0], "missed": 4, "replayed": 5}]
        assert page.run("window.got") == [6, 7, 8, 9, 10]
        publish("log", {"n": 11}, event="line")
        page.wait("window.got.length === 6")
        assert page.run("window.got[5]") == 11 and page.run("window.feed.lastEventId") is not None
        assert page.errors == []
    finally:
        publish.close()
        page.close()


# -- patterns -------------------------------------------------------------------------------------------------

@pytest.mark.live
def test_a_pattern_subscription_gets_the_channels_that_begin_later(browser: Any, server: Any) -> None:
    """``subscribe("sensors.*")``: a channel that begins after subscribing is followed from its first event,
    with its name in the handler's ``event.channel``; a channel that does not match is not."""
    page = ClientPage(browser, server.url)
    publish = Publisher(server.port, prefix=PREFIX)
    try:
        page.run("""() => {
            window.got = []; window.resets = [];
            window.feed = rs.subscribe("sensors.*", {
                message: (data, event) => window.got.push([event.channel, event.type, data, event.id]),
            }, {
                onStateChange: (state) => { window.state = state; },
                onReset: (reset) => window.resets.push(reset),
            });
        }""")
        page.wait("window.state === 'open'")
        assert page.run("window.feed.channels") == ["sensors.*"]
        publish("weather.temp", {"c": 30})
        publish("sensors.temp", {"c": 21})  # its first event: the channel begins now
        publish("weather.temp", {"c": 31})
        publish("sensors.temp", {"c": 22})
        page.wait("window.got.length === 2")
        got = page.run("window.got")
        # One stream, in publication order: had weather.temp come through, it would be among these.
        assert [row[:3] for row in got] == [["sensors.temp", "message", {"c": 21}],
                                            ["sensors.temp", "message", {"c": 22}]]
        assert all(re.fullmatch(r"sensors\.temp:\S+", row[3]) for row in got) and got[0][3] != got[1][3]
        assert page.run("window.feed.lastEventId") == got[-1][3]
        assert page.run("window.resets") == []
        page.run("window.feed.close()")
        assert page.run("window.state") == "closed"
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()


@pytest.mark.live
def test_a_pattern_subscriber_survives_a_server_restart_without_a_gap(browser: Any, tmp_path: Path) -> None:
    """``numbers.*`` across a restart of the (in-process) server: ``numbers.a`` before and after it,
    ``numbers.b`` beginning only on the new server. The stream resumes with its cursor; every number
    arrives once. The new server does not know the old id of ``numbers.a``: at most an ``unknown`` reset
    for it, whose replay is all new to the client."""
    port = free_port()
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_RETRY_MS": "500", **QUIET}
    first = LiveServer(tmp_path, app=APP, env=env)
    second = None
    page = ClientPage(browser, first.url)
    publish = Publisher(port, prefix=PREFIX)
    try:
        page.run("""() => {
            window.got = []; window.states = []; window.resets = [];
            window.feed = rs.subscribe("numbers.*", {
                count: (data, event) => window.got.push([event.channel, data.n]),
            }, {
                onStateChange: (state) => window.states.push(state),
                onReset: (reset) => window.resets.push(reset),
            });
        }""")
        page.wait("window.states.includes('open')")
        for n in range(1, 11):
            publish("numbers.a", {"n": n}, event="count")
        page.wait("window.got.length === 10")
        assert re.fullmatch(r"numbers\.a:\S+", page.run("window.feed.lastEventId"))
        first.stop()  # SIGTERM: the stream ends with its final event
        page.wait("window.feed.state !== 'open'")
        publish.close()
        second = LiveServer(tmp_path, app=APP, env=env)
        publish = Publisher(port, prefix=PREFIX)
        for n in range(11, 21):  # published whether or not the page is back yet; numbers.b begins here
            publish("numbers.a" if n % 2 else "numbers.b", {"n": n}, event="count")
            time.sleep(0.05)
        page.wait("window.got.length >= 20", timeout=15)
        page.page.wait_for_timeout(300)  # nothing more comes: no duplicate
        got = page.run("window.got")
        assert sorted(n for _, n in got) == list(range(1, 21))
        assert [c for c, n in got if n <= 10] == ["numbers.a"] * 10
        assert {n: c for c, n in got if n > 10} == {n: "numbers.a" if n % 2 else "numbers.b" for n in range(11, 21)}
        assert all((r["channel"], r["reason"]) == ("numbers.a", "unknown") for r in page.run("window.resets"))
        cursor = page.run("window.feed.lastEventId")
        assert sorted(part.split(":", 1)[0] for part in cursor.split(",")) == ["numbers.a", "numbers.b"]
        assert page.run("window.feed.state") == "open"
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.live
def test_a_pattern_past_the_channel_bound_calls_on_reset(browser: Any, live_server: Any) -> None:
    """ROVER_MAX_CHANNELS_PER_STREAM=2: the third channel ``fleet.*`` matches is not followed, and
    ``onReset`` says so once (``too_many_channels``, with the limit); the two followed ones go on."""
    server = live_server(app=APP, env={"ROVER_MAX_CHANNELS_PER_STREAM": "2", **QUIET})
    publish = Publisher(server.port, prefix=PREFIX)
    page = ClientPage(browser, server.url)
    try:
        page.run("""() => {
            window.got = []; window.resets = [];
            window.feed = rs.subscribe("fleet.*", { message: (data, event) => window.got.push([event.channel, data]) },
                                       { onReset: (reset) => window.resets.push(reset) });
        }""")
        page.wait("window.feed.state === 'open'")
        for n in range(3):
            publish(f"fleet.rover{n}", n)
        page.wait("window.got.length === 2 && window.resets.length === 1")
        assert page.run("window.got") == [["fleet.rover0", 0], ["fleet.rover1", 1]]
        assert page.run("window.resets") == [{"channel": "fleet.rover2", "reason": "too_many_channels",
                                              "lastEventId": None, "missed": None, "replayed": 0, "limit": 2}]
        publish("fleet.rover2", 3)  # still not followed, and not announced again
        publish("fleet.rover1", 4)
        page.wait("window.got.length === 3")
        assert page.run("window.got")[2] == ["fleet.rover1", 4] and len(page.run("window.resets")) == 1
        cursor = page.run("window.feed.lastEventId")
        assert sorted(part.split(":", 1)[0] for part in cursor.split(",")) == ["fleet.rover0", "fleet.rover1"]
        page.run("window.feed.close()")
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()


# -- rooms ----------------------------------------------------------------------------------------------------

@pytest.mark.live
def test_a_room_client_comes_back_after_a_restart_with_the_history_it_missed(
        browser: Any, tmp_path: Path, live_server: Any, redis_server: Any) -> None:
    """Two servers share the room through Redis. Ada's (the page's) server restarts; meanwhile Grace, on
    the other server, says something. Ada rejoins, and the history gives her that message and nothing she
    had already; presence and sending work again."""
    port = free_port()
    env = {"ROVER_REDIS_URL": redis_server.url, **QUIET}
    other = live_server(app=APP, env=env)
    first = LiveServer(tmp_path, app=APP, env={**env, "ROVER_BIND": f"127.0.0.1:{port}"})
    second = None
    page = ClientPage(browser, first.url)
    grace = None
    try:
        page.run("""async () => {
            window.texts = []; window.histories = []; window.states = []; window.members = [];
            window.room = rs.joinRoom("science", {
                user: "ada",
                onMessage: (m) => window.texts.push(m.text),
                onHistory: (messages, info) => {
                    window.histories.push([info.rejoin, messages.map((m) => m.text)]);
                    window.texts.push(...messages.map((m) => m.text));
                },
                onPresence: (members) => { window.members = members; },
                onStateChange: (state, detail) => window.states.push([state, detail.code ?? null]),
            });
            await window.room.ready;
        }""")
        assert page.run("window.histories") == [[False, []]]
        grace = RoomClient(f"{other.url}{PREFIX}", "science", "grace")
        page.wait("window.members.join() === 'ada,grace'")
        grace.send("before the restart")
        page.wait("window.texts.includes('before the restart')")
        assert page.run("window.room.send('hello from ada')") is True
        frames_until(grace, lambda f: f.get("text") == "hello from ada")

        first.stop()
        page.wait("window.room.state !== 'open'")
        frames_until(grace, lambda f: f["type"] == "leave" and f["user"] == "ada")
        grace.send("while you were away")
        second = LiveServer(tmp_path, app=APP, env={**env, "ROVER_BIND": f"127.0.0.1:{port}"})
        page.wait("window.room.state === 'open'", timeout=15)
        assert page.run("window.histories") == [[False, []], [True, ["while you were away"]]]
        assert page.run("window.texts") == ["before the restart", "hello from ada", "while you were away"]
        assert ["reconnecting", 1001] in page.run("window.states")
        assert page.run("window.members") == ["ada", "grace"]
        assert page.run("window.room.send('back again')") is True
        frames_until(grace, lambda f: f.get("text") == "back again")
        grace.close()
        grace = None
        page.wait("window.members.join() === 'ada'")  # grace's leave
        page.run("window.room.close()")
        assert page.run("window.room.state") == "closed"
        assert page.unexpected() == []
    finally:
        if grace is not None:
            grace.close()
        page.close()
        first.stop()
        if second is not None:
            second.stop()


# -- tokens ---------------------------------------------------------------------------------------------------

@pytest.mark.live
def test_a_token_refused_as_expired_is_renewed_for_streams_and_rooms(browser: Any, live_server: Any) -> None:
    """A connection refused (401) while its token is expired: the stream with a query token asks
    ``refreshToken`` for a new one, the room in cookie mode lets its callback renew the cookie; both connect."""
    server = live_server(app=APP, env={"ROVER_SECRET_KEY": SECRET, **QUIET})
    expired = rs.mint_token(SECRET, subscribe=["private-*"], expires_in=-10)
    fresh = rs.mint_token(SECRET, subscribe=["private-*"], expires_in=600)
    publish = Publisher(server.port, prefix=PREFIX, token=rs.mint_token(SECRET, publish=["private-feed"]))
    page = ClientPage(browser, server.url)
    page.context.add_cookies([{"name": "rover_token", "value": expired, "url": server.url}])
    try:
        page.run("""([expired, fresh]) => {
            window.got = []; window.refreshes = []; window.roomRefreshes = [];
            window.feed = rs.subscribe("private-feed", { n: (data) => window.got.push(data) }, {
                token: expired, minDelay: 200,
                refreshToken: (expiry) => { window.refreshes.push(expiry); return fresh; },
            });
            window.room = rs.joinRoom("private-ops", {
                user: "ada", minDelay: 200,
                refreshToken: (expiry) => {
                    window.roomRefreshes.push(expiry);
                    document.cookie = "rover_token=" + fresh + "; path=/";
                },
            });
        }""", [expired, fresh])
        page.wait("window.feed.state === 'open'")
        publish("private-feed", 1, event="n")
        page.wait("window.got.length === 1")
        (expiry,) = page.run("window.refreshes")
        assert expiry["reason"] == "refused" and expiry["expiredAt"] < time.time()
        page.run("window.room.ready")
        assert [e["reason"] for e in page.run("window.roomRefreshes")] == ["refused"]
        assert page.run("window.room.members") == ["ada"]
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()


@pytest.mark.live
def test_an_expired_token_is_refreshed_and_nothing_is_lost(browser: Any, live_server: Any) -> None:
    """A token that lives 2 s: the server ends the stream with ``event: token-expired`` and closes the room
    member with 4401; the library asks ``refreshToken`` for the next token and reopens both where they left
    off: every event arrives once, and the room is joined again."""
    server = live_server(app=APP, env={"ROVER_SECRET_KEY": SECRET, **QUIET})
    short = rs.mint_token(SECRET, subscribe=["private-*"], expires_in=2)
    following = [rs.mint_token(SECRET, subscribe=["private-*"], expires_in=600) for _ in range(2)]
    publish = Publisher(server.port, prefix=PREFIX, token=rs.mint_token(SECRET, publish=["private-feed"]))
    page = ClientPage(browser, server.url)
    try:
        page.run("""([short, following]) => {
            window.got = []; window.refreshes = []; window.roomRefreshes = []; window.roomStates = [];
            const next = (log) => (expiry) => { log.push(expiry); return following.shift(); };
            window.feed = rs.subscribe("private-feed", { n: (data) => window.got.push(data) },
                                       { token: short, refreshToken: next(window.refreshes) });
            window.room = rs.joinRoom("private-ops", {
                user: "ada", token: short, refreshToken: next(window.roomRefreshes),
                onStateChange: (state, detail) => window.roomStates.push([state, detail.code ?? null]),
            });
        }""", [short, following])
        page.wait("window.feed.state === 'open'")
        page.run("window.room.ready")
        numbers = list(range(1, 21))
        for n in numbers:  # 5 s of events: the token expires in the middle
            publish("private-feed", n, event="n")
            time.sleep(0.25)
        page.wait(f"window.got.length >= {len(numbers)}")
        assert page.run("window.got") == numbers
        assert [e["reason"] for e in page.run("window.refreshes")] == ["token-expired"]
        assert [e["reason"] for e in page.run("window.roomRefreshes")] == ["token-expired"]
        page.wait("window.room.state === 'open'")
        assert ["reconnecting", 4401] in page.run("window.roomStates")
        assert page.run("window.room.send('still here')") is True
        assert page.unexpected() == []
    finally:
        publish.close()
        page.close()


# -- Mission Control --------------------------------------------------------------------------------------------

@pytest.mark.live
def test_the_dashboard_uses_the_module_where_it_is_mounted(browser: Any, module_server: Any) -> None:
    """Mission Control served under a path (gunicorn's SCRIPT_NAME, as behind a proxy that mounts it at
    /mission): its import map names /mission/rover-stream.js, and its feed and room go through it."""
    server = module_server(app="wsgi:app", env={"SCRIPT_NAME": "/mission"})
    status, _, body = fetch(f"{server.url}/mission/", {"Accept": "text/html"})
    assert status == 200
    found = re.search(rb'<script type="importmap">(.*?)</script>', body)
    assert found and json.loads(found.group(1)) == {"imports": {"rover-stream": "/mission/rover-stream.js"}}
    page = ClientPage(browser, f"{server.url}/mission", prefix=None)
    try:
        page.wait("window.mission && window.mission.sse === 'open' && window.mission.telemetryEvents >= 1", 15)
        page.run("window.mission.joinRoom('science', 'ada')")
        assert page.run("window.mission.sendChat('under a prefix')") is True
        page.wait("window.mission.chat.some((c) => c.text === 'under a prefix')")
        assert page.run("window.mission.members") == ["ada"]
        assert page.unexpected() == []
    finally:
        page.close()


# -- the README -----------------------------------------------------------------------------------------------

def readme_examples() -> list[str]:
    """The ``js`` blocks of the README's section on the browser client."""
    section = README.split("## Browser client (rover-stream.js)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```js\n(.*?)```", section, re.S)


def test_the_readme_has_an_example() -> None:
    assert readme_examples()


@pytest.mark.live
def test_the_readme_example_runs_as_written(browser: Any, module_server: Any) -> None:
    server = module_server(app=APP, env={"JS_CLIENT_PREFIX": "", **QUIET})  # rover_stream at the root
    page = ClientPage(browser, server.url, prefix=None)
    publish = Publisher(server.port)
    try:
        for example in readme_examples():
            page.page.add_script_tag(content=example, type="module")
        page.wait("true")
        deadline = time.monotonic() + 10
        while "ada: Sample 7 looks odd" not in page.logged:
            assert time.monotonic() < deadline, page.logged
            page.page.wait_for_timeout(50)
        assert "in science: ada" in page.logged
        while publish("news", {"title": "Rover wakes up"}, event="headline")["subscribers"] == 0:  # not open yet
            assert time.monotonic() < deadline, page.logged
            time.sleep(0.1)
        while "news: Rover wakes up" not in page.logged:
            assert time.monotonic() < deadline, page.logged
            page.page.wait_for_timeout(50)
        assert page.errors == []
    finally:
        publish.close()
        page.close()


def test_the_docs_name_every_export() -> None:
    """docs/js-client.md documents each export of the module."""
    exports = set(re.findall(r"^export (?:class|function) (\w+)", LIBRARY.read_text(), re.M))
    docs = (ROOT / "docs" / "js-client.md").read_text()
    assert exports == {"RoomClient", "RoverStreamError", "Subscription", "joinRoom", "subscribe"}
    assert [name for name in sorted(exports) if f"`{name}" not in docs] == []
