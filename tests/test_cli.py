"""The command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import petrock_trio as pt

EXE = shutil.which("petrock-trio") or str(Path(sys.executable).parent / "petrock-trio")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


COMMANDS = [
    [],
    ["demo"],
    ["serve"],
    ["inspect"],
    ["dead-letters"],
    ["dead-letters", "list"],
    ["dead-letters", "retry"],
    ["dead-letters", "retry-all"],
    ["dead-letters", "status"],
    ["dead-letters", "discard"],
    ["log"],
    ["log", "tail"],
]


def test_help_on_every_command(tmp_path: Path) -> None:
    for args in ([*command, "--help"] for command in COMMANDS):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout


def test_demo_runs_to_completion_and_replays(tmp_path: Path) -> None:
    first = run("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created 6 items, 0 already there" in first.stdout
    assert "6/6" in first.stdout
    assert "healthy" in first.stdout
    assert (tmp_path / "petrock-demo.db").exists()

    second = run("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "created 0 items, 6 already there" in second.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["demo", "--timeout", "soon"],
        ["demo", "--port", "-1"],
        ["serve"],
        ["dead-letters", "retry", "packer", "0", "--url", "http://127.0.0.1:9"],
        ["dead-letters", "retry", "packer", "1"],
        ["log", "tail"],
        ["log", "tail", "--database", "missing.db"],
        ["inspect", "--database", "missing.db"],
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Error" in result.stderr


# --- serving an app, and reading it over HTTP or from its database --------------------

SHOP = """
import os
from pathlib import Path

import attrs
import trio

import petrock_trio as pt


@pt.command("shop/order")
@attrs.frozen
class Order:
    item: str


def create_app() -> pt.App:
    app = pt.App(database="unused.db")
    app.register_command(Order)
    packer = pt.PatternWorker("packer", "packs orders", retry=pt.Backoff(max_attempts=1))

    @packer.on_command("shop/order")
    async def pack(ctx: pt.HandlerContext, cmd: Order, state: None) -> None:
        if ctx.is_replay:
            await trio.sleep(float(os.environ.get("SHOP_REPLAY_DELAY", "0")))
        elif cmd.item.startswith("broken") and not Path(f"fixed-{cmd.item}").exists():
            raise RuntimeError(f"cannot pack {cmd.item}")

    app.register_worker(packer)
    return app


