"""Snapshots: the store's table, the state codec, loading at start, taking them, showing them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from petrock_trio.stores import Commit, SnapshotRecord, Store, open_store


@pytest.fixture(params=["memory", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return ":memory:" if request.param == "memory" else str(tmp_path / "store.db")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    yield s
    await s.aclose()


def snap(name: str, position: int, state: bytes = b"{}", taken_at: float = 1.0) -> SnapshotRecord:
    return SnapshotRecord(name, position, "1", "S(n: int)", state, taken_at)


class TestSnapshotTable:
    """Snapshots land with the commit that carries them, newest first, two kept per name."""

    async def test_none_at_first(self, store: Store) -> None:
        assert await store.snapshots() == []
        assert await store.snapshots("w") == []

    async def test_written_with_the_position_in_one_transaction(self, store: Store) -> None:
        record = snap("w", 5, b'{"n": 5}', 12.5)
        await store.commit_many([Commit(positions={"w": 5}, snapshots=[record])])
        assert await store.snapshots("w") == [record]
        assert await store.positions() == {"w": 5}

    async def test_older_ones_are_pruned_to_the_newest_two(self, store: Store) -> None:
        for position in (1, 2, 3, 4):
            await store.commit_many([Commit(snapshots=[snap("w", position)])])
        await store.commit_many([Commit(snapshots=[snap("v", 9)])])
        assert [r.position for r in await store.snapshots("w")] == [4, 3]
        everything = await store.snapshots()
        assert [(r.name, r.position) for r in everything] == [("v", 9), ("w", 4), ("w", 3)]

    async def test_pruned_in_one_group_commit(self, store: Store) -> None:
        await store.commit_many([Commit(snapshots=[snap("w", p)]) for p in (1, 2, 3)])
        assert [r.position for r in await store.snapshots("w")] == [3, 2]

    async def test_the_same_position_is_replaced(self, store: Store) -> None:
        await store.commit_many([Commit(snapshots=[snap("w", 3, b"1")])])
        await store.commit_many([Commit(snapshots=[snap("w", 3, b"2")])])
        assert [r.state for r in await store.snapshots("w")] == [b"2"]

    async def test_forgetting_deletes_every_one_of_the_name_first(self, store: Store) -> None:
        await store.commit_many([Commit(snapshots=[snap("w", 1), snap("w", 2), snap("v", 2)])])
        await store.commit_many([Commit(forget_snapshots=["w"], snapshots=[snap("w", 7)])])
        assert [(r.name, r.position) for r in await store.snapshots()] == [("v", 2), ("w", 7)]
        # Forgotten by a later commit of the same group: the earlier one's goes too.
        await store.commit_many([Commit(snapshots=[snap("v", 8)]), Commit(forget_snapshots=["v"])])
        assert await store.snapshots("v") == []

    async def test_a_failed_commit_writes_no_snapshot(self, store: Store) -> None:
        bad = Commit(appends=[("x", b"{}")], snapshots=[snap("w", 1)], leases={"w": 3})
        with pytest.raises(Exception, match="lease"):
            await store.commit_many([bad])
        assert await store.snapshots() == []


async def test_an_older_file_gets_the_table_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, timestamp REAL NOT NULL,"
        " name TEXT NOT NULL, payload BLOB NOT NULL);"
        "CREATE TABLE positions (worker TEXT PRIMARY KEY, position INTEGER NOT NULL,"
        " updated_at REAL NOT NULL);"
    )
    conn.close()
    store = open_store(str(path))
    await store.open()
    await store.commit_many([Commit(snapshots=[snap("w", 1)])])
    assert [r.position for r in await store.snapshots()] == [1]
    await store.aclose()


async def test_a_read_only_opening_of_an_older_log_has_none(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    writer = open_store(str(path))
    await writer.open()
    await writer.aclose()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE snapshots")
    conn.close()
    reader = open_store(str(path), read_only=True)
    await reader.open()
    assert await reader.snapshots() == []
    await reader.aclose()
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "snapshots" not in tables  # reading created nothing


@pytest.mark.postgres
async def test_a_read_only_postgres_opening_of_an_older_log_has_none(postgres_url: str) -> None:
    import psycopg  # noqa: PLC0415 - only where the server exists

    writer = open_store(postgres_url)
    await writer.open()
    await writer.aclose()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE snapshots")
    reader = open_store(postgres_url, read_only=True)
    await reader.open()
    assert await reader.snapshots() == []
    await reader.aclose()
