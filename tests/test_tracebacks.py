"""A failure keeps its traceback: in the logs, the dead-letter table, the HTTP API and
the command line; and databases made before dead letters kept one still open."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio._tracebacks import format_traceback
from petrock_trio.stores import Commit, DeadLetterRecord, open_store
from petrock_trio.testing import FaultyStore, memory_database, serving
from tests.test_http import api

EXE = shutil.which("petrock-trio") or str(Path(sys.executable).parent / "petrock-trio")


@pt.command("tb-test/parcel")
@attrs.frozen
class Parcel:
    label: str
    note: str = ""


@attrs.define
class Depot:
    """What the handler does; the tests change it between attempts."""

    broken: bool = True
    message: str = "the conveyor jammed"
    slow: bool = False


def jam(message: str) -> None:
    raise RuntimeError(message)


def build(
    database: str = ":memory:",
    *,
    worker: str = "sorter",
    store: pt.Store | None = None,
    **kw: Any,
) -> tuple[pt.App, Depot]:
    """An app whose worker dead-letters every parcel on its first failure."""
    depot = Depot()
    app = pt.App(database=database, store=store, shutdown_grace=0, **kw)
    app.register_command(Parcel)
    sorter: pt.PatternWorker[None] = pt.PatternWorker(
        worker,
        retry=pt.Backoff(max_attempts=1),
        handler_timeout=2.0,
        health=pt.HealthThresholds(unhealthy_errors_per_minute=1e9),
    )

    @sorter.on_command(Parcel)
    async def sort_parcel(ctx: pt.HandlerContext, cmd: Parcel, state: None) -> None:
        if depot.slow:
            await trio.sleep(60)  # cut off by handler_timeout
        if depot.broken:
            jam(depot.message)

    app.register_worker(sorter)
    return app, depot


class TestFormatTraceback:
    """Tracebacks are formatted as Python prints them, and bounded."""

    def test_a_chain_is_kept_whole(self) -> None:
        try:
            try:
                jam("inner")
            except RuntimeError as exc:
                raise KeyError("outer") from exc
        except KeyError as exc:
            text = format_traceback(exc)
        assert text.startswith("Traceback (most recent call last):")
        assert "in jam" in text
        assert "RuntimeError: inner" in text
        assert "direct cause" in text
        assert text.rstrip().endswith("KeyError: 'outer'")

    def test_a_long_one_keeps_its_start_and_end(self) -> None:
        error = ValueError("x" * 50_000 + " the end")
        text = format_traceback(error, limit=1000)
        assert len(text) < 1100
        assert text.startswith("ValueError: xxx")
        assert text.rstrip().endswith("the end")
        assert "characters of the traceback cut" in text


class TestDeadLetterTraceback:
    """A dead letter stores the formatted traceback of the failure that ended it."""

    @pytest.fixture(params=["memory", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
    def database(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "postgres":
            return str(request.getfixturevalue("postgres_url"))
        return ":memory:" if request.param == "memory" else str(tmp_path / "depot.db")

    async def test_stored_and_replaced_by_a_redrive_that_fails_again(self, database: str) -> None:
        app, depot = build(database)
        async with serving(app):
            await app.execute(Parcel("p-1"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
            assert letter.traceback is not None
            assert letter.traceback.startswith("Traceback (most recent call last):")
            assert "in sort_parcel" in letter.traceback
            assert "in jam" in letter.traceback
            assert letter.traceback.rstrip().endswith("RuntimeError: the conveyor jammed")
            assert letter.to_dict()["traceback"] == letter.traceback

            depot.message = "the belt snapped"
            await app.redrive("sorter", letter.message_id)
            (again,) = await app.dead_letters()
            assert again.attempts == 2
            assert again.traceback is not None
            assert again.traceback.rstrip().endswith("RuntimeError: the belt snapped")

    async def test_a_timeout_shows_where_the_handler_was_waiting(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, depot = build()
        depot.slow = True
        async with serving(app):
            await app.execute(Parcel("p-1"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
        assert letter.traceback is not None
        assert "HandlerTimeout" in letter.traceback.splitlines()[-1]
        # The cancellation that cut it off is the timeout's cause: it names the line.
        assert "Cancelled" in letter.traceback
        assert "in sort_parcel" in letter.traceback
        assert "await trio.sleep(60)" in letter.traceback

    async def test_a_payload_that_does_not_decode(self) -> None:
        store = FaultyStore(open_store(":memory:"))
        store.corrupt(1)
        app, _ = build(store=store)
        async with serving(app):
            await app.execute(Parcel("p-1"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
        assert letter.traceback is not None
        assert "DecodeError" in letter.traceback.splitlines()[-1]


class TestLogLines:
    """Failure lines carry the exception, rendered as a traceback by both renderers."""

    async def test_the_events_carry_the_exception(self) -> None:
        app, _ = build()
        with capture_logs() as logs:
            async with serving(app):
                await app.execute(Parcel("p-1"))
                await app.caught_up()
        failed = next(e for e in logs if e["event"] == "petrock.handler.failed")
        dead = next(e for e in logs if e["event"] == "petrock.dead_lettered")
        assert isinstance(failed["exc_info"], RuntimeError)
        assert dead["exc_info"] is failed["exc_info"]
        assert "in jam" in format_traceback(dead["exc_info"])

    async def test_json_lines_hold_a_structured_traceback_without_locals(self) -> None:
        stream = io.StringIO()
        pt.configure_logging(json=True, stream=stream)
        app, _ = build()
        async with serving(app):
            await app.execute(Parcel("p-1", note="secret-note"))
            await app.caught_up()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        for event in ("petrock.handler.failed", "petrock.dead_lettered"):
            (line,) = [entry for entry in lines if entry["event"] == event]
            (exception,) = line["exception"]
            assert exception["exc_type"] == "RuntimeError"
            assert exception["exc_value"] == "the conveyor jammed"
            names = [frame["name"] for frame in exception["frames"]]
            assert names[-2:] == ["sort_parcel", "jam"]
            assert all("locals" not in frame for frame in exception["frames"])
        assert "secret-note" not in stream.getvalue()

    async def test_the_console_shows_the_traceback(self) -> None:
        stream = io.StringIO()
        pt.configure_logging(json=False, stream=stream)
        app, _ = build()
        async with serving(app):
            await app.execute(Parcel("p-1"))
            await app.caught_up()
        text = stream.getvalue()
        assert "petrock.handler.failed" in text
        assert "Traceback" in text
        assert "in jam" in text or "jam" in text.split("Traceback", 1)[1]
        assert "RuntimeError: the conveyor jammed" in text
        assert "\x1b[" not in text  # not a terminal: no colours


# --- databases made before dead letters kept tracebacks ---------------------------------

# The SQLite schema as it was, to build a database the way an older version left it.
OLD_SQLITE_SCHEMA = """
CREATE TABLE messages (
    id        INTEGER PRIMARY KEY,
    timestamp REAL    NOT NULL,
    name      TEXT    NOT NULL,
    payload   BLOB    NOT NULL
);
CREATE TABLE positions (
    worker     TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at REAL    NOT NULL
);
CREATE TABLE dead_letters (
    worker          TEXT    NOT NULL,
    message_id      INTEGER NOT NULL,
    command_name    TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at REAL    NOT NULL,
    last_failed_at  REAL    NOT NULL,
    PRIMARY KEY (worker, message_id)
);
CREATE TABLE retries (
    worker          TEXT    PRIMARY KEY,
    message_id      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at REAL    NOT NULL,
    first_failed_at REAL    NOT NULL
);
CREATE TABLE leases (
    worker     TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at REAL    NOT NULL
);
"""

OLD_POSTGRES_SCHEMA = (
    """CREATE TABLE messages (
        id        BIGINT           PRIMARY KEY,
        timestamp DOUBLE PRECISION NOT NULL,
        name      TEXT             NOT NULL,
        payload   BYTEA            NOT NULL
    )""",
    "CREATE SEQUENCE messages_id_seq AS BIGINT OWNED BY messages.id",
    """CREATE TABLE positions (
        worker     TEXT             PRIMARY KEY,
        position   BIGINT           NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE dead_letters (
        worker          TEXT             NOT NULL,
        message_id      BIGINT           NOT NULL,
        command_name    TEXT             NOT NULL,
        error           TEXT             NOT NULL,
        attempts        BIGINT           NOT NULL,
        first_failed_at DOUBLE PRECISION NOT NULL,
        last_failed_at  DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (worker, message_id)
    )""",
    """CREATE TABLE retries (
        worker          TEXT             PRIMARY KEY,
        message_id      BIGINT           NOT NULL,
        attempts        BIGINT           NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        first_failed_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE leases (
        worker        TEXT             PRIMARY KEY,
        holder        TEXT             NOT NULL,
        epoch         BIGINT           NOT NULL,
        expires_at    DOUBLE PRECISION NOT NULL,
        backend_pid   INTEGER          NOT NULL,
        backend_start TIMESTAMPTZ
    )""",
)

OLD_LETTER = DeadLetterRecord("sorter", 1, "tb-test/parcel", "RuntimeError('old')", 3, 10.0, 20.0)


def old_sqlite_database(path: Path) -> None:
    """A log of one parcel, dead-lettered before tracebacks were kept."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(OLD_SQLITE_SCHEMA)
        conn.execute(
            "INSERT INTO messages VALUES (1, 5.0, 'tb-test/parcel', ?)", (b'{"label":"old"}',)
        )
        conn.execute("INSERT INTO positions VALUES ('sorter', 1, 20.0)")
        conn.execute(
            "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)", attrs.astuple(OLD_LETTER)[:7]
        )
        conn.commit()
    finally:
        conn.close()


def columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")]
    finally:
        conn.close()


class TestOldDatabases:
    """An older database gets the traceback column when opened to write; its dead
    letters stay as they were, with no traceback."""

    async def test_sqlite_gets_the_column_and_keeps_its_letters(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        old_sqlite_database(path)
        assert "traceback" not in columns(path)
        app, _ = build(str(path))
        async with serving(app):
            (old,) = await app.dead_letters()
            assert old == pt.DeadLetter.from_record(OLD_LETTER)
            assert old.traceback is None
            await app.execute(Parcel("new"))
            await app.caught_up()
            old_again, new = await app.dead_letters()
        assert old_again == old
        assert new.traceback is not None
        assert "in jam" in new.traceback
        assert columns(path).count("traceback") == 1
        # Opened again: nothing more to add.
        again, _ = build(str(path))
        async with serving(again):
            assert len(await again.dead_letters()) == 2

    async def test_sqlite_opened_by_several_at_once(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        old_sqlite_database(path)
        stores = [open_store(str(path)) for _ in range(4)]
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(store.open)
        for store in stores:
            assert await store.dead_letters() == [OLD_LETTER]
            await store.aclose()
        assert columns(path).count("traceback") == 1

    async def test_sqlite_read_only_reads_it_and_changes_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        old_sqlite_database(path)
        store = open_store(str(path), read_only=True)
        await store.open()
        try:
            assert await store.dead_letters() == [OLD_LETTER]
        finally:
            await store.aclose()
        assert "traceback" not in columns(path)

    @pytest.mark.postgres
    async def test_postgres_gets_the_column_and_keeps_its_letters(self, postgres_url: str) -> None:
        import psycopg  # noqa: PLC0415 - only where the server exists

        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for statement in OLD_POSTGRES_SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO dead_letters VALUES (%s, %s, %s, %s, %s, %s, %s)",
                attrs.astuple(OLD_LETTER)[:7],
            )
        reader = open_store(postgres_url, read_only=True)
        await reader.open()
        try:
            assert await reader.dead_letters() == [OLD_LETTER]
        finally:
            await reader.aclose()

        store = open_store(postgres_url)
        await store.open()
        try:
            assert await store.dead_letters() == [OLD_LETTER]
            new = attrs.evolve(OLD_LETTER, message_id=2, traceback="Traceback: new")
            await store.commit_many([Commit(dead_letters=[new])])
            assert await store.dead_letters() == [OLD_LETTER, new]
        finally:
            await store.aclose()
        again = open_store(postgres_url)
        await again.open()  # the column is there: nothing to add, no error
        await again.aclose()


# --- the HTTP API and the command line ---------------------------------------------------


@asynccontextmanager
async def dead_lettered(
    database: str = ":memory:", *, worker: str = "sorter", notes: tuple[str, ...] = ("",)
) -> AsyncIterator[tuple[pt.App, Any]]:
    """An app serving its HTTP API, with one dead letter per note."""
    app, _ = build(database, worker=worker)
    async with api(app) as client:
        for index, note in enumerate(notes):
            await app.execute(Parcel(f"p-{index + 1}", note=note))
        await app.caught_up()
        yield app, client


class TestHTTP:
    """GET /dead-letters and /dead-letters/{worker}/{id} carry payload and traceback."""

    async def test_the_list_carries_payload_previews_and_tracebacks(self) -> None:
        big = "n" * 10_000
        async with dead_lettered(notes=("small", big)) as (_, client):
            small_letter, big_letter = (await client.get("/dead-letters")).json()["dead_letters"]
        assert small_letter["payload"] == {"label": "p-1", "note": "small"}
        assert "payload_truncated" not in small_letter
        assert "in jam" in small_letter["traceback"]
        assert big_letter["payload_truncated"] is True
        assert big_letter["payload_bytes"] > 10_000
        assert isinstance(big_letter["payload"], str)
        assert big_letter["payload"].startswith('{"label":"p-2"')
        assert len(big_letter["payload"]) <= 4096
        assert "in jam" in big_letter["traceback"]

    async def test_one_letter_with_its_whole_payload(self) -> None:
        big = "n" * 10_000
        async with dead_lettered(worker="team/sorter", notes=(big,)) as (_, client):
            path = f"/dead-letters/{quote('team/sorter', safe='')}/1"
            letter = (await client.get(path)).json()
            missing = await client.get(f"/dead-letters/{quote('team/sorter', safe='')}/2")
            wrong_method = await client.post(path)
        assert letter["worker"] == "team/sorter"
        assert letter["payload"] == {"label": "p-1", "note": big}
        assert "payload_truncated" not in letter
        assert letter["traceback"].rstrip().endswith("RuntimeError: the conveyor jammed")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "NotFound"
        assert wrong_method.status_code == 405

    async def test_a_message_gone_from_the_log_is_said_so(self) -> None:
        with memory_database() as database:
            async with dead_lettered(database) as (app, client):
                head = app.log.head.value
                conn = sqlite3.connect(database, uri=True)
                conn.execute("DELETE FROM messages WHERE id = 1")
                conn.commit()
                conn.close()
                (letter,) = (await client.get("/dead-letters")).json()["dead_letters"]
                assert head == 1
        assert letter["payload"] is None
        assert letter["payload_error"] == "message 1 is not in the log"
        assert "in jam" in letter["traceback"]

    async def test_many_letters_are_read_a_batch_at_a_time(self) -> None:
        app, _ = build()
        app.register_command(Unsorted)
        async with api(app) as client:
            for index in range(150):
                await app.execute(Parcel(f"p-{index}"))
                await app.execute(Unsorted())  # rows no dead letter is about, in between
            await app.caught_up()
            reads = app.log.store.statistics().reads
            letters = (await client.get("/dead-letters")).json()["dead_letters"]
            used = app.log.store.statistics().reads - reads
        assert [d["payload"]["label"] for d in letters] == [f"p-{i}" for i in range(150)]
        # ceil(150 / 64) reads of the log for their messages (the letters' own read is
        # not a read of the log).
        assert used == 3


@pt.command("tb-test/unsorted")
@attrs.frozen
class Unsorted:
    pass


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [EXE, *args], capture_stdout=True, capture_stderr=True, check=False
    )


class TestShowCommand:
    """`dead-letters show WORKER ID` prints payload and traceback, over --url or --database."""

    async def test_over_url_and_from_the_database_alike(self, tmp_path: Path) -> None:
        database = str(tmp_path / "depot.db")
        async with dead_lettered(database, notes=("fragile",)) as (_, client):
            url = str(client.base_url)
            over_http = await cli("dead-letters", "show", "sorter", "1", "--url", url, "--json")
            text = await cli("dead-letters", "show", "sorter", "1", "--url", url)
            missing = await cli("dead-letters", "show", "sorter", "7", "--url", url)
        from_file = await cli(
            "dead-letters", "show", "sorter", "1", "--database", database, "--json"
        )
        missing_in_file = await cli("dead-letters", "show", "sorter", "7", "--database", database)

        assert over_http.returncode == 0, over_http.stderr
        assert from_file.returncode == 0, from_file.stderr
        live, offline = json.loads(over_http.stdout), json.loads(from_file.stdout)
        assert live == offline
        assert live["payload"] == {"label": "p-1", "note": "fragile"}
        assert "in jam" in live["traceback"]

        assert text.returncode == 0, text.stderr
        shown = text.stdout.decode()
        assert "sorter: message 1 (tb-test/parcel), 1 attempts" in shown
        assert "error: RuntimeError('the conveyor jammed')" in shown
        assert '"note": "fragile"' in shown
        assert "traceback:\nTraceback (most recent call last):" in shown
        assert shown.rstrip().endswith("RuntimeError: the conveyor jammed")

        for result in (missing, missing_in_file):
            assert result.returncode == 1
            assert "no dead letter for message 7" in result.stderr.decode()
            assert len(result.stderr.decode().strip().splitlines()) == 1

    async def test_an_old_letter_has_no_traceback(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        old_sqlite_database(path)
        result = await cli("dead-letters", "show", "sorter", "1", "--database", str(path))
        assert result.returncode == 0, result.stderr
        shown = result.stdout.decode()
        assert '"label": "old"' in shown
        assert shown.rstrip().endswith("traceback:\n(not recorded)")
