"""The Mission Control dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against the demo app under gunicorn: what a person watching the dashboard would see.

Screenshots go to ``test-artifacts/`` at the top of the checkout (``ROVER_TEST_ARTIFACTS`` overrides)."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_SERVICES, ROOT, LiveServer, need

pytestmark = pytest.mark.live

ARTIFACTS = Path(os.environ.get("ROVER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


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
    return module_server(app="wsgi:app")


class Page:
    """A dashboard page that records console errors and failed requests."""

    def __init__(self, browser: Any, url: str, width: int = 1440, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.goto(url)
        self.page.wait_for_function("window.mission && window.mission.sse === 'open'", timeout=15000)

    def mission(self, expression: str) -> Any:
        return self.page.evaluate(f"window.mission.{expression}")

    def wait(self, condition: str, timeout: float = 15) -> None:
        self.page.wait_for_function(f"(() => {{ const m = window.mission; return {condition}; }})()",
                                    timeout=timeout * 1000)

    def close(self) -> None:
        self.context.close()


def test_dashboard_loads_and_goes_live(browser: Any, server: Any) -> None:
    page = Page(browser, server.url)
    try:
        page.wait("m.telemetryEvents >= 3", timeout=15)  # three readings, every two seconds
        # backfill + live: no gap (a tick that fell between the two is fetched), no duplicate
        page.wait("m.ticks.every((t, i) => i === 0 || t === m.ticks[i - 1] + 1)", timeout=5)
        ticks = page.mission("ticks")
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # backfill + live: no gap, no duplicate
        battery = page.page.inner_text("#telemetry-battery")
        assert page.mission("lastTelemetry.battery_level") is not None and battery.strip()
        page.wait("m.metricsEvents >= 1 && m.lastMetrics.pid > 0")
        assert page.mission("lastMetrics.pid") in server.worker_pids()
        page.wait("m.imageDone")
        assert page.page.inner_text("#state-sse").strip() and page.mission("sse") == "open"
        assert page.errors == []
    finally:
        page.close()


def test_telemetry_values_change(browser: Any, server: Any) -> None:
    page = Page(browser, server.url)
    try:
        seen: set[Any] = set()
        for _ in range(3):
            page.wait(f"m.telemetryEvents >= {len(seen) + 1}")
            seen.add(page.page.evaluate("JSON.stringify(window.mission.lastTelemetry)"))
        assert len(seen) >= 3  # each reading differs from the one before (time, tick, sun at least)
    finally:
        page.close()


def test_the_rover_image_arrives_whole(browser: Any, server: Any) -> None:
    page = Page(browser, server.url)
    try:
        page.wait("m.imageDone && m.imageSha256", timeout=30)
        on_disk = (server.log_path.parent / "var" / "rover_image.jpg").read_bytes()
        assert page.mission("imageBytes") == len(on_disk) == page.mission("imageTotal")
        assert page.mission("imageSha256") == hashlib.sha256(on_disk).hexdigest()
        assert page.page.evaluate("document.querySelector('#rover-image').naturalWidth") > 0
    finally:
        page.close()


def test_chat_reaches_the_same_room_only_and_stays_text(browser: Any, server: Any) -> None:
    ada, grace, linus = (Page(browser, server.url) for _ in range(3))
    try:
        ada.page.evaluate("window.mission.joinRoom('science', 'ada')")
        grace.page.evaluate("window.mission.joinRoom('science', 'grace')")
        linus.page.evaluate("window.mission.joinRoom('engineering', 'linus')")
        ada.wait("m.members.includes('grace')")
        hostile = "<img src=x onerror=\"window.__pwned=1\"> sample 7 looks odd"
        ada.page.evaluate(f"window.mission.sendChat({hostile!r})")
        grace.wait(f"m.chat.some(c => c.text === {hostile!r} && c.user === 'ada')")
        assert grace.page.inner_text("#chat-log").count("sample 7 looks odd") == 1
        assert grace.page.evaluate("document.querySelector('#chat-log img')") is None
        assert grace.page.evaluate("window.__pwned") is None and ada.page.evaluate("window.__pwned") is None
        linus.page.wait_for_timeout(1000)
        assert not any("sample 7" in c["text"] for c in linus.mission("chat"))
        assert linus.mission("members") == ["linus"]
        for page in (ada, grace, linus):
            assert page.errors == []
    finally:
        for page in (ada, grace, linus):
            page.close()


def test_screenshots(browser: Any, server: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, width, height in (("dashboard-desktop", 1440, 900), ("dashboard-phone", 390, 844)):
        page = Page(browser, server.url, width, height)
        try:
            page.wait("m.imageDone && m.telemetryEvents >= 1 && m.metricsEvents >= 1", timeout=30)
            page.page.evaluate("window.mission.joinRoom('science', 'ada')")
            page.wait("m.ws === 'open'")
            page.page.evaluate("window.mission.sendChat('Sample 7 looks odd; hold position')")
            page.wait("m.chat.length >= 1")
            # nothing wider than the screen: usable on a phone
            assert page.page.evaluate("document.documentElement.scrollWidth") <= width
            path = ARTIFACTS / f"{name}.png"
            page.page.screenshot(path=str(path), full_page=True)
            assert path.stat().st_size > 50_000
            assert page.errors == []
        finally:
            page.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_reconnects_after_a_restart_without_a_gap(browser: Any, tmp_path: Path) -> None:
    port = _free_port()
    env = {"ROVER_BIND": f"127.0.0.1:{port}", "ROVER_RETRY_MS": "500"}
    first = LiveServer(tmp_path, app="wsgi:app", env=env)
    second = None
    page = Page(browser, first.url)
    try:
        page.wait("m.telemetryEvents >= 1")
        before = page.mission("ticks")[-1]
        first.stop()  # SIGTERM: streams end with their final event; the page shows it is reconnecting
        page.wait("m.sse !== 'open'", timeout=10)
        page.page.wait_for_timeout(2500)  # a tick or more passes while the server is down
        second = LiveServer(tmp_path, app="wsgi:app", env=env)
        page.wait("m.sse === 'open'", timeout=20)
        page.wait(f"m.ticks[m.ticks.length - 1] >= {before + 4}", timeout=20)
        ticks = page.mission("ticks")
        span = ticks[ticks.index(before):]
        assert span == list(range(before, before + len(span))), "a gap or a duplicate in the telemetry"
        # While it restarts the server refuses connections, and the stopping one answers 503: expected.
        unexpected = [e for e in page.errors if not any(
            known in e for known in ("request failed", "ERR_CONNECTION_REFUSED", "503 (SERVICE UNAVAILABLE)"))]
        assert unexpected == []
    finally:
        page.close()
        first.stop()
        if second is not None:
            second.stop()


def test_cors_lets_listed_sites_read_streams_and_keeps_others_out(browser: Any, live_server: Any) -> None:
    """A page of another site (another port is another origin) opens an EventSource on the server and
    fetches /health. Its origin is in ROVER_CORS_ORIGINS: the events and the answer reach it. The same
    page under an origin that is not listed (localhost instead of 127.0.0.1) gets neither."""
    import http.server
    import threading

    from wire_helpers import Publisher

    page_html = b"""<!doctype html><meta charset="utf-8"><title>other site</title><script>
      const server = new URLSearchParams(location.search).get("server");
      window.result = {events: [], error: false, fetched: null, fetchError: null};
      const source = new EventSource(server + "/realtime/cors-check");
      source.onopen = () => { window.result.open = true; };
      source.onmessage = (e) => window.result.events.push(JSON.parse(e.data));
      source.onerror = () => { window.result.error = true; };
      fetch(server + "/health").then((r) => r.json()).then((j) => { window.result.fetched = j.status; })
        .catch((e) => { window.result.fetchError = String(e); });
    </script>"""

    class Site(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page_html)))
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    site_port = site.server_address[1]
    server = live_server(env={"ROVER_CORS_ORIGINS": f"http://127.0.0.1:{site_port}", "ROVER_DEMO": "0",
                              "ROVER_METRICS_INTERVAL": "0"})
    publish = Publisher(server.port)
    context = browser.new_context()
    try:
        listed, other = context.new_page(), context.new_page()
        query = f"/?server=http://127.0.0.1:{server.port}"
        listed.goto(f"http://127.0.0.1:{site_port}{query}")
        other.goto(f"http://localhost:{site_port}{query}")
        listed.wait_for_function("window.result.open && window.result.fetched !== null", timeout=10000)
        other.wait_for_function("window.result.error && window.result.fetchError !== null", timeout=10000)
        publish("cors-check", {"n": 1})
        listed.wait_for_function("window.result.events.length === 1", timeout=10000)
        assert listed.evaluate("window.result") == {"events": [{"n": 1}], "error": False, "fetched": "healthy",
                                                    "fetchError": None, "open": True}
        outcome = other.evaluate("window.result")
        assert outcome["events"] == [] and outcome["fetched"] is None and "fetch" in outcome["fetchError"].lower()
    finally:
        publish.close()
        context.close()
        site.shutdown()
        site.server_close()
