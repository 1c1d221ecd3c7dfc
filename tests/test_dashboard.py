"""The dashboard page: self-contained, relative URLs, and live in a real headless Chromium.

With ``PETROCK_TRIO_SCREENSHOTS=docs`` the 700 px test also runs traffic for a while
(``PETROCK_TRIO_SCREENSHOT_SECONDS``, 90 by default, so the charts fill) and saves
``dashboard.png`` (1280 px wide) and ``dashboard-narrow.png`` (700 px) there.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

import petrock_trio as pt
from petrock_trio.testing import serving

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

TOKEN = "dashboard-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
WIDE = "--window-size=1280,900"
NARROW = 700
# Resolved now: the test that takes them changes directory.
SCREENSHOTS = (
    Path(os.environ["PETROCK_TRIO_SCREENSHOTS"]).resolve()
    if os.environ.get("PETROCK_TRIO_SCREENSHOTS")
    else None
)
# Long and unbroken: a line that will not wrap unless the page lets it.
DIGEST = "sha256-" + "0123456789abcdef" * 36
SCREENSHOT_SECONDS = float(os.environ.get("PETROCK_TRIO_SCREENSHOT_SECONDS", "90"))


@pt.command("dash-test/count")
@attrs.frozen
class Count:
    n: int


@pt.command("dash-test/poke")
@attrs.frozen
class Poke:
    n: int


@pt.command("dash-test/big")
@attrs.frozen
class Big:
    text: str


@pt.command("dash-test/split")
@attrs.frozen
class Split:
    key: str


@attrs.define
class Switch:
    broken: bool = True


def build(database: str = ":memory:", **options: Any) -> tuple[pt.App, Switch]:
    """`counter` handles every Count; `fragile` dead-letters Pokes while switched broken."""
    app = pt.App(database, **options)
    switch = Switch()
    app.register_command(Count)
    app.register_command(Poke)
    counter: pt.PatternWorker[None] = pt.PatternWorker("counter", "counts")
    fragile: pt.PatternWorker[None] = pt.PatternWorker(
        "fragile", "fails while broken", retry=pt.Backoff(max_attempts=1)
    )

    @counter.on_command("dash-test/count")
    async def count(ctx: pt.HandlerContext, cmd: Count, state: None) -> None:
        pass

    @fragile.on_command("dash-test/poke")
    async def poke(ctx: pt.HandlerContext, cmd: Poke, state: None) -> None:
        if switch.broken:
            raise RuntimeError(f"broken on {cmd.n}")

    app.register_worker(counter)
    app.register_worker(fragile)
    return app, switch


def scene(database: str = ":memory:") -> tuple[pt.App, Switch]:
    """`build`'s workers, plus a partitioned worker, a worker whose periodic work needs a
    service that is down (its circuit opens at the first failure, then runs are skipped)
    and a worker that refuses text with a long unbroken error."""
    app, switch = build(database, max_payload_bytes=1 << 20)
    app.register_command(Big)
    app.register_command(Split)
    splitter: pt.PatternWorker[None] = pt.PatternWorker(
        "splitter", "by key", partitions=3, key=lambda cmd: cmd.key, snapshot_every=1
    )
    api = pt.ExternalService("flaky-api", failure_threshold=1, reset_timeout=600)
    poller: pt.PatternWorker[None] = pt.PatternWorker("poller", "polls", services=[api])
    strict: pt.PatternWorker[None] = pt.PatternWorker(
        "strict-worker-with-a-rather-long-name", "refuses", retry=pt.Backoff(max_attempts=1)
    )

    @splitter.on_command("dash-test/split")
    async def split(ctx: pt.HandlerContext, cmd: Split, state: None) -> None:
        await trio.sleep(0.02)  # slow enough for a burst to show as lag

    async def down() -> None:
        raise ConnectionError("flaky-api is down")

    async def poll(ctx: pt.PeriodicContext, state: None) -> None:
        await api.call(down)

    poller.set_periodic_work(poll, 0.1)

    @strict.on_command("dash-test/big")
    async def refuse(ctx: pt.HandlerContext, cmd: Big, state: None) -> None:
        raise ValueError(f"cannot take {cmd.text}")

    for worker in (splitter, poller, strict):
        app.register_worker(worker)
    return app, switch


@asynccontextmanager
async def served(app: pt.App, **options: Any) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery, serving(app):
        yield await nursery.start(partial(pt.serve_http, app, port=0, **options))
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def served_asgi(app: pt.App, asgi: ASGIApp) -> AsyncIterator[str]:
    """``asgi`` served by Hypercorn on a free port, next to ``serve(app)``."""
    from hypercorn.config import Config  # noqa: PLC0415 - as serve_http loads it
    from hypercorn.trio import serve  # noqa: PLC0415

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    async with trio.open_nursery() as nursery, serving(app):
        binds: list[str] = await nursery.start(partial(serve, asgi, config))  # type: ignore[arg-type]
        yield binds[0].rstrip("/")
        nursery.cancel_scope.cancel()


def mounted(asgi: ASGIApp, prefix: str = "/ops") -> Starlette:
    """An application of one's own with the API mounted under ``prefix``."""
    return Starlette(routes=[Mount(prefix, app=asgi)])


