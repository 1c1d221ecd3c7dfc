"""The dashboard page: self-contained, and live in a real headless Chromium."""

from __future__ import annotations

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
    "--window-size=1280,900",
)


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


@asynccontextmanager
async def served(app: pt.App, **options: Any) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery, serving(app):
        yield await nursery.start(partial(pt.serve_http, app, port=0, **options))
        nursery.cancel_scope.cancel()


class TestPage:
    """The page is one file of the package, with no external assets."""

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
        for endpoint in ("/inspect", "/dead-letters", "/messages"):
            assert endpoint in html

    async def test_it_asks_for_small_pages(self) -> None:
        app, _ = build(max_payload_bytes=1 << 20)
        app.register_command(Big)
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            html = (await client.get("/")).text
            match = re.search(r'const MESSAGES = "(/messages\?[^"]+)"', html)
            assert match is not None
            await app.log.append(*(Count(i) for i in range(3)))
            await app.log.append(*(Big("x" * 100 * 1024) for _ in range(50)))
            response = await client.get(match.group(1))
        assert response.status_code == 200
        assert len(response.content) <= 66 * 1024
        messages = response.json()["messages"]
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
    for flag in (*FLAGS, f"--user-data-dir={profile}", *flags):
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


@needs_browser
async def test_live_dashboard_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    app, switch = build()
    async with served(app, token=TOKEN) as url, httpx.AsyncClient(base_url=url) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        driver = await trio.to_thread.run_sync(open_browser, tmp_path / "profile")
        page = Page(driver)
        try:
            with trio.fail_after(90):
                await page.call(driver.get, f"{url}/")
                processed = 'tr[data-worker="counter"] td.processed'
                await page.wait_for(processed, lambda t: t == "0")

                # The page follows the app without being reloaded.
                response = await client.post(
                    "/commands/dash-test/count", json={"n": 1}, headers=auth
                )
                assert response.status_code == 201
                await page.wait_for(processed, lambda t: t == "1")
                await page.wait_for(
                    'tr[data-message-id="1"]', lambda t: t is not None and "dash-test/count" in t
                )

                # A dead letter gets a button.
                poke = await client.post("/commands/dash-test/poke", json={"n": 2}, headers=auth)
                letter = f'tr[data-dead-letter="fragile/{poke.json()["id"]}"]'
                await page.wait_for(letter, lambda t: t is not None and "broken on 2" in t)
                await page.wait_for(
                    'tr[data-worker="fragile"] td.last_error',
                    lambda t: bool(t and "broken on 2" in t),
                )

                # Without the token the app refuses, and the page says what is missing.
                switch.broken = False
                await page.click(f"{letter} button.redrive")
                await page.wait_for("#status", lambda t: bool(t and "needs the token" in t))
                assert len(await app.dead_letters()) == 1

                # With it, the button re-drives the message and the dead letter goes.
                await page.type("#token", TOKEN)
                await page.click("#token-save")
                await page.click(f"{letter} button.redrive")
                await page.wait_for("#status", lambda t: bool(t and "handled" in t))
                await page.wait_for(letter, lambda t: t is None)
                assert await app.dead_letters() == []
                assert (await page.text("#dead-letters")) == "no dead letters"

                # Self-contained: the browser reported no failed load or script error.
                errors = [
                    entry
                    for entry in await page.call(driver.get_log, "browser")
                    if entry["level"] == "SEVERE" and "/redrive" not in entry["message"]
                ]
                assert errors == []
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.quit)


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
