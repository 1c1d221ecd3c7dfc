"""Opening a log read-only: nothing changes, whatever the database holds."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import petrock_trio as pt
from petrock_trio.stores import Commit, DeadLetterRecord, Store, open_store


def fingerprint(path: Path) -> tuple[str, int, int]:
    """The file's contents, modification time and size: what a read must not change."""
    status = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), status.st_mtime_ns, status.st_size


def companions(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f"{path.name}-*"))


def foreign_sqlite(path: Path, *, wal: bool = False) -> None:
    """Another program's SQLite file: a table of its own, none of the log's."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.commit()
    conn.close()


async def petrock_log(database: str) -> None:
    """A log with two messages, a position and a dead letter."""
    store = open_store(database)
    await store.open()
    try:
        await store.commit_many(
            [
                Commit(
                    appends=[("a/one", b"{}"), ("a/two", b"{}")],
                    positions={"w": 1},
                    dead_letters=[DeadLetterRecord("w", 2, "a/two", "boom", 3, 1.0, 2.0)],
                    timestamp=1.0,
                )
            ]
        )
    finally:
        await store.aclose()


@asynccontextmanager
async def read_only(database: str) -> AsyncIterator[Store]:
    store = open_store(database, read_only=True)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def writes_are_refused(store: Store) -> None:
    with pytest.raises(pt.StoreError, match="read-only"):
        await store.commit_many([Commit(appends=[("a/three", b"{}")])])
    with pytest.raises(pt.StoreError, match="read-only"):
        await store.leases("me", {}, ["w"], ttl=5.0, now=1.0)
    with pytest.raises(pt.StoreError, match="read-only"):
        await store.release_leases({"w": 1})


class TestSQLite:
    async def test_reads_a_log_and_changes_nothing_in_it(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        await petrock_log(str(path))
        before = fingerprint(path)
        async with read_only(str(path)) as store:
            assert await store.head() == 2
            assert [r.name for r in await store.read_after(0, 10)] == ["a/one", "a/two"]
            assert await store.positions() == {"w": 1}
            assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [("w", 2)]
            await writes_are_refused(store)
            assert await store.head() == 2
        assert fingerprint(path) == before

    @pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
    async def test_a_foreign_file_is_refused_untouched(self, tmp_path: Path, wal: bool) -> None:
        path = tmp_path / "other.db"
        foreign_sqlite(path, wal=wal)
        before = fingerprint(path)
        with pytest.raises(pt.ForeignDatabase) as caught:
            await open_store(str(path), read_only=True).open()
        assert caught.value.missing == (
            "messages",
            "positions",
            "dead_letters",
            "retries",
            "leases",
        )
        assert "is not a petrock_trio database" in str(caught.value)
        assert isinstance(caught.value, pt.StoreError)
        assert fingerprint(path) == before
        # Not even a WAL file's -wal and -shm: a reader would create them.
        assert companions(path) == []
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal" if wal else "delete",)
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        conn.close()
        assert tables == [("notes",)]

    async def test_a_log_missing_some_tables_names_them(self, tmp_path: Path) -> None:
        path = tmp_path / "partial.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE positions (worker TEXT)")
        conn.close()
        with pytest.raises(pt.ForeignDatabase) as caught:
            await open_store(str(path), read_only=True).open()
        assert caught.value.missing == ("dead_letters", "retries", "leases")

    async def test_an_empty_file_is_not_a_log(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.db"
        path.touch()
        with pytest.raises(pt.ForeignDatabase):
            await open_store(str(path), read_only=True).open()
        assert path.stat().st_size == 0
        assert companions(path) == []

    async def test_a_file_that_is_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "garbage.db"
        path.write_bytes(b"not a database\x00" * 100)
        before = fingerprint(path)
        with pytest.raises(pt.StoreError, match="not a database") as caught:
            await open_store(str(path), read_only=True).open()
        assert not isinstance(caught.value, pt.ForeignDatabase)
        assert fingerprint(path) == before

    async def test_a_missing_file_is_not_created(self, tmp_path: Path) -> None:
        path = tmp_path / "missing.db"
        with pytest.raises(pt.StoreError, match="not a file"):
            await open_store(str(path), read_only=True).open()
        assert not path.exists()

    @pytest.mark.parametrize("database", [":memory:", "file:x?mode=memory&cache=shared"])
    def test_a_database_in_memory_is_refused(self, database: str) -> None:
        with pytest.raises(pt.ConfigurationError, match="database file's path"):
            open_store(database, read_only=True)

    async def test_a_path_with_uri_characters(self, tmp_path: Path) -> None:
        path = tmp_path / "odd ?name#%41.db"
        await petrock_log(str(path))
        async with read_only(str(path)) as store:
            assert await store.head() == 2
        assert not (tmp_path / "odd ").exists()

    async def test_sees_what_a_live_writer_commits(self, tmp_path: Path) -> None:
        path = str(tmp_path / "live.db")
        writer = open_store(path)
        await writer.open()
        try:
            async with read_only(path) as store:
                assert await store.head() == 0
                await writer.commit_many([Commit(appends=[("a/one", b"{}")])])
                assert await store.head() == 1
                assert [r.name for r in await store.read_after(0, 10)] == ["a/one"]
        finally:
            await writer.aclose()

    async def test_open_log_read_only(self, tmp_path: Path) -> None:
        path = tmp_path / "log.db"
        await petrock_log(str(path))
        before = fingerprint(path)
        async with pt.open_log(str(path), read_only=True) as log:
            assert log.head.value == 2
            with pytest.raises(pt.StoreError, match="read-only"):
                await log.store.commit_many([Commit(appends=[("a/three", b"{}")])])
        assert fingerprint(path) == before
        other = tmp_path / "other.db"
        foreign_sqlite(other)
        with pytest.raises(pt.ForeignDatabase):
            async with pt.open_log(str(other), read_only=True):
                pass


@pytest.mark.postgres
class TestPostgres:
    async def test_reads_a_log(self, postgres_url: str) -> None:
        await petrock_log(postgres_url)
        async with read_only(postgres_url) as store:
            assert await store.head() == 2
            assert await store.positions() == {"w": 1}
            assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [("w", 2)]
            await writes_are_refused(store)

    async def test_the_server_refuses_writes_in_its_sessions(self, postgres_url: str) -> None:
        await petrock_log(postgres_url)
        store = open_store(postgres_url, read_only=True)
        await store.open()
        try:
            reader = store._reader  # type: ignore[attr-defined]
            with pytest.raises(pt.StoreError, match="read-only transaction"):
                await reader.run([(b"DELETE FROM messages", ())], prepare=False)
            assert await store.head() == 2
        finally:
            await store.aclose()

    async def test_a_schema_without_the_log_is_refused_and_left_empty(
        self, postgres_url: str
    ) -> None:
        psycopg = pytest.importorskip("psycopg")
        with pytest.raises(pt.ForeignDatabase) as caught:
            await open_store(postgres_url, read_only=True).open()
        assert caught.value.missing == (
            "messages",
            "positions",
            "dead_letters",
            "retries",
            "leases",
        )
        with psycopg.connect(postgres_url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = "
                "current_schema()::regnamespace"
            ).fetchone()
        assert tables == (0,)

    async def test_a_server_that_is_not_there(self) -> None:
        store = open_store("postgresql://nobody@127.0.0.1:1/nothing", read_only=True)
        with pytest.raises(pt.StoreError, match="cannot connect"):
            await store.open()


async def test_the_writer_still_makes_a_wal_log(tmp_path: Path) -> None:
    """The writer's way of opening is unchanged: a new file becomes a WAL log."""
    path = tmp_path / "new.db"
    await petrock_log(str(path))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == (2,)
    conn.close()