def behind_proxy(asgi: ASGIApp, prefix: str = "/ops") -> ASGIApp:
    """What a reverse proxy forwarding ``prefix`` does: the prefix becomes ``root_path``,
    and ``prefix`` itself, without its slash, reaches the API's root with no redirect."""

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan":
            await asgi(scope, receive, send)
        elif path == prefix or path.startswith(prefix + "/"):
            forwarded = prefix + "/" if path == prefix else path
            await asgi({**scope, "root_path": prefix, "path": forwarded}, receive, send)
        else:
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": b"not under " + prefix.encode()})

    return proxy


def script_of(html: str) -> str:
    match = re.search(r"<script>(.*)</script>", html, re.DOTALL)
    assert match is not None
    return match.group(1)


class TestPage:
    """The page is one file of the package, with no external assets and relative URLs."""

    def test_shipped_in_the_package(self) -> None:
        page = resources.files("petrock_trio").joinpath("dashboard.html")
        assert page.is_file()
        assert "<script>" in page.read_text(encoding="utf-8")

    async def test_served_self_contained(self) -> None:
        app, _ = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        html = response.text
        # Nothing is loaded from elsewhere: no src/href to another host, no CSS imports.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
        assert "@import" not in html
        assert not re.search(r"<(script|link)[^>]+(src|href)=[\"'][^\"'d]", html)
        for endpoint in ("dashboard.json", "dead-letters/", "redrive"):
            assert endpoint in html

    def test_every_url_is_relative(self) -> None:
        """No path of the script starts at the server's root: mounted under a prefix, it
        would leave the prefix."""
        html = resources.files("petrock_trio").joinpath("dashboard.html").read_text("utf-8")
        script = script_of(html)
        assert re.findall(r"""["'`]/[A-Za-z]""", script) == []
        assert re.findall(r"""fetch\(\s*["'`]""", script) == []  # every fetch goes through url()

    async def test_it_asks_for_a_small_snapshot(self) -> None:
        app, _ = build(max_payload_bytes=1 << 20)
        app.register_command(Big)
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            html = (await client.get("/")).text
            match = re.search(r'const SNAPSHOT = "(dashboard\.json\?[^"]+)"', html)
            assert match is not None
            await app.log.append(*(Count(i) for i in range(3)))
            await app.log.append(*(Big("x" * 100 * 1024) for _ in range(50)))
            response = await client.get(f"/{match.group(1)}")
        assert response.status_code == 200
        # The messages within 64 KiB, and a report of two workers around them.
        assert len(response.content) <= 72 * 1024
        messages = response.json()["messages"]["messages"]
        assert messages
        assert all(m["truncated"] for m in messages)
        assert messages[-1]["id"] == 53


# --- in a browser --------------------------------------------------------------------

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs headless Chromium: apt-get install chromium chromium-driver",
)