app = create_app()
"""

TOKEN = "cli-token"


class Running:
    """A command that keeps running (a server, a follower): its output line by line."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.stderr = cwd / f"stderr-{len(list(cwd.glob('stderr-*')))}.txt"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [EXE, *args],
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, **(env or {})},
            )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first new output line matching ``pattern``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in {timeout} s: {self.seen}")
            if line is None:
                pytest.fail(f"exited before {pattern!r}: {self.seen} {self.stderr.read_text()}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.proc.send_signal(signum)
        return self.finish()

    def finish(self) -> int:
        """The exit code, once every line it printed has been read."""
        code = self.proc.wait(timeout=30)
        while (line := self._lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_shop(
    tmp_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    live: bool = True,
    pattern: str = r"127\.0\.0\.1",
) -> tuple[Running, str]:
    (tmp_path / "shop.py").write_text(SHOP)
    server = Running(
        "serve",
        "shop:create_app",
        "--database",
        "shop.db",
        "--port",
        "0",
        *extra,
        cwd=tmp_path,
        env=env,
    )
    url = server.wait_for(rf"HTTP API and dashboard at (http://{pattern}:\d+)/").group(1)
    if live:
        server.wait_for(r"^serving shop\.db")
    return server, url


def shop_with_orders(tmp_path: Path, count: int) -> None:
    """A shop database whose packer has handled ``count`` orders (replayed next start)."""
    server, url = start_shop(tmp_path)
    try:
        with httpx.Client(base_url=url) as client:
            for index in range(count):
                response = client.post("/commands/shop/order", json={"item": f"i{index}"})
                assert response.status_code == 201
        assert server.stop() == 0
    finally:
        server.kill()


def order(url: str, item: str, token: str | None = TOKEN) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{url}/commands/shop/order", json={"item": item}, headers=headers)
    assert response.status_code == 201, response.text
    message_id: int = response.json()["id"]
    return message_id


def wait_for_dead_letter(url: str, message_id: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        letters = httpx.get(f"{url}/dead-letters").json()["dead_letters"]
        if any(d["message_id"] == message_id for d in letters):
            return
        time.sleep(0.05)
    pytest.fail(f"message {message_id} was not dead-lettered")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A served shop app with a token: its directory and its URL."""
    where = tmp_path_factory.mktemp("shop")
    server, url = start_shop(where, "--token", TOKEN)
    try:
        yield where, url
    finally:
        server.kill()


def run_json(*args: str, cwd: Path) -> Any:
    result = run(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestServe:
    """`serve MODULE:APP` runs the app with its HTTP API until a signal."""

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    def test_serves_until_a_signal(self, tmp_path: Path, signum: int) -> None:
        server, url = start_shop(tmp_path)
        try:
            assert httpx.get(f"{url}/health").json()["status"] == "healthy"
            assert order(url, "apple", token=None) == 1
            assert "<title>petrock-trio</title>" in httpx.get(f"{url}/").text
            assert server.stop(signum) == 0
        finally:
            server.kill()
        assert any("replayed the log (head 0)" in line for line in server.seen)
        offline = run_json("inspect", "--database", "shop.db", cwd=tmp_path)
        assert offline["head"] == 1
        assert offline["positions"]["packer"] == 1

    def test_shows_replay_progress(self, tmp_path: Path) -> None:
        shop_with_orders(tmp_path, 80)
        # Each replayed order now takes 20 ms: start-up lasts over a second.
        server, _ = start_shop(tmp_path, env={"SHOP_REPLAY_DELAY": "0.02"})
        try:
            assert server.stop() == 0
        finally:
            server.kill()
        progress = [line for line in server.seen if line.startswith("replaying the log")]
        assert progress, server.seen
        assert re.match(
            r"replaying the log: state at \d+/80, slowest worker at \d+/80", progress[0]
        )
        assert any("replayed the log (head 80)" in line for line in server.seen)

    def test_a_signal_during_start_up_stops_it(self, tmp_path: Path) -> None:
        shop_with_orders(tmp_path, 80)
        server, _ = start_shop(tmp_path, env={"SHOP_REPLAY_DELAY": "0.05"}, live=False)
        try:
            server.wait_for(r"^replaying the log")
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                # A stop during replay may wait for the replay; a second signal is at once.
                server.proc.send_signal(signal.SIGTERM)
            assert server.finish() == 0
        finally:
            server.kill()
        assert any("stopped during start-up" in line for line in server.seen), server.seen

    def test_the_token_guards_commands(self, shop: tuple[Path, str]) -> None:
        _, url = shop
        response = httpx.post(f"{url}/commands/shop/order", json={"item": "x"})
        assert response.status_code == 401

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            pytest.param("shop", "expected MODULE:APP", id="no-colon"),
            pytest.param("nosuchmodule:app", "cannot import", id="no-module"),
            pytest.param("shop:nothing", "has no attribute", id="no-attribute"),
            pytest.param("shop:Order", "not an App", id="not-an-app"),
        ],
    )
    def test_bad_targets(self, tmp_path: Path, target: str, message: str) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        result = run("serve", target, cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr


class TestInspect:
    """`inspect` reads a running app over HTTP or its database directly."""

    def test_live_and_offline_agree(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        order(url, "pear")
        live = run_json("inspect", "--url", url, cwd=where)
        assert live["running"] is True
        assert live["workers"]["packer"]["health"]["status"] in {"healthy", "degraded"}
        # Positions reach the database a moment after the worker is done.
        deadline = time.monotonic() + 10
        while True:
            offline = run_json("inspect", "--database", "shop.db", cwd=where)
            if offline["positions"].get("packer") == live["head"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert offline["head"] == live["head"]
        assert offline["positions"]["packer"] == live["head"]

    def test_tables(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        live = run("inspect", "--url", url, cwd=where)
        assert live.returncode == 0, live.stderr
        assert "packer" in live.stdout
        assert "Dead letters" in live.stdout
        offline = run("inspect", "--database", "shop.db", cwd=where)
        assert offline.returncode == 0, offline.stderr
        assert "read from the database" in offline.stdout
        assert "packer" in offline.stdout

    def test_needs_exactly_one_source(self, tmp_path: Path) -> None:
        (tmp_path / "x.db").touch()
        for args in ([], ["--url", "http://127.0.0.1:1", "--database", "x.db"]):
            result = run("inspect", *args, cwd=tmp_path)
            assert result.returncode == 2
            assert "either --url or --database" in result.stderr

    def test_unreachable_app(self, tmp_path: Path) -> None:
        result = run("inspect", "--url", "http://127.0.0.1:9", cwd=tmp_path)
        assert result.returncode == 1
        assert "cannot reach" in result.stderr


class TestDeadLetters:
    """`dead-letters list` and `dead-letters retry`."""

    def test_list_and_retry(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        message_id = order(url, "broken-vase")
        wait_for_dead_letter(url, message_id)

        listed = run("dead-letters", "list", "--url", url, cwd=where)
        assert listed.returncode == 0, listed.stderr
        assert "broken-vase" in listed.stdout
        mine = [
            d
            for d in run_json("dead-letters", "list", "--database", "shop.db", cwd=where)
            if d["message_id"] == message_id
        ]
        assert [(d["worker"], d["command_name"], d["attempts"]) for d in mine] == [
            ("packer", "shop/order", 1)
        ]
        only = run_json("dead-letters", "list", "--url", url, "--worker", "nobody", cwd=where)
        assert only == []

        retry = ("dead-letters", "retry", "packer", str(message_id), "--url", url, "--wait")
        no_token = run(*retry, cwd=where)
        assert no_token.returncode == 1
        assert "401" in no_token.stderr

        again = run(*retry, "--token", TOKEN, cwd=where)
        assert again.returncode == 1
        assert "failed again" in again.stdout
        assert "2 attempts" in again.stdout

        (where / "fixed-broken-vase").touch()
        fixed = run(*retry, cwd=where, env={"PETROCK_TRIO_TOKEN": TOKEN})
        assert fixed.returncode == 0, fixed.stderr
        assert "dead letter resolved" in fixed.stdout
        left = run_json("dead-letters", "list", "--url", url, cwd=where)
        assert all(d["message_id"] != message_id for d in left)

        gone = run(*retry, "--token", TOKEN, cwd=where)
        assert gone.returncode == 1
        assert "404" in gone.stderr


class TestLogTail:
    """`log tail` prints the last messages, and follows new ones."""

    def test_last_messages(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        first = order(url, "plum")
        second = order(url, "fig")
        result = run("log", "tail", "--database", "shop.db", "-n", "2", cwd=where)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 2
        assert lines[0].split()[0] == str(first)
        assert "shop/order" in lines[1]
        assert '"item":"fig"' in lines[1]
        rows = [
            json.loads(line)
            for line in run(
                "log", "tail", "--database", "shop.db", "-n", "1", "--json", cwd=where
            ).stdout.splitlines()
        ]
        assert [(r["id"], r["name"], r["payload"]) for r in rows] == [
            (second, "shop/order", {"item": "fig"})
        ]

    def test_follow(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        last = order(url, "kiwi")
        follower = Running(
            "log",
            "tail",
            "--database",
            "shop.db",
            "-n",
            "1",
            "--follow",
            "--interval",
            "0.05",
            cwd=where,
        )
        try:
            follower.wait_for(rf"^\s*{last}\s.*kiwi")
            newer = order(url, "mango")
            follower.wait_for(rf"^\s*{newer}\s.*mango")
            assert follower.stop() == 0
        finally:
            follower.kill()


def test_demo_serves_and_recovers_from_a_flaky_summariser(tmp_path: Path) -> None:
    demo = Running("demo", "--serve", "--flaky", "--port", "0", cwd=tmp_path)
    try:
        url = demo.wait_for(r"HTTP API and dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
        assert httpx.get(f"{url}/inspect").status_code == 200
        demo.wait_for(r"health: degraded .*summarizer")
        demo.wait_for(r"the summariser works again")
        demo.wait_for(r"still serving the dashboard")
        report = httpx.get(f"{url}/inspect").json()
        assert report["workers"]["items-summaries"]["lag"] == 0
        assert httpx.get(f"{url}/health").status_code == 200
        assert demo.stop() == 0
    finally:
        demo.kill()
    assert any("6/6" in line for line in demo.seen)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is absent"
)
def test_promtool_accepts_the_demos_metrics(tmp_path: Path) -> None:
    demo = Running("demo", "--serve", "--port", "0", cwd=tmp_path)
    try:
        url = demo.wait_for(r"HTTP API and dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
        demo.wait_for(r"still serving the dashboard")
        text = httpx.get(f"{url}/metrics").text
        assert demo.stop() == 0
    finally:
        demo.kill()
    assert 'petrock_worker_lag_messages{worker="items-summaries"} 0.0' in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


# --- who may drive a served app, and failures the command line reports in one line -----


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The command line's own error: stderr with no traceback, ending in one Error line."""
    assert "Traceback (most recent call last)" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, result
    assert lines[-1].startswith("Error: "), result.stderr
    return lines


class TestExposure:
    """Beyond loopback `serve` wants a token, or --insecure-no-token."""

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
    def test_no_token_beyond_loopback_is_refused(self, tmp_path: Path, host: str) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        result = run("serve", "shop:create_app", "--host", host, "--port", "0", cwd=tmp_path)
        assert result.returncode == 2
        (line,) = error_lines(result)
        assert "--token" in line
        assert "--insecure-no-token" in line
        assert not (tmp_path / "unused.db").exists()

    def test_insecure_no_token_serves_and_warns(self, tmp_path: Path) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        server = Running(
            "serve",
            "shop:create_app",
            "--database",
            "shop.db",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--insecure-no-token",
            cwd=tmp_path,
        )
        try:
            port = server.wait_for(r"HTTP API and dashboard at http://0\.0\.0\.0:(\d+)/").group(1)
            server.wait_for(r"^serving shop\.db")
            assert order(f"http://127.0.0.1:{port}", "open", token=None) == 1
            assert server.stop() == 0
        finally:
            server.kill()
        assert "petrock.http.insecure" in server.stderr.read_text()

    def test_a_token_beyond_loopback_serves_and_warns_that_reads_are_open(
        self, tmp_path: Path
    ) -> None:
        server, _ = start_shop(
            tmp_path, "--host", "0.0.0.0", "--token", TOKEN, pattern=r"0\.0\.0\.0"
        )
        try:
            assert server.stop() == 0
        finally:
            server.kill()
        assert "petrock.http.exposed" in server.stderr.read_text()


class TestAllowedHosts:
    """--allowed-host, or PETROCK_TRIO_ALLOWED_HOSTS, adds names to loopback's."""

    @pytest.mark.parametrize(
        ("extra", "env"),
        [
            pytest.param(
                ("--allowed-host", "a.example", "--allowed-host", "b.example"), {}, id="flags"
            ),
            pytest.param((), {"PETROCK_TRIO_ALLOWED_HOSTS": "a.example, b.example"}, id="env"),
        ],
    )
    def test_names_are_allowed(
        self, tmp_path: Path, extra: tuple[str, ...], env: dict[str, str]
    ) -> None:
        server, url = start_shop(tmp_path, *extra, env=env)
        try:
            for host in ("a.example", "b.example:8000", "localhost"):
                assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200
            refused = httpx.get(f"{url}/health", headers={"Host": "evil.example"})
            assert refused.status_code == 403
            assert refused.json()["error"]["type"] == "HostNotAllowed"
            assert server.stop() == 0
        finally:
            server.kill()

    def test_a_bad_name_is_a_usage_error(self, tmp_path: Path) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        result = run("serve", "shop:create_app", "--allowed-host", "http://x", cwd=tmp_path)
        assert result.returncode == 2
        assert "--allowed-host" in result.stderr
        assert "not a host name" in result.stderr


BAD_ROWS = [
    (1e20, "other/far-future", b'{"a": 1}'),
    ("yesterday", "other/words", b'{"a": 2}'),
    (1700000000.0, "other/not-json", b"not json {"),
]


def database_with_bad_rows(path: Path) -> None:
    """A SQLite log holding one good message, then rows another program wrote."""

    async def create() -> None:
        async with pt.open_log(str(path)) as log:
            await log.store.head()

    trio.run(create)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO messages (timestamp, name, payload) VALUES (?, ?, ?)",
            (1700000000.0, "shop/order", b'{"item":"good"}'),
        )
        conn.executemany(
            "INSERT INTO messages (timestamp, name, payload) VALUES (?, ?, ?)", BAD_ROWS
        )
    conn.close()


class TestLogTailOfAnotherProgramsRows:
    def test_rows_are_printed_marked_undecodable(self, tmp_path: Path) -> None:
        database_with_bad_rows(tmp_path / "bad.db")
        result = run("log", "tail", "--database", "bad.db", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 4
        assert "undecodable" not in lines[0]
        assert '"item":"good"' in lines[0]
        for line, (_, name, _) in zip(lines[1:], BAD_ROWS, strict=True):
            assert name in line
            assert "undecodable" in line
        assert "yesterday" in lines[2]

        as_json = run("log", "tail", "--database", "bad.db", "--json", cwd=tmp_path)
        assert as_json.returncode == 0, as_json.stderr
        rows = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert [r["name"] for r in rows] == ["shop/order", *(name for _, name, _ in BAD_ROWS)]
        assert "undecodable" not in rows[0]
        assert [r["timestamp"] for r in rows[1:3]] == [None, None]
        assert all(r["undecodable"] for r in rows[1:])
        assert rows[3]["payload"] == "not json {"


class TestStoreErrors:
    """A database that cannot be opened or written: one line and exit 3, no traceback."""

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(["log", "tail", "--database", "garbage.db"], id="log-tail"),
            pytest.param(["inspect", "--database", "garbage.db"], id="inspect"),
            pytest.param(["dead-letters", "list", "--database", "garbage.db"], id="dead-letters"),
            pytest.param(["serve", "shop:create_app", "--database", "garbage.db"], id="serve"),
            pytest.param(["demo", "--database", "garbage.db"], id="demo"),
        ],
    )
    def test_a_database_that_is_not_one(self, tmp_path: Path, args: list[str]) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        (tmp_path / "garbage.db").write_bytes(b"this is not a database\x00" * 300)
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        line = error_lines(result)[-1]
        assert "garbage.db" in line or "database" in line

    def test_a_disk_full_at_the_final_flush(self, tmp_path: Path) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        (tmp_path / "fullshop.py").write_text(FULL_SHOP)
        server = Running("serve", "fullshop:create_app", "--port", "0", cwd=tmp_path)
        try:
            url = server.wait_for(r"HTTP API and dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
            server.wait_for(r"^serving")
            order(url, "pear", token=None)
            (tmp_path / "disk-full").touch()
            code = server.stop()
        finally:
            server.kill()
        assert code == 3
        stderr = server.stderr.read_text()
        assert "Traceback (most recent call last)" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ")
        assert "No space left on device" in last or "disk is full" in last


FULL_SHOP = """
from pathlib import Path

import petrock_trio as pt
from petrock_trio.stores import open_store
from petrock_trio.testing import FaultyStore
import shop


class DiskFull(FaultyStore):
    async def commit_many(self, commits):
        if Path("disk-full").exists():
            raise pt.StoreError("SQLite: database or disk is full")
        return await self.inner.commit_many(commits)

    async def aclose(self):
        await self.inner.aclose()
        if Path("disk-full").exists():
            raise OSError(28, "No space left on device")


def create_app():
    app = shop.create_app()
    app.store = DiskFull(open_store("full.db"))
    return app
"""


def test_a_port_in_use_is_one_line_and_exit_4(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SHOP)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "shop:create_app", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 4
    (line,) = error_lines(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line
