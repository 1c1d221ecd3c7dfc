"""The store contract, run against every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

import petrock_trio as pt
from petrock_trio.stores import (
    Commit,
    DeadLetterRecord,
    RetryRecord,
    SQLiteStore,
    Store,
    open_store,
)


def appends(*names: str) -> list[tuple[str, bytes]]:
    return [(n, b"{}") for n in names]


class TestStoreContract:
    """Appends get consecutive ids; commits are atomic; positions only move forward."""

    async def test_empty(self, store: Store) -> None:
        assert await store.head() == 0
        assert await store.read_after(0, 10) == []
        assert await store.positions() == {}
        assert await store.dead_letters() == []

    async def test_append_and_read(self, store: Store) -> None:
        (rows,) = await store.commit_many([Commit(appends=appends("a", "b", "c"), timestamp=5.0)])
        assert [(r.id, r.name, r.timestamp) for r in rows] == [
            (1, "a", 5.0),
            (2, "b", 5.0),
            (3, "c", 5.0),
        ]
        assert await store.head() == 3
        assert [r.id for r in await store.read_after(1, 10)] == [2, 3]
        assert [r.id for r in await store.read_after(0, 2)] == [1, 2]
        assert [r.id for r in await store.read_after(0, 10, upto=2)] == [1, 2]
        assert [r.id for r in await store.read_after(0, 10, names=["a", "c"])] == [1, 3]

    async def test_rows_appended_are_the_rows_read(self, store: Store) -> None:
        """What ``commit_many`` returns is what a read returns: the pump hands a
        process's own rows to its feeds instead of reading them back."""
        commits = [
            Commit(appends=appends("a", "b"), timestamp=1_700_000_000.123456789),
            Commit(
                appends=[("c", b'{"x":"\\u00e9"}'), ("d", bytes(range(256)))],
                timestamp=0.1 + 0.2,
                metadata=['{"traceparent":"00-1-2-01"}', None],
            ),
        ]
        results = await store.commit_many(commits)
        assert [row for rows in results for row in rows] == await store.read_after(0, 10)

    async def test_group_commit_keeps_order(self, store: Store) -> None:
        results = await store.commit_many(
            [Commit(appends=appends("a")), Commit(appends=appends("b", "c")), Commit()]
        )
        assert [[r.id for r in rows] for rows in results] == [[1], [2, 3], []]

    async def test_positions_never_go_back(self, store: Store) -> None:
        await store.commit_many([Commit(positions={"w": 5})])
        await store.commit_many([Commit(positions={"w": 3, "v": 1})])
        assert await store.positions() == {"w": 5, "v": 1}

    async def test_dead_letters_accumulate_attempts_and_resolve(self, store: Store) -> None:
        letter = DeadLetterRecord("w", 7, "x/y", "boom", 3, 1.0, 2.0)
        await store.commit_many([Commit(dead_letters=[letter])])
        await store.commit_many(
            [Commit(dead_letters=[attrs_evolve(letter, error="again", attempts=2)])]
        )
        (stored,) = await store.dead_letters("w")
        assert (stored.attempts, stored.error) == (5, "again")
        assert await store.dead_letters("other") == []
        await store.commit_many([Commit(resolved=[("w", 7)])])
        assert await store.dead_letters() == []

    async def test_one_group_commit_writes_as_its_commits_one_after_the_other(
        self, store: Store
    ) -> None:
        """A transaction of many commits runs each kind of statement once (SQLite folds
        them): for each table, what one commit writes still lands after the commits
        before it."""
        letter = DeadLetterRecord("w", 7, "x/y", "boom", 3, 1.0, 2.0)
        commits = [
            Commit(retries=[RetryRecord("w", 5, 1, 10.0, 1.0)]),
            Commit(positions={"w": 5}),  # clears the retry of message 5
            Commit(retries=[RetryRecord("w", 6, 2, 20.0, 2.0)]),
            Commit(positions={"v": 1}, retries=[RetryRecord("v", 4, 1, 30.0, 3.0)]),
            Commit(positions={"v": 4}),  # clears that one
            Commit(dead_letters=[letter]),
            Commit(resolved=[("w", 7)]),
            Commit(dead_letters=[attrs_evolve(letter, attempts=2)]),  # anew after a resolve
            Commit(positions={"w": 6}, retries=[RetryRecord("w", 8, 1, 40.0, 4.0)]),
            Commit(positions={"u": 6}),
            Commit(retries=[RetryRecord("u", 5, 1, 50.0, 5.0)]),  # after: it stays
        ]
        await store.commit_many(commits)
        assert await store.positions() == {"w": 6, "v": 4, "u": 6}
        retries = sorted((r.worker, r.message_id) for r in await store.retries())
        assert retries == [("u", 5), ("w", 8)]
        (stored,) = await store.dead_letters("w")
        assert stored.attempts == 2

    async def test_failed_commit_writes_nothing(self, store: Store) -> None:
        bad = Commit(appends=[("a", b"{}"), ("b", None)])  # type: ignore[list-item]
        with pytest.raises(pt.StoreError):
            await store.commit_many([Commit(appends=appends("ok"), positions={"w": 9}), bad])
        assert await store.head() == 0
        assert await store.positions() == {}

    async def test_statistics_count_reads(self, store: Store) -> None:
        await store.commit_many([Commit(appends=appends("a", "b"))])
        await store.read_after(0, 10)
        stats = store.statistics()
        assert (stats.reads, stats.rows_read, stats.rows_appended) == (1, 2, 2)


def attrs_evolve(letter: DeadLetterRecord, **changes: Any) -> DeadLetterRecord:
    return attrs.evolve(letter, **changes)


async def test_file_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    first = SQLiteStore(path)
    await first.open()
    await first.commit_many([Commit(appends=appends("a"), positions={"w": 1})])
    await first.aclose()
    second = SQLiteStore(path)
    assert await second.open() == 1
    assert await second.positions() == {"w": 1}
    await second.aclose()


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "missing-dir" / "x.db"))
    with pytest.raises(pt.StoreError, match="cannot open"):
        await store.open()


def test_empty_database_path_is_refused() -> None:
    with pytest.raises(pt.ConfigurationError):
        open_store("")