def open_browser(profile: Path, *flags: str) -> Chrome:
    from selenium import webdriver  # noqa: PLC0415 - only when a browser is there
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    size = () if any(f.startswith("--window-size") for f in flags) else (WIDE,)
    for flag in (*FLAGS, *size, f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Page:
    """Blocking selenium calls, each run in a thread so the app keeps serving."""

    def __init__(self, driver: Chrome) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    async def text(self, css: str) -> str | None:
        from selenium.common.exceptions import StaleElementReferenceException  # noqa: PLC0415
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        def read() -> str | None:
            try:
                found = self.driver.find_elements(By.CSS_SELECTOR, css)
                return found[0].text if found else None
            except StaleElementReferenceException:
                return None  # replaced while read: look again

        result: str | None = await self.call(read)
        return result

    async def wait_for(
        self, css: str, check: Callable[[str | None], bool], timeout: float = 20
    ) -> str | None:
        """The text at ``css`` once ``check`` accepts it (None: no such element)."""
        with trio.fail_after(timeout):
            # The page changes by itself; there is no event to wait on, only its text.
            while not check(text := await self.text(css)):  # noqa: ASYNC110
                await trio.sleep(0.1)
        return text

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def type(self, css: str, text: str) -> None:
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).send_keys(text))

    async def run(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def resources(self) -> list[str]:
        """Every URL the page has fetched since it loaded (itself included)."""
        names: list[str] = await self.run(
            "return [location.href, ...performance.getEntriesByType('resource').map((e) => e.name)]"
        )
        return names

    async def severe_errors(self, *allowed: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await self.call(self.driver.get_log, "browser")
        return [
            e
            for e in entries
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)
        ]


def shown(text: str | None, *parts: str) -> bool:
    return text is not None and all(part in text for part in parts)


@asynccontextmanager
async def browsing(profile: Path, *flags: str) -> AsyncIterator[Page]:
    driver = await trio.to_thread.run_sync(open_browser, profile, *flags)
    try:
        yield Page(driver)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(driver.quit)


async def redrive_from_the_page(page: Page, app: pt.App, switch: Switch, letter: str) -> None:
    """Without the token the app refuses and the page says so; with it the message is
    handled, and the worker's Dead count drops to what is outstanding."""
    switch.broken = False
    await page.click(f"{letter} button.redrive")
    await page.wait_for("#status", lambda t: shown(t, "needs the token"))
    assert len(await app.dead_letters()) == 1

    await page.type("#token", TOKEN)
    await page.click("#token-save")
    await page.click(f"{letter} button.redrive")
    await page.wait_for("#status", lambda t: shown(t, "handled"))
    await page.wait_for(letter, lambda t: t is None)
    assert await app.dead_letters() == []
    assert await page.text("#dead-letters") == "no dead letters"
    await page.wait_for('tr[data-worker="fragile"] td.dead', lambda t: t == "0")
    assert app.workers["fragile"].metrics().dead_lettered == 1  # it happened, once
    await page.wait_for("#detail-state", lambda t: shown(t, "Resolved"))


@needs_browser
async def test_live_dashboard_mounted_under_ops_in_chromium(tmp_path: Path) -> None:
    """`http_app` mounted under /ops in an application of one's own: every request of the
    page stays under /ops, and the whole page works there, re-drive included."""
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    app, switch = build()
    asgi = mounted(pt.http_app(app, token=TOKEN))
    async with (
        served_asgi(app, asgi) as url,
        httpx.AsyncClient(
            base_url=f"{url}/ops/", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client,
        browsing(tmp_path / "profile") as page,
    ):
        # Outside the prefix there is nothing: a page that left it would fail loudly.
        assert (await client.get(f"{url}/dashboard.json")).status_code == 404
        with trio.fail_after(90):
            await page.call(page.driver.get, f"{url}/ops/")
            processed = 'tr[data-worker="counter"] td.processed'
            await page.wait_for(processed, lambda t: t == "0")

            # The page follows the app without being reloaded.
            response = await client.post("commands/dash-test/count", json={"n": 1})
            assert response.status_code == 201
            await page.wait_for(processed, lambda t: t == "1")
            await page.wait_for('tr[data-message-id="1"]', lambda t: shown(t, "dash-test/count"))
            await page.wait_for("#summary", lambda t: shown(t, "head 1", "serving"))

            # A dead letter gets a row, counted as the worker's one dead letter.
            poke = await client.post("commands/dash-test/poke", json={"n": 2})
            letter = f'tr[data-dead-letter="fragile/{poke.json()["id"]}"]'
            await page.wait_for(letter, lambda t: shown(t, "broken on 2"))
            fragile = 'tr[data-worker="fragile"]'
            await page.wait_for(f"{fragile} td.last_error", lambda t: shown(t, "broken on 2"))
            assert await page.text(f"{fragile} td.dead") == "1"
            assert await page.text("#dead-count") == "(1)"

            # Its detail: the payload and the traceback of its last failure.
            await page.click(f"{letter} button.details")
            await page.wait_for("#detail-payload", lambda t: shown(t, '"n": 2'))
            traceback = await page.text("#detail-traceback")
            assert shown(traceback, "Traceback", "RuntimeError: broken on 2")

            await redrive_from_the_page(page, app, switch, letter)

            # Charts: a sample per refresh for each worker, in each of its three figures,
            # and the failures of "fragile" in its errors chart.
            for series in ("rate", "errors", "lag"):
                figure = f'div.chart[data-worker="counter"] figure.{series}'
                points = await page.run(
                    "const f = document.querySelector(arguments[0]);"
                    "return [Number(f.dataset.points),"
                    " f.querySelector('polyline').getAttribute('points').split(' ').length]",
                    figure,
                )
                assert points[0] >= 2
                assert points[1] == points[0], series
            # Handler times to three significant digits: a slow one is no wider.
            shown_ms = await page.run("return [0.000123, 0.0123, 0.123, 5].map(ms)")
            assert shown_ms == ["0.12", "12.3", "123", "5000"]
            errors = await page.text('div.chart[data-worker="fragile"] figure.errors b')
            peak = re.fullmatch(r"[\d.]+ \(max ([\d.]+)\)", errors or "")
            assert peak is not None, errors
            assert float(peak.group(1)) > 0

            # Every request stayed under /ops (the page itself at /ops/ included).
            fetched = await page.resources()
            assert all(u.startswith(f"{url}/ops/") for u in fetched), fetched
            assert any("dashboard.json" in u for u in fetched)
            assert await page.severe_errors("/redrive") == []


REFUSED = 99  # a Count that tally refuses


async def pause_reset_and_resume(page: Page, app: pt.App, handled: list[int]) -> None:
    """Pause, preview a reset, reset, resume: the messages after the position are
    handled again, and only once the worker is resumed."""
    row = 'tr[data-worker="tally"]'
    await page.click(f"{row} button.pause")
    await page.wait_for(f"{row} button.pause", lambda t: t == "Resume")
    assert app.inspect()["workers"]["tally"]["paused"] is True
    await page.wait_for(f"{row} td.health", lambda t: shown(t, "paused"))

    await page.click(f"{row} button.reset")
    await page.type("#reset-to", "1")
    await page.click("#reset-preview")
    await page.wait_for("#reset-summary", lambda t: shown(t, "handled live again: 2 messages"))
    assert handled == [1, 2, 3]  # a preview changes nothing
    await page.click("#reset-apply")
    await page.wait_for("#status", lambda t: shown(t, "tally reset to position 1"))
    await page.wait_for(f"{row} td.position", lambda t: t == "1")
    assert handled == [1, 2, 3]  # still paused

    await page.click(f"{row} button.pause")
    await page.wait_for(f"{row} button.pause", lambda t: t == "Pause")
    await page.wait_for(f"{row} td.position", lambda t: t == str(app.log.head.value))
    assert handled == [1, 2, 3, 2, 3]


async def dead_letters_in_bulk(
    page: Page, app: pt.App, switch: Switch, client: httpx.AsyncClient
) -> None:
    """Re-drive all of one worker's, then discard all: the second click discards."""
    for n in range(3):
        await client.post("commands/dash-test/poke", json={"n": n})
    await client.post("commands/dash-test/count", json={"n": REFUSED})
    await page.wait_for("#dead-count", lambda t: t == "(4)")
    switch.broken = False
    await page.run("document.getElementById('bulk-worker').value = 'fragile'")
    await page.click("#redrive-all")
    await page.wait_for("#status", lambda t: shown(t, "Re-driving 3 dead letters"))
    await page.wait_for("#dead-count", lambda t: t == "(1)")
    [left] = await app.dead_letters()
    assert (left.worker, left.attempts) == ("tally", 1)  # another worker's: left alone

    switch.broken = True
    for n in range(2):
        await client.post("commands/dash-test/poke", json={"n": 10 + n})
    await page.wait_for("#dead-count", lambda t: t == "(3)")
    await page.run("document.getElementById('bulk-worker').value = ''")  # every worker
    await page.click("#discard-all")
    await page.wait_for("#discard-all", lambda t: shown(t, "Click again"))
    assert len(await app.dead_letters()) == 3  # armed, not yet discarded
    await page.click("#discard-all")
    await page.wait_for("#status", lambda t: shown(t, "Discarded 3 dead letters"))
    assert await app.dead_letters() == []
    await page.wait_for("#dead-letters", lambda t: t == "no dead letters")


@needs_browser
async def test_operator_verbs_in_chromium(tmp_path: Path) -> None:
    """Under /ops, with a token: pause, reset and resume a worker, re-drive and discard
    dead letters in bulk."""
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    app, switch = build(str(tmp_path / "ops.db"))
    handled: list[int] = []
    tally: pt.PatternWorker[None] = pt.PatternWorker(
        "tally", "notes every Count", retry=pt.Backoff(max_attempts=1)
    )

    @tally.on_command("dash-test/count")
    async def note(ctx: pt.HandlerContext, cmd: Count, state: None) -> None:
        if cmd.n == REFUSED:
            raise ValueError("refused")
        if not ctx.is_replay:
            handled.append(cmd.n)

    app.register_worker(tally)
    asgi = mounted(pt.http_app(app, token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        served_asgi(app, asgi) as url,
        httpx.AsyncClient(base_url=f"{url}/ops/", headers=auth) as client,
        browsing(tmp_path / "profile") as page,
    ):
        with trio.fail_after(120):
            await page.call(page.driver.get, f"{url}/ops/")
            await page.type("#token", TOKEN)
            await page.click("#token-save")
            for n in (1, 2, 3):
                await client.post("commands/dash-test/count", json={"n": n})
            await page.wait_for('tr[data-worker="tally"] td.position', lambda t: t == "3")
            await pause_reset_and_resume(page, app, handled)
            await dead_letters_in_bulk(page, app, switch, client)
            assert await page.severe_errors() == []


async def traffic(app: pt.App, switch: Switch, seconds: float) -> None:
    """A rate that rises and falls, a burst for the partitions now and then, and a spell
    of failures, so that every chart has something to show."""
    started = trio.current_time()
    tick = 0
    while (elapsed := trio.current_time() - started) < seconds:
        tick += 1
        rate = 20 + 15 * math.sin(elapsed / 12)
        await app.execute(Count(tick))
        if tick % 150 == 0:
            for i in range(40):
                await app.execute(Split(f"k{i}"))
        switch.broken = 30 < elapsed < 45  # a spell of failures
        if switch.broken and tick % 60 == 0:
            await app.execute(Poke(tick))
        await trio.sleep(1 / rate)


async def capture(page: Page, directory: Path, name: str, width: int) -> None:
    """A PNG of the page from its top at ``width``, the window grown to the page's height."""
    driver = page.driver
    await page.call(driver.set_window_size, width, 900)
    await trio.sleep(1.5)  # a refresh or two at the new width
    height = await page.run("return document.documentElement.scrollHeight")
    await page.call(driver.set_window_size, width, min(int(height) + 120, 2400))
    await page.run("window.scrollTo(0, 0)")
    await trio.sleep(1.5)
    await page.call(driver.save_screenshot, str(directory / name))


async def screenshots(page: Page, app: pt.App, switch: Switch, directory: Path) -> None:
    """Run traffic until the charts have something to show, then take both pictures."""
    await traffic(app, switch, SCREENSHOT_SECONDS)
    # Tracebacks name the files of this machine: the pictures show none.
    await page.click("#detail-close")
    await trio.to_thread.run_sync(partial(directory.mkdir, parents=True, exist_ok=True))
    await capture(page, directory, "dashboard-narrow.png", NARROW)
    await capture(page, directory, "dashboard.png", 1280)


async def assert_it_fits(page: Page, width: int) -> None:
    """Nothing overflows sideways, and every control is on screen."""
    sizes = await page.run("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert sizes[0] == width
    assert sizes[1] <= width
    rights = await page.run(
        "return Array.from(document.querySelectorAll('button, input'))"
        ".filter((e) => e.offsetParent !== null)"
        ".map((e) => e.getBoundingClientRect().right)"
    )
    assert rights
    assert max(rights) <= width


@needs_browser
async def test_partitions_circuits_and_dead_letters_at_700_px(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 700 px nothing overflows sideways and every control is in reach; partitions,
    open circuits and skipped runs show. Behind a proxy that forwards /ops without
    redirecting, so the page is reached as /ops, without its trailing slash."""
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    monkeypatch.chdir(tmp_path)  # the header names the database as given: "scene.db"
    app, switch = scene("scene.db")
    asgi = behind_proxy(pt.http_app(app))
    async with (
        served_asgi(app, asgi) as url,
        httpx.AsyncClient(base_url=f"{url}/ops/") as client,
        browsing(tmp_path / "profile", f"--window-size={NARROW},900") as page,
    ):
        with trio.fail_after(90 + (SCREENSHOT_SECONDS + 30 if SCREENSHOTS else 0)):
            await page.call(page.driver.get, f"{url}/ops")
            for n in range(6):
                await client.post("commands/dash-test/count", json={"n": n})
                await client.post("commands/dash-test/split", json={"key": f"k{n}"})
            await client.post("commands/dash-test/poke", json={"n": 7})
            big = await client.post("commands/dash-test/big", json={"text": DIGEST})
            strict = "strict-worker-with-a-rather-long-name"
            letter = f'tr[data-dead-letter="{strict}/{big.json()["id"]}"]'
            await app.caught_up()
            head = app.log.head.value

            # Each partition of the partitioned worker has its row, at the head, and
            # says where its latest snapshot is and how old (the tooltip says why).
            snapshots = []
            for index in range(3):
                row = f'tr[data-partition="splitter#{index}/3"]'
                await page.wait_for(f"{row} td.position .value", lambda t: t == str(head))
                assert shown(await page.text(row), f"partition {index + 1}/3", "healthy")
                note = await page.text(f"{row} td.position .snapshot")
                assert note is not None
                assert re.fullmatch("snap (\u2013|\\d+ \u00b7 \\d+ s)", note), note
                title = await page.run(
                    "return document.querySelector(arguments[0]).title", f"{row} td.position"
                )
                snapshots.append(title)
            taken = [t for t in snapshots if t.startswith("latest snapshot at message ")]
            assert taken, snapshots  # six keys over three partitions, a snapshot each
            assert all(int(t.split()[4].rstrip(",")) <= head for t in taken)
            assert await page.text('tr[data-worker="counter"] td.position .snapshot') is None
            # The circuit is open, and the runs it skipped are counted where they
            # belong, though nothing failed.
            service = 'tr[data-service="flaky-api"]'
            await page.wait_for(f"{service} td.circuit", lambda t: t == "open")
            assert shown(await page.text(service), "poller")
            skipped = 'tr[data-worker="poller"] td.skipped'
            await page.wait_for(skipped, lambda t: t is not None and int(t) > 3)
            await page.wait_for("#summary", lambda t: shown(t, "1 circuit not closed"))
            await page.wait_for(letter, lambda t: shown(t, "cannot take sha256-0123"))
            await page.wait_for("#dead-count", lambda t: t == "(2)")

            await page.click(f"{letter} button.details")
            await page.wait_for("#detail-traceback", lambda t: shown(t, "ValueError"))
            assert shown(await page.text("#detail-payload"), DIGEST)

            await assert_it_fits(page, NARROW)
            # Cards up to 1200 px, tables from there.
            for width in (830, 1200, 1220, 1280):
                await page.call(page.driver.set_window_size, width, 900)
                await trio.sleep(1.2)  # a refresh at that width
                await assert_it_fits(page, width)
            await page.call(page.driver.set_window_size, NARROW, 900)
            assert all(u.startswith(f"{url}/ops") for u in await page.resources())
            assert await page.severe_errors() == []
            if SCREENSHOTS:
                await screenshots(page, app, switch, SCREENSHOTS)


def insert_rows_of_another_program(path: Path) -> None:
    """Rows no worker routes, with a timestamp that is not a time or a payload not JSON."""
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO messages (timestamp, name, payload) VALUES (?, ?, ?)",
            [
                (1e20, "other/far-future", b"{}"),
                ("yesterday", "other/words", b"{}"),
                (1700000000.0, "other/not-json", b"not json {"),
            ],
        )
    conn.close()


@needs_browser
async def test_dashboard_keeps_refreshing_over_rows_it_cannot_decode(tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    database = tmp_path / "bad.db"
    async with pt.open_log(str(database)) as log:
        await log.store.head()
    insert_rows_of_another_program(database)
    app, _ = build(str(database))
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        driver = await trio.to_thread.run_sync(open_browser, tmp_path / "profile")
        page = Page(driver)
        try:
            with trio.fail_after(90):
                await page.call(driver.get, f"{url}/")
                for message_id, reason in ((1, "timestamp"), (2, "yesterday"), (3, "JSON")):
                    text = await page.wait_for(
                        f'tr[data-message-id="{message_id}"]', lambda t: t is not None
                    )
                    assert text is not None
                    assert "undecodable" in text
                    assert reason in text
                # Still refreshing: a new command shows up without a reload.
                response = await client.post("/commands/dash-test/count", json={"n": 1})
                assert response.status_code == 201
                await page.wait_for('tr[data-worker="counter"] td.processed', lambda t: t == "1")
                await page.wait_for(
                    'tr[data-message-id="4"]', lambda t: t is not None and "dash-test/count" in t
                )
                assert not await page.text("#status")
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.quit)


@needs_browser
async def test_a_rebound_name_drives_nothing_in_chromium(tmp_path: Path) -> None:
    """DNS rebinding: the browser resolves evil.test to 127.0.0.1, as its owner arranged."""
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    app, _ = build()
    async with served(app) as url:
        port = url.rsplit(":", 1)[1]
        rules = "--host-resolver-rules=MAP evil.test 127.0.0.1"
        driver = await trio.to_thread.run_sync(open_browser, tmp_path / "profile", rules)
        page = Page(driver)
        try:
            with trio.fail_after(90):
                await page.call(driver.get, f"http://evil.test:{port}/")
                body = await page.text("body")
                assert body is not None
                assert "HostNotAllowed" in body
                script = """
                    const done = arguments[arguments.length - 1];
                    const post = fetch("/commands/dash-test/count", {
                        method: "POST", body: JSON.stringify({n: 1}),
                        headers: {"Content-Type": "application/json"},
                    });
                    Promise.all([post, fetch("/messages")])
                        .then((answers) => done(answers.map((a) => a.status)))
                        .catch((error) => done(String(error)));
                """
                statuses = await page.call(driver.execute_async_script, script)
                assert statuses == [403, 403]
                await app.caught_up()
                assert app.log.head.value == 0
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.quit)
