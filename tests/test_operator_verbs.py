"""Operator verbs: re-drive that answers at once, bulk re-drive and discard, pause and
resume (persisted, obeyed by every process sharing the log), reset of a position."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import petrock_trio as pt
from petrock_trio.stores import Commit, DeadLetterRecord, Store, open_store


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


def letter(worker: str, message_id: int, name: str = "test/add") -> DeadLetterRecord:
    return DeadLetterRecord(worker, message_id, name, "RuntimeError('x')", 1, 1.0, 2.0, "tb")


async def seeded(store: Store, count: int = 6) -> None:
    """``count`` messages, alternately test/add and test/note."""
    names = ["test/add" if i % 2 else "test/note" for i in range(1, count + 1)]
    await store.commit_many([Commit(appends=[(n, b"{}") for n in names], timestamp=1.0)])


class TestStoreControls:
    """Every store keeps the controls, resets positions atomically, and discards."""

    async def test_no_controls_at_first(self, store: Store) -> None:
        assert await store.controls() == []
        assert await store.discarded() == []

    async def test_pause_and_resume_persist(self, store: Store) -> None:
        paused = await store.set_paused("w", paused=True, now=10.0)
        assert paused == pt.stores.ControlRecord("w", paused=True, updated_at=10.0)
        assert await store.controls() == [paused]
        resumed = await store.set_paused("w", paused=False, now=11.0)
        assert resumed == pt.stores.ControlRecord("w", paused=False, updated_at=11.0)
        assert await store.controls() == [resumed]

    async def test_reset_is_refused_unless_paused(self, store: Store) -> None:
        await seeded(store)
        await store.commit_many([Commit(positions={"w": 4})])
        with pytest.raises(pt.NotPaused, match="pause it"):
            await store.reset_positions("w", ["w"], 1, now=5.0)
        await store.set_paused("w", paused=False, now=5.0)
        with pytest.raises(pt.NotPaused):
            await store.reset_positions("w", ["w"], 1, now=5.0)
        assert await store.positions() == {"w": 4}

    async def test_reset_rewrites_what_the_worker_has_after_the_position(
        self, store: Store
    ) -> None:
        await seeded(store)
        await store.commit_many(
            [
                Commit(
                    positions={"w#0/2": 6, "w#1/2": 5, "w": 3, "w-other": 6, "w#x": 6},
                    dead_letters=[letter("w", 2), letter("w", 5), letter("w-other", 5)],
                    retries=[pt.stores.RetryRecord("w#1/2", 6, 2, 99.0, 1.0)],
                )
            ]
        )
        await store.discard_dead_letters([("w", 5)], now=3.0)
        await store.leases("me", {}, ["w#0/2", "w#1/2"], ttl=60, now=pt.SystemClock())
        epochs = {r.worker: r.epoch for r in await store.lease_records()}
        await store.set_paused("w", paused=True, now=4.0)

        record = await store.reset_positions("w", ["w#0/4", "w#1/4"], 2, now=5.0)

        assert (record.paused, record.generation, record.reset_to) == (True, 1, 2)
        # Every position of the worker, under any partitioning, is the new one; names
        # that only look alike are another worker's.
        assert await store.positions() == {"w#0/4": 2, "w#1/4": 2, "w-other": 6, "w#x": 6}
        assert await store.retries() == []
        assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [
            ("w", 2),
            ("w-other", 5),
        ]
        assert await store.discarded() == []
        # Its leases moved to a new epoch and are free: the holder is fenced off.
        leases = {r.worker: r for r in await store.lease_records()}
        assert {w: leases[w].epoch for w in epochs} == {w: e + 1 for w, e in epochs.items()}
        assert all(leases[w].expires_at == 0 for w in epochs)
        fenced = Commit(positions={"w#0/2": 6}, leases={"w#0/2": epochs["w#0/2"]})
        with pytest.raises(pt.LeaseLost):
            await store.commit_many([fenced])
        assert await store.controls() == [record]

    async def test_a_second_reset_raises_the_generation_again(self, store: Store) -> None:
        await seeded(store)
        await store.set_paused("w", paused=True, now=1.0)
        await store.reset_positions("w", ["w"], 4, now=2.0)
        record = await store.reset_positions("w", ["w"], 1, now=3.0)
        assert (record.generation, record.reset_to, record.updated_at) == (2, 1, 3.0)
        assert await store.positions() == {"w": 1}

    async def test_discard_keeps_a_tombstone(self, store: Store) -> None:
        await store.commit_many(
            [Commit(dead_letters=[letter("w", 1), letter("w", 2), letter("v", 1)])]
        )
        gone = await store.discard_dead_letters([("w", 2), ("v", 1), ("w", 9)], now=7.0)
        assert sorted((d.worker, d.message_id) for d in gone) == [("v", 1), ("w", 2)]
        assert gone[0].traceback == "tb"
        assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [("w", 1)]
        assert await store.discarded() == [("v", 1), ("w", 2)]
        assert await store.discarded("w") == [("w", 2)]
        assert await store.discard_dead_letters([], now=8.0) == []

    async def test_count_messages(self, store: Store) -> None:
        await seeded(store)
        assert await store.count_messages(0, 6, ["test/add"]) == (3, 1, 5)
        assert await store.count_messages(1, 4, ["test/add", "test/note"]) == (3, 2, 4)
        assert await store.count_messages(5, 6, ["test/add"]) == (0, None, None)
        assert await store.count_messages(0, 6, []) == (0, None, None)
        assert await store.count_messages(4, 2, ["test/add"]) == (0, None, None)


class TestReadOnlyControls:
    """A read-only opening reads the controls, and of an older log reads none."""

    async def test_older_sqlite_file(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        writer = open_store(str(path))
        await writer.open()
        await writer.set_paused("w", paused=True, now=1.0)
        await writer.aclose()
        reader = open_store(str(path), read_only=True)
        await reader.open()
        try:
            assert [r.worker for r in await reader.controls()] == ["w"]
            with pytest.raises(pt.StoreError, match="read-only"):
                await reader.set_paused("w", paused=False, now=2.0)
        finally:
            await reader.aclose()
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE worker_controls")
            conn.execute("DROP TABLE discarded_letters")
        reader = open_store(str(path), read_only=True)
        await reader.open()
        try:
            assert await reader.controls() == []
            assert await reader.discarded() == []
        finally:
            await reader.aclose()
        # A writer's opening gives an older file the tables.
        writer = open_store(str(path))
        await writer.open()
        try:
            assert await writer.controls() == []
            await writer.set_paused("w", paused=True, now=3.0)
        finally:
            await writer.aclose()


async def test_store_calls_are_checkpoints() -> None:
    store = open_store(":memory:")
    await store.open()
    try:
        calls = [
            store.controls(),
            store.set_paused("w", paused=True, now=1.0),
            store.discarded(),
            store.discard_dead_letters([], now=1.0),
            store.count_messages(0, 1, ["x"]),
            store.reset_positions("w", ["w"], 0, now=1.0),
        ]
        for call in calls:
            with trio.CancelScope() as scope:
                scope.cancel()
                await call
            assert scope.cancelled_caught
    finally:
        await store.aclose()
