"""The command line's reading commands never write: not to a log, not to another
program's database, which they refuse in one line."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import structlog
import trio
from click.testing import CliRunner, Result

from petrock_trio._cli import main
from petrock_trio.stores import Commit, DeadLetterRecord, open_store
from tests.test_cli import Running, error_lines, run

# Every command that reads a database, with the arguments it needs besides --database.
READERS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("inspect",): (),
    ("dead-letters", "list"): (),
    ("dead-letters", "show"): ("w", "2"),
    ("log", "tail"): (),
}
# Commands whose --database is what they serve and write.
WRITERS: set[tuple[str, ...]] = {("serve",), ("demo",)}
# Operators' verbs that write what they change to a log, after a read-only look
# refused, untouched, a database that is not one (tests/test_operator_verbs.py).
WRITERS |= {("dead-letters", "discard"), ("workers", "pause"), ("workers", "resume")}


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    """Each command configures logging; the tests after these must not inherit it."""
    configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)
    # A traceback would be an exception other than the exit click makes.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def fingerprint(path: Path) -> tuple[str, int, int]:
    status = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), status.st_mtime_ns, status.st_size


def companions(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f"{path.name}-*"))


async def _write_log(database: str) -> None:
    store = open_store(database)
    await store.open()
    try:
        await store.commit_many(
            [
                Commit(
                    appends=[("shop/order", b'{"item":"a"}'), ("shop/order", b'{"item":"b"}')],
                    positions={"w": 1},
                    dead_letters=[DeadLetterRecord("w", 2, "shop/order", "boom", 3, 1.0, 2.0)],
                    timestamp=1700000000.0,
                )
            ]
        )
    finally:
        await store.aclose()


def petrock_file(path: Path) -> Path:
    """A log on SQLite, closed by its writer: messages, a position, a dead letter."""
    trio.run(_write_log, str(path))
    return path


def foreign_file(path: Path, *, wal: bool) -> Path:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('not yours')")
    conn.commit()
    conn.close()
    return path


def reading_commands() -> list[tuple[str, ...]]:
    """Every command of the group with a --database option, found by walking it."""
    found: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        elif any(getattr(p, "name", None) == "database" for p in command.params):
            found.append(path)

    walk(main, ())
    return sorted(found)


def test_every_command_that_reads_a_database_is_checked_here() -> None:
    assert sorted({*READERS, *WRITERS}) == reading_commands()


def every_read(database: str) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    for command, extra in READERS.items():
        for json_flag in ((), ("--json",)):
            yield command, [*command, *extra, "--database", database, *json_flag]


class TestSQLite:
    def test_a_log_is_read_and_left_as_it_was(self, tmp_path: Path) -> None:
        path = petrock_file(tmp_path / "log.db")
        before = fingerprint(path)
        for _, args in every_read(str(path)):
            result = invoke(*args)
            assert result.exit_code == 0, (args, result.output)
            assert fingerprint(path) == before, args
        inspected = json.loads(invoke("inspect", "--database", str(path), "--json").stdout)
        assert (inspected["head"], inspected["positions"]) == (2, {"w": 1})
        tail = invoke("log", "tail", "--database", str(path), "--json").stdout.splitlines()
        assert [json.loads(line)["payload"] for line in tail] == [{"item": "a"}, {"item": "b"}]
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (2,)
        conn.close()

    @pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
    def test_a_foreign_file_is_refused_in_one_line_and_left_as_it_was(
        self, tmp_path: Path, wal: bool
    ) -> None:
        path = foreign_file(tmp_path / "theirs.db", wal=wal)
        before = fingerprint(path)
        for _, args in every_read(str(path)):
            result = invoke(*args)
            assert result.exit_code == 3, (args, result.output)
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith("Error: "), line
            assert "is not a petrock_trio database" in line
            assert fingerprint(path) == before, args
            assert companions(path) == [], args
        conn = sqlite3.connect(path)
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal" if wal else "delete",)
        conn.close()
        assert tables == [("notes",)]

    def test_through_the_installed_command(self, tmp_path: Path) -> None:
        """The same through a real process: a log read, a foreign file refused."""
        log = petrock_file(tmp_path / "log.db")
        theirs = foreign_file(tmp_path / "theirs.db", wal=False)
        before = fingerprint(log), fingerprint(theirs)
        good = run("inspect", "--database", "log.db", cwd=tmp_path)
        assert good.returncode == 0, good.stderr
        assert "read from the database" in good.stdout
        bad = run("log", "tail", "--database", "theirs.db", cwd=tmp_path)
        assert bad.returncode == 3
        (line,) = error_lines(bad)
        assert "theirs.db is not a petrock_trio database" in line
        assert (fingerprint(log), fingerprint(theirs)) == before
        assert companions(theirs) == []

    def test_following_the_tail_writes_nothing(self, tmp_path: Path) -> None:
        path = petrock_file(tmp_path / "log.db")
        before = fingerprint(path)
        follower = Running(
            "log", "tail", "--database", "log.db", "--follow", "--interval", "0.05", cwd=tmp_path
        )
        try:
            follower.wait_for(r"^\s*2\s.*shop/order")
            assert follower.stop(signal.SIGINT) == 0
        finally:
            follower.kill()
        assert fingerprint(path) == before

    def test_a_sqlite_url(self, tmp_path: Path) -> None:
        path = petrock_file(tmp_path / "log.db")
        result = invoke("inspect", "--database", f"sqlite:///{path}", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["head"] == 2

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            pytest.param(lambda p: p.write_bytes(b"junk\x00" * 400), "not a database", id="junk"),
            pytest.param(lambda p: p.touch(), "is not a petrock_trio database", id="empty"),
        ],
    )
    def test_files_that_hold_no_log(self, tmp_path: Path, make: object, message: str) -> None:
        path = tmp_path / "x.db"
        make(path)  # type: ignore[operator]
        before = fingerprint(path)
        for _, args in every_read(str(path)):
            result = invoke(*args)
            assert result.exit_code == 3, (args, result.output)
            (line,) = result.stderr.strip().splitlines()
            assert message in line
        assert fingerprint(path) == before
        assert companions(path) == []

    @pytest.mark.parametrize("target", ["missing.db", "."], ids=["missing", "directory"])
    def test_a_path_that_is_no_file_is_bad_usage(self, tmp_path: Path, target: str) -> None:
        for _, args in every_read(str(tmp_path / target)):
            result = invoke(*args)
            assert result.exit_code == 2, (args, result.output)
            assert "Invalid value for '--database'" in result.stderr
        assert not (tmp_path / "missing.db").exists()


@pytest.mark.postgres
class TestPostgres:
    def test_a_log_is_read(self, postgres_url: str) -> None:
        trio.run(_write_log, postgres_url)
        for command, args in every_read(postgres_url):
            result = invoke(*args)
            assert result.exit_code == 0, (args, result.output)
            if command == ("inspect",) and "--json" in args:
                report = json.loads(result.stdout)
                assert (report["head"], report["positions"]) == (2, {"w": 1})

    def test_a_database_without_the_log_is_refused_and_left_empty(self, postgres_url: str) -> None:
        psycopg = pytest.importorskip("psycopg")
        for _, args in every_read(postgres_url):
            result = invoke(*args)
            assert result.exit_code == 3, (args, result.output)
            (line,) = result.stderr.strip().splitlines()
            assert "is not a petrock_trio database" in line
        with psycopg.connect(postgres_url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_class "
                "WHERE relnamespace = current_schema()::regnamespace"
            ).fetchone()
        assert found == (0,)

    def test_a_server_that_cannot_be_reached(self) -> None:
        result = invoke("inspect", "--database", "postgresql://nobody@127.0.0.1:1/none")
        assert result.exit_code == 3
        (line,) = result.stderr.strip().splitlines()
        assert "cannot connect to PostgreSQL" in line
