"""The command line's edges: its version, environment, colours, completion, JSON, and
expected failures in one line."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
import structlog
import trio
from click.testing import CliRunner, Result

import petrock_trio as pt
from petrock_trio._cli import main
from petrock_trio._cli_errors import run_trio
from petrock_trio.stores import Commit, DeadLetterRecord, open_store
from tests.test_cli import (
    EXE,
    SHOP,
    TOKEN,
    error_lines,
    order,
    run,
    start_shop,
    wait_for_dead_letter,
)

# An SGR sequence that sets a foreground colour (30-37, 38;..., 90-97); bold is not one.
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])[;m]")


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    """Each command configures logging; the tests after these must not inherit it."""
    configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    # The variables these tests are about start unset, whatever the shell running them has.
    base: dict[str, str | None] = {
        "PETROCK_TRIO_URL": None,
        "PETROCK_TRIO_DATABASE": None,
        "NO_COLOR": None,
        "FORCE_COLOR": None,
    }
    result = CliRunner().invoke(main, list(args), env={**base, **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def one_error(result: Result) -> str:
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: "), line
    return line


async def _write_log(database: str, error: str = "boom") -> None:
    store = open_store(database)
    await store.open()
    try:
        await store.commit_many(
            [
                Commit(
                    appends=[("shop/order", b'{"item":"a"}')],
                    positions={"packer": 1},
                    dead_letters=[DeadLetterRecord("packer", 1, "shop/order", error, 1, 1.0, 2.0)],
                )
            ]
        )
    finally:
        await store.aclose()


@pytest.fixture
def log_file(tmp_path: Path) -> str:
    path = str(tmp_path / "log.db")
    trio.run(_write_log, path)
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    where = tmp_path_factory.mktemp("shop")
    server, url = start_shop(where, "--token", TOKEN)
    try:
        yield where, url
    finally:
        server.kill()


def test_version() -> None:
    result = run("--version", cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"petrock-trio, version {pt.__version__}"


class TestEnvironment:
    """PETROCK_TRIO_URL and PETROCK_TRIO_DATABASE stand in for --url and --database."""

    def test_the_database_from_the_environment(self, log_file: str) -> None:
        for args in (["inspect"], ["dead-letters", "list"], ["log", "tail"]):
            result = invoke(*args, "--json", env={"PETROCK_TRIO_DATABASE": log_file})
            assert result.exit_code == 0, (args, result.output)
        report = json.loads(
            invoke("inspect", "--json", env={"PETROCK_TRIO_DATABASE": log_file}).stdout
        )
        assert report["positions"] == {"packer": 1}

    def test_the_url_from_the_environment(self, shop: tuple[Path, str]) -> None:
        _, url = shop
        result = invoke("inspect", "--json", env={"PETROCK_TRIO_URL": url})
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["running"] is True

    def test_the_command_line_wins_over_the_other_variable(
        self, log_file: str, shop: tuple[Path, str]
    ) -> None:
        _, url = shop
        offline = invoke("inspect", "--json", "--database", log_file, env={"PETROCK_TRIO_URL": url})
        assert offline.exit_code == 0, offline.output
        assert "running" not in json.loads(offline.stdout)
        live = invoke("inspect", "--json", "--url", url, env={"PETROCK_TRIO_DATABASE": log_file})
        assert live.exit_code == 0, live.output
        assert json.loads(live.stdout)["running"] is True

    def test_both_variables_and_no_option_is_bad_usage(self, log_file: str) -> None:
        env = {"PETROCK_TRIO_DATABASE": log_file, "PETROCK_TRIO_URL": "http://127.0.0.1:9"}
        result = invoke("inspect", env=env)
        assert result.exit_code == 2
        assert "PETROCK_TRIO_URL and PETROCK_TRIO_DATABASE are both set" in result.stderr

    def test_both_options_is_bad_usage(self, log_file: str) -> None:
        result = invoke("inspect", "--database", log_file, "--url", "http://127.0.0.1:9")
        assert result.exit_code == 2
        assert "either --url or --database" in result.stderr

    def test_a_variable_that_names_no_file_is_bad_usage(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "missing.db")
        result = invoke("inspect", env={"PETROCK_TRIO_DATABASE": missing})
        assert result.exit_code == 2
        assert "does not exist" in result.stderr
        assert not Path(missing).exists()


class TestColour:
    """Health is coloured on a terminal, and NO_COLOR (set and not empty) turns it off."""

    def test_no_color(self, shop: tuple[Path, str]) -> None:
        _, url = shop
        coloured = invoke("inspect", "--url", url, env={"FORCE_COLOR": "1"})
        assert coloured.exit_code == 0, coloured.output
        assert COLOUR.search(coloured.stdout), coloured.stdout
        plain = invoke("inspect", "--url", url, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
        assert plain.exit_code == 0, plain.output
        assert not COLOUR.search(plain.stdout), plain.stdout
        assert "packer" in plain.stdout
        # An empty NO_COLOR is as good as unset (no-color.org).
        empty = invoke("inspect", "--url", url, env={"FORCE_COLOR": "1", "NO_COLOR": ""})
        assert COLOUR.search(empty.stdout)

    def test_text_from_the_database_is_not_read_as_markup(self, tmp_path: Path) -> None:
        path = str(tmp_path / "marked.db")
        error = "KeyError: [bold]x[/bold] and [/closing] [red]tags"
        trio.run(_write_log, path, error)
        result = invoke("dead-letters", "list", "--database", path, env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert error in result.stdout


class TestCompletion:
    """click's shell completion, as README's command-line paragraph documents it."""

    def test_the_bash_script(self) -> None:
        result = run(cwd=Path.cwd(), env={"_PETROCK_TRIO_COMPLETE": "bash_source"})
        assert result.returncode == 0, result.stderr
        assert "_petrock_trio_completion()" in result.stdout
        assert "complete -o nosort -F _petrock_trio_completion petrock-trio" in result.stdout

    @pytest.mark.parametrize(
        ("words", "expected"),
        [
            pytest.param("petrock-trio dead", ["plain,dead-letters"], id="command"),
            pytest.param(
                "petrock-trio dead-letters s", ["plain,show", "plain,status"], id="subcommand"
            ),
            pytest.param("petrock-trio inspect --database lo", ["file,lo"], id="database-file"),
        ],
    )
    def test_completes(self, words: str, expected: list[str]) -> None:
        env = {
            "_PETROCK_TRIO_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = run(cwd=Path.cwd(), env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected


class TestJson:
    def test_retry_answers_json(self, shop: tuple[Path, str]) -> None:
        where, url = shop
        message_id = order(url, "broken-lamp")
        wait_for_dead_letter(url, message_id)
        # --wait: the final answer, resolved or failed again.
        retry = (
            "dead-letters",
            "retry",
            "packer",
            str(message_id),
            "--url",
            url,
            "--json",
            "--wait",
        )
        again = invoke(*retry, "--token", TOKEN)
        assert again.exit_code == 1
        answer = json.loads(again.stdout)
        assert answer["resolved"] is False
        assert answer["dead_letter"]["attempts"] == 2
        (where / "fixed-broken-lamp").touch()
        fixed = invoke(*retry, "--token", TOKEN)
        assert fixed.exit_code == 0, fixed.output
        assert json.loads(fixed.stdout)["resolved"] is True


class _NotAnApp(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>a web page</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def web_page() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotAnApp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class TestOneLine:
    """Expected failures: one Error line, a documented exit code, no traceback."""

    @pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://"])
    def test_a_url_that_is_not_one_is_bad_usage(self, url: str) -> None:
        result = invoke("inspect", "--url", url)
        assert result.exit_code == 2
        assert "is not an http:// or https:// URL" in result.stderr or "not a URL" in (
            result.stderr
        )

    def test_a_server_that_is_not_an_app(self, web_page: str) -> None:
        for args in (["inspect"], ["dead-letters", "list"]):
            result = invoke(*args, "--url", web_page)
            assert result.exit_code == 1, result.output
            assert "without a JSON object" in one_error(result)

    def test_an_app_that_is_not_there(self) -> None:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        result = invoke("inspect", "--url", f"http://127.0.0.1:{port}")
        assert result.exit_code == 1
        assert "cannot reach" in one_error(result)

    def test_a_malformed_postgresql_url(self) -> None:
        pytest.importorskip("psycopg")
        result = invoke("inspect", "--database", "postgresql://u@[::1")
        assert result.exit_code == 2
        assert "invalid PostgreSQL URL" in one_error(result)

    @pytest.mark.parametrize("interval", ["0", "-1"])
    def test_a_follow_interval_that_is_not_positive(self, log_file: str, interval: str) -> None:
        result = invoke("log", "tail", "--database", log_file, "-f", "--interval", interval)
        assert result.exit_code == 2
        assert "--interval" in result.stderr

    def test_an_unreadable_file(self, log_file: str) -> None:
        Path(log_file).chmod(0)
        command = [EXE, "inspect", "--database", log_file]
        if os.geteuid() == 0:
            # Root reads any file: the command runs without the capabilities that let it.
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("root reads any file, and util-linux's setpriv is not installed")
            drop = "-dac_override,-dac_read_search"
            command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 3, result.stderr
        (line,) = error_lines(result)
        assert "database" in line

    def test_a_route_that_names_no_command(self, tmp_path: Path) -> None:
        """Refused before the HTTP API listens or the database opens: nothing is said
        to be served that is not."""
        (tmp_path / "shop.py").write_text(
            SHOP.replace('on_command("shop/order")', 'on_command("shop/ordr")')
        )
        result = run("serve", "shop:create_app", "--port", "0", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        (line,) = error_lines(result)
        assert "routes 'shop/ordr'" in line
        assert "did you mean 'shop/order'" in line
        assert "HTTP API" not in result.stdout + result.stderr
        assert not (tmp_path / "unused.db").exists()

    @pytest.mark.parametrize("command", ["demo", "serve"])
    def test_a_port_in_use(self, tmp_path: Path, command: str) -> None:
        (tmp_path / "shop.py").write_text(SHOP)
        args = ["demo", "--serve"] if command == "demo" else ["serve", "shop:create_app"]
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = run(*args, "--port", str(port), cwd=tmp_path)
        assert result.returncode == 4, result.stderr
        line = error_lines(result)[-1]
        assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
        assert "in use" in line


def _serve_logs_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> str:
    """What `serve` beyond loopback prints on a terminal, logs included, until stopped."""
    (tmp_path / "shop.py").write_text(SHOP)
    controller, terminal = pty.openpty()
    args = ["serve", "shop:create_app", "--database", "shop.db", "--host", "0.0.0.0"]
    server = subprocess.Popen(
        [EXE, *args, "--port", "0", "--insecure-no-token"],
        cwd=tmp_path,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, **env},
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        stopping = False
        # Read until it exits: a terminal nobody reads blocks the writer.
        while server.poll() is None and time.monotonic() < deadline:
            # Stopped once it serves: a signal before that is an interrupt (exit 130).
            if not stopping and b"serving shop.db" in seen:
                server.send_signal(signal.SIGINT)
                stopping = True
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # the other end closed
                    break
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "petrock.http.insecure" in text, text
    assert server.returncode == 0, text
    return text


@pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)], ids=["empty", "set"])
def test_no_color_in_the_logs(tmp_path: Path, no_color: str, coloured: bool) -> None:
    text = _serve_logs_on_a_terminal(tmp_path, {"NO_COLOR": no_color})
    line = next(line for line in text.splitlines() if "petrock.http.insecure" in line)
    assert bool(COLOUR.search(line)) is coloured, repr(line)


class TestRunTrio:
    """How a command's Trio run ends: expected failures in one line, bugs as they are."""

    @staticmethod
    async def _in_a_nursery(error: BaseException) -> None:
        async def fail() -> None:
            raise error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()

    def test_an_interrupt_while_a_nursery_starts_is_an_interrupt(self) -> None:
        with pytest.raises(SystemExit) as caught:
            run_trio(self._in_a_nursery, KeyboardInterrupt())
        assert caught.value.code == 130

    @pytest.mark.parametrize(
        ("error", "code"),
        [
            pytest.param(pt.StoreError("SQLite: disk I/O error"), 3, id="store"),
            pytest.param(OSError(errno.EADDRINUSE, "Address already in use"), 4, id="bind"),
            pytest.param(pt.ConfigurationError("bad\nsetting"), 2, id="configuration"),
        ],
    )
    def test_expected_failures_in_a_nursery(self, error: BaseException, code: int) -> None:
        with pytest.raises(click.ClickException) as caught:
            run_trio(self._in_a_nursery, error)
        assert caught.value.exit_code == code
        assert "\n" not in caught.value.message

    def test_a_bug_keeps_its_traceback(self) -> None:
        with pytest.raises(BaseExceptionGroup) as caught:
            run_trio(self._in_a_nursery, RuntimeError("a bug"))
        assert caught.group_contains(RuntimeError, match="a bug")
