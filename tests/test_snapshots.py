"""Snapshots: the store's table, the state codec, loading at start, taking them, showing them."""

from __future__ import annotations

import enum
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import cattrs
import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio._snapshots import PROJECTION
from petrock_trio._statecodec import StateCodec, detail
from petrock_trio.stores import Commit, SnapshotRecord, Store, open_store
from petrock_trio.testing import FaultyStore, memory_database, serving, wait_until
from tests.support import Add, Echoed, Note, Unrouted

Logs = list[MutableMapping[str, Any]]


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


# --- the state codec ---------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.define
class Entry:
    at: datetime
    day: date
    tags: set[str] = attrs.Factory(set)
    wait: timedelta = timedelta(seconds=1.5)


@attrs.define
class Rich:
    entries: dict[str, Entry] = attrs.Factory(dict)
    by_number: dict[int, list[str]] = attrs.Factory(dict)
    pairs: frozenset[tuple[str, int]] = frozenset()
    color: Color = Color.RED
    last: Entry | None = None
    free: dict[str, Any] = attrs.Factory(dict)


@attrs.define
class WithLock:
    count: int = 0
    lock: trio.Lock = attrs.Factory(trio.Lock)


class Opaque:
    """Not a value a snapshot can hold (a client, a connection)."""


@attrs.define
class Tally:
    totals: dict[str, int] = attrs.Factory(dict)


@attrs.define
class TallyV2:
    totals: dict[str, int] = attrs.Factory(dict)
    seen: int = 0


@attrs.define
class Loose:
    totals: dict[str, int] = attrs.Factory(dict)
    extra: Any = None


class TestStateCodec:
    """States encode with the commands' strict converter plus the types state holds."""

    def test_a_rich_state_comes_back_equal(self) -> None:
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        state = Rich(
            {"a": Entry(at, date(2026, 1, 2), {"x", "y"})},
            {3: ["p"], 4: []},
            frozenset({("q", 1)}),
            Color.BLUE,
            Entry(at, date(2025, 5, 6)),
            {"n": [1, "two", None, 2.5, {"k": True}]},
        )
        codec = StateCodec.checked(state, owner="test")
        assert codec.decode(codec.encode(state)) == state

    def test_the_shape_names_every_field_and_nested_class(self) -> None:
        shape = StateCodec(Rich, owner="test").shape
        assert shape.startswith("Rich(entries: dict[str, Entry], by_number: dict[int, list[str]]")
        assert "; Entry(at: datetime, day: date, tags: set[str], wait: timedelta)" in shape
        assert StateCodec(Tally, owner="t").shape != StateCodec(TallyV2, owner="t").shape
        assert StateCodec(dict, owner="t").shape == "dict"
        assert StateCodec(type(None), owner="t").shape == "None"

    def test_decoding_is_strict(self) -> None:
        codec = StateCodec(Tally, owner="test")
        with pytest.raises(cattrs.BaseValidationError) as caught:
            codec.decode(b'{"totals": {"a": "5"}}')
        assert "expected int" in detail(caught.value)
        with pytest.raises(cattrs.BaseValidationError) as caught:
            codec.decode(b'{"totals": {}, "other": 1}')
        assert "extra fields" in detail(caught.value)


def snapshotting(state: Any, **options: Any) -> pt.PatternWorker[Any]:
    worker: pt.PatternWorker[Any] = pt.PatternWorker("w", state=state, **options)
    worker.on_command("test/add", _nothing)
    return worker


async def _nothing(ctx: pt.HandlerContext, cmd: Any, state: Any) -> None:
    pass


class TestRegistration:
    """A state that cannot be snapshot is refused at registration, naming what."""

    def test_a_field_that_cannot_be_encoded_is_named(self) -> None:
        worker = snapshotting(WithLock(), snapshot_every=10)  # declaring is fine
        app = pt.App()
        app.register_command(Add)
        with pytest.raises(pt.ConfigurationError, match=r"worker 'w' .*WithLock\.lock"):
            app.register_worker(worker)

    def test_an_untyped_value_must_be_json(self) -> None:
        worker = snapshotting({"at": datetime(2026, 1, 1, tzinfo=UTC)}, snapshot_every=10)
        with pytest.raises(pt.ConfigurationError, match="JSON values"):
            pt.App().register_worker(worker)
        loose = snapshotting(Loose(extra={1, 2}), snapshot_interval=5.0)
        with pytest.raises(pt.ConfigurationError, match=r"Loose\.extra"):
            pt.App().register_worker(loose)

    def test_without_snapshots_any_state_goes(self) -> None:
        pt.App().register_worker(snapshotting(WithLock()))

    @pytest.mark.parametrize(
        "options",
        [
            pytest.param({"snapshot_every": 0}, id="every-zero"),
            pytest.param({"snapshot_every": True}, id="every-bool"),
            pytest.param({"snapshot_every": 2.5}, id="every-float"),
            pytest.param({"snapshot_interval": 0}, id="interval-zero"),
            pytest.param({"snapshot_interval": float("nan")}, id="interval-nan"),
            pytest.param({"snapshot_every": 5, "state_version": ""}, id="empty-version"),
            pytest.param({"snapshot_every": 5, "state_version": 2}, id="version-int"),
            pytest.param({"snapshot_every": 5, "replay": False}, id="no-replay"),
        ],
    )
    def test_bad_options(self, options: dict[str, Any]) -> None:
        with pytest.raises(pt.ConfigurationError):
            snapshotting(Tally(), **options)

    def test_the_projection_state_must_encode_and_restore_in_place(self) -> None:
        app = pt.App(snapshot_every=100)
        with pytest.raises(pt.ConfigurationError, match=r"'test/add'.*WithLock\.lock"):
            app.register_command(Add, lambda s, c, m: None, state=WithLock())
        with pytest.raises(pt.ConfigurationError, match="in place"):
            app.register_command(Add, lambda s, c, m: None, state=(1, 2))
        with pytest.raises(pt.ConfigurationError, match="snapshot_every"):
            pt.App(snapshot_every=-1)


# --- restarts ------------------------------------------------------------------------------


@attrs.define
class Seen:
    live: list[int] = attrs.Factory(list)
    replayed: list[int] = attrs.Factory(list)


def tally_app(
    database: str,
    seen: Seen,
    *,
    state: Any = None,
    app_options: dict[str, Any] | None = None,
    fail: set[str] | None = None,
    **options: Any,
) -> tuple[pt.App, pt.PatternWorker[Any]]:
    """An app whose worker ``w`` sums Adds by key (and echoes each live one), and whose
    projection sums them too (in ``app.state.totals``)."""
    app = pt.App(database, hooks=[], **(app_options or {}))
    app.state = Tally()
    app.register_command(Add, apply=_apply_add)
    app.register_command(Echoed)
    app.register_command(Note)
    app.register_command(Unrouted)
    options.setdefault("snapshot_every", 3)
    options.setdefault("retry", pt.Backoff(max_attempts=1))
    worker: pt.PatternWorker[Any] = pt.PatternWorker(
        "w", state=Tally() if state is None else state, **options
    )

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Any) -> None:
        if not ctx.is_replay and fail is not None and cmd.key in fail:
            raise RuntimeError(f"cannot add {cmd.key}")
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        (seen.replayed if ctx.is_replay else seen.live).append(ctx.message.id)
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    app.register_worker(worker)
    return app, worker


def _apply_add(state: Tally, cmd: Add, message: pt.Message) -> None:
    state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount


async def fill(database: str, adds: list[Add], **options: Any) -> list[int]:
    """Serve until ``adds`` are handled, then stop hard (a graceful stop would save a
    snapshot at the end, leaving no tail to replay); their ids (echoes in between)."""
    app, worker = tally_app(database, Seen(), **options)
    async with serving(app, graceful=False):
        ids = [(await app.execute(cmd)).id for cmd in adds]
        await app.caught_up()
        every = worker.snapshot_options.every
        if every is not None and not options.get("snapshot_interval"):
            # The snapshot due by the head is written by the worker's own loop, beside
            # the message loop: wait for it, or the hard stop races it.
            head = app.log.head.value
            await wait_until(lambda: (_latest(app) or 0) > head - every, timeout=10)
    return ids


def _latest(app: pt.App) -> int | None:
    snapshot = app.inspect()["workers"]["w"].get("snapshot")
    return None if snapshot is None else snapshot["position"]


async def app_store_snapshots(database: str) -> list[SnapshotRecord]:
    async with pt.open_log(database) as log:
        return await log.store.snapshots()


async def stored(database: str) -> list[tuple[str, int]]:
    async with pt.open_log(database) as log:
        return [(r.name, r.position) for r in await log.store.snapshots()]


def events(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


TEN = [Add(k, n) for n, k in enumerate("abcabcabca", 1)]  # ids 1, 3 .. 19: each one echoed


def after(ids: list[int], position: int, upto: int = 20) -> list[int]:
    """The ids of ``ids`` after ``position``, up to ``upto``."""
    return [i for i in ids if position < i <= upto]


TEN_TOTALS = {"a": 1 + 4 + 7 + 10, "b": 2 + 5 + 8, "c": 3 + 6 + 9}


class TestRestart:
    """A restart loads the newest usable snapshot and replays only what came after it."""

    async def test_only_the_tail_is_replayed(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN)
        (newest, older) = await stored(db)
        assert newest[0] == older[0] == "w"
        assert 20 - 3 < newest[1] <= 20  # every 3 messages of the log
        seen = Seen()
        app, worker = tally_app(db, seen)
        with capture_logs() as logs:
            async with serving(app):
                assert seen.replayed == after(ids, newest[1])
                assert worker.state.totals == TEN_TOTALS
                (loaded,) = events(logs, "petrock.snapshot_loaded")
                assert (loaded["worker_name"], loaded["position"]) == ("w", newest[1])
                # Live after the restart: the new message once, nothing before it again.
                message = await app.execute(Add("a", 100))
                await app.caught_up()
                assert seen.live == [message.id]
                assert worker.state.totals["a"] == TEN_TOTALS["a"] + 100
        async with pt.open_log(db, commands=[Add, Echoed, Note, Unrouted]) as log:
            echoes = [
                m.command.source_id for m in await log.read_after(0) if m.name == "test/echoed"
            ]
        adds = [i for i in range(1, 25) if i not in echoes]
        assert sorted(echoes) == sorted(set(echoes))  # nothing handled live twice
        assert len(echoes) == 11
        assert adds  # the echoes themselves are messages too

    async def test_after_a_graceful_stop_nothing_is_replayed(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        app, _ = tally_app(db, Seen(), snapshot_every=1000, app_options={"snapshot_every": 1000})
        async with serving(app):
            for cmd in TEN:
                await app.execute(cmd)
            await app.caught_up()
        # Saved at the stop, after the last message: both at the head.
        assert await stored(db) == [(PROJECTION, 20), ("w", 20)]
        seen = Seen()
        app, worker = tally_app(db, seen, snapshot_every=1000, app_options={"snapshot_every": 1000})
        async with serving(app):
            assert app.inspect()["pump"]["rows_read"] == 0
            assert worker.state.totals == app.state.totals == TEN_TOTALS
        assert seen.replayed == []

    async def test_a_graceful_stop_in_the_middle_saves_what_is_done(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        async with pt.open_log(db, commands=[Add]) as log:
            await log.append(*(Add(k, 1) for k in "abcde" * 8))  # one page, handled live
        seen = Seen()
        app, worker = tally_app(db, seen, snapshot_every=1000)
        async with serving(app):
            with trio.fail_after(10):
                while len(seen.live) < 13:  # nothing signals a handled message
                    await trio.lowlevel.checkpoint()
        (record,) = await app_store_snapshots(db)
        assert record.position == seen.live[-1]  # where the stop left it, mid-page
        seen = Seen()
        app, worker = tally_app(db, seen, snapshot_every=1000)
        async with serving(app):
            await app.caught_up()
            assert worker.state.totals == dict.fromkeys("abcde", 8)
        assert seen.replayed == []
        assert seen.live == list(range(record.position + 1, 41))

    async def test_the_pump_reads_from_the_lowest_position_anyone_needs(
        self, tmp_path: Path
    ) -> None:
        db = str(tmp_path / "log.db")
        options: dict[str, Any] = {"app_options": {"snapshot_every": 4}}
        await fill(db, TEN, **options)
        head = 20  # ten adds, ten echoes
        names = dict(reversed(await stored(db)))  # the newest per name
        assert names[PROJECTION] > 0
        app, _ = tally_app(db, Seen(), **options)
        async with serving(app):
            assert app.state.totals == TEN_TOTALS  # the projection's state, restored
            lowest = min(names.values())
            assert app.inspect()["pump"]["rows_read"] == head - lowest
            assert app.inspect()["projection"]["snapshot"]["loaded_from"] == names[PROJECTION]

    async def test_without_snapshots_everything_is_replayed(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN, snapshot_every=None)
        assert await stored(db) == []
        seen = Seen()
        app, worker = tally_app(db, seen, snapshot_every=None)
        async with serving(app):
            assert seen.replayed == ids
            assert worker.state.totals == TEN_TOTALS
            assert app.inspect()["pump"]["rows_read"] == 20

    async def test_a_changed_state_version_replays_in_full(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN)
        seen = Seen()
        app, worker = tally_app(db, seen, state_version="2")
        with capture_logs() as logs:
            async with serving(app):
                assert worker.state.totals == TEN_TOTALS
        assert seen.replayed == ids
        reasons = [e["reason"] for e in events(logs, "petrock.snapshot_ignored")]
        assert reasons == ["state_version '1' is not the code's '2'"] * 2
        assert events(logs, "petrock.snapshot_loaded") == []

    async def test_a_changed_shape_replays_in_full(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN)
        seen = Seen()
        app, worker = tally_app(db, seen, state=TallyV2())
        with capture_logs() as logs:
            async with serving(app):
                assert worker.state.totals == TEN_TOTALS
        assert seen.replayed == ids
        (first, _) = events(logs, "petrock.snapshot_ignored")
        assert "the state's shape changed" in first["reason"]
        assert "seen: int" in first["reason"]

    async def test_a_corrupt_snapshot_is_passed_over(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN)
        (_, newest), (_, older) = await stored(db)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE snapshots SET state = x'00ff' WHERE position = ?", (newest,))
        seen = Seen()
        app, worker = tally_app(db, seen)
        with capture_logs() as logs:
            async with serving(app):
                assert worker.state.totals == TEN_TOTALS
        assert seen.replayed == after(ids, older)  # from the one before it
        (ignored,) = events(logs, "petrock.snapshot_ignored")
        assert ignored["log_level"] == "warning"
        assert ignored["position"] == newest
        assert ignored["reason"].startswith("it does not decode")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE snapshots SET state = '{\"totals\": 5}'")
        seen = Seen()
        app, worker = tally_app(db, seen, snapshot_every=1000)
        async with serving(app):
            assert worker.state.totals == TEN_TOTALS
        assert seen.replayed == ids  # none usable: from the start

    async def test_a_snapshot_after_the_saved_position_is_not_used(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN)
        (_, newest), (_, older) = await stored(db)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE positions SET position = ? WHERE worker = 'w'", (newest - 1,))
        seen = Seen()
        app, worker = tally_app(db, seen)
        with capture_logs() as logs:
            async with serving(app):
                # From the older snapshot, up to the saved position.
                assert seen.replayed == after(ids, older, newest - 1)
                await app.caught_up()
                assert worker.state.totals == TEN_TOTALS
        assert seen.live == after(ids, newest - 1)  # handled live again, as the position says
        (ignored, *_) = events(logs, "petrock.snapshot_ignored")
        assert ignored["reason"] == (
            f"it is at message {newest}, after the saved position {newest - 1}"
        )

    async def test_each_partition_has_its_own(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        adds = [Add(k, 1) for k in "abcdefgh" * 3]
        options: dict[str, Any] = {"partitions": 3, "key": lambda c: c.key, "snapshot_every": 2}
        await fill(db, adds, **options)
        newest = dict(reversed(await stored(db)))
        assert set(newest) == {"w#0/3", "w#1/3", "w#2/3"}
        seen = Seen()
        app, worker = tally_app(db, seen, **options)
        async with serving(app):
            merged: dict[str, int] = {}
            for state in worker.partition_states().values():
                merged.update(state.totals)
            assert merged == dict.fromkeys("abcdefgh", 3)
            shown = {p["name"]: p["snapshot"]["loaded_from"] for p in worker.partition_details()}
            assert shown == newest
            # The worker shows its oldest partition's (the tail's replay may add some).
            shown_position = app.inspect()["workers"]["w"]["snapshot"]["position"]
            assert shown_position >= min(newest.values())
        # Each replayed only what came after its own snapshot.
        assert all(i > min(newest.values()) for i in seen.replayed)

    async def test_a_leased_run_loads_its_snapshot_at_takeover(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        ids = await fill(db, TEN, app_options={"leases": True})
        seen = Seen()
        app, worker = tally_app(db, seen, app_options={"leases": True})
        with capture_logs() as logs:
            async with serving(app):
                assert worker.state.totals == TEN_TOTALS
        (loaded,) = events(logs, "petrock.snapshot_loaded")
        assert seen.replayed == after(ids, loaded["position"])


class TestTaking:
    """Snapshots are taken at commit points, between messages, on request."""

    async def test_a_batched_worker_takes_them_between_messages(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        worker_b: pt.PatternWorker[Tally] = pt.PatternWorker(
            "quiet", state=Tally(), batch_positions=True, snapshot_every=5
        )

        @worker_b.on_command("test/note")
        async def count(ctx: pt.HandlerContext, cmd: Note, state: Tally) -> None:
            state.totals["notes"] = state.totals.get("notes", 0) + 1

        app = pt.App(db, hooks=[], position_flush_interval=60)
        app.register_command(Note)
        app.register_worker(worker_b)
        async with serving(app):
            for n in range(12):
                await app.execute(Note(str(n)))
            await app.caught_up()
            await trio.sleep(0.05)
            snapshot = app.inspect()["workers"]["quiet"]["snapshot"]
            assert snapshot["position"] == 10  # every 5 of its 12 messages
            # Nothing commits per message (or flushes, in 60 s): the snapshots carried it.
            assert (await app.log.store.positions())["quiet"] == 10

    async def test_a_worker_that_routes_little_follows_the_log(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        worker: pt.PatternWorker[Tally] = pt.PatternWorker("rare", state=Tally(), snapshot_every=50)
        worker.on_command("test/note", _nothing)
        app = pt.App(db, hooks=[])
        app.register_command(Note)
        app.register_command(Unrouted)
        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("once"))
            for n in range(120):
                await app.execute(Unrouted(n))
            await app.caught_up()
            await trio.sleep(0.05)
            assert app.inspect()["workers"]["rare"]["snapshot"]["position"] >= 100
        app = pt.App(db, hooks=[])
        app.register_command(Note)
        app.register_command(Unrouted)
        rare: pt.PatternWorker[Tally] = pt.PatternWorker("rare", state=Tally(), snapshot_every=50)
        rare.on_command("test/note", _nothing)
        app.register_worker(rare)
        async with serving(app):
            assert app.inspect()["pump"]["rows_read"] <= 21

    async def test_an_interval_snapshot_in_virtual_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with memory_database() as db:
            app, _ = tally_app(db, Seen(), snapshot_every=None, snapshot_interval=10.0)
            async with serving(app):
                started = trio.current_time()
                await app.execute(Add("a"))
                await app.caught_up()
                await trio.sleep_until(started + 9.999)
                assert await app.log.store.snapshots() == []
                await trio.sleep_until(started + 10.001)
                (record,) = await app.log.store.snapshots()
                assert record.position == 2  # its position moved past the echo, in memory
                snapshot = app.inspect()["workers"]["w"]["snapshot"]
                assert snapshot["age_seconds"] == pytest.approx(0.001, abs=1e-6)
                # Nothing moved since: no snapshot the next time round.
                await trio.sleep_until(started + 25)
                assert len(await app.log.store.snapshots()) == 1

    async def test_a_redrive_replaces_the_snapshots_behind_it(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        seen = Seen()
        app, worker = tally_app(db, seen, fail={"x"})
        async with serving(app):
            bad = await app.execute(Add("x", 5))
            for cmd in TEN:
                await app.execute(cmd)
            await app.caught_up()
            assert [letter.message_id for letter in await app.dead_letters()] == [bad.id]
            assert len(await stored(db)) == 2
        app, worker = tally_app(db, seen)  # fixed
        async with serving(app):
            head = app.log.head.value
            await app.redrive("w", bad.id)
            # A fresh one at the position in memory, with the redriven message in it.
            assert await stored(db) == [("w", head)]
        seen = Seen()
        app, worker = tally_app(db, seen)
        async with serving(app):
            assert worker.state.totals == {**TEN_TOTALS, "x": 5}
        assert seen.replayed == []

    async def test_a_state_that_stops_encoding_does_not_stop_the_worker(
        self, tmp_path: Path
    ) -> None:
        db = str(tmp_path / "log.db")
        worker: pt.PatternWorker[Loose] = pt.PatternWorker("w", state=Loose(), snapshot_every=1)

        @worker.on_command("test/add")
        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Loose) -> None:
            state.totals[cmd.key] = state.totals.get(cmd.key, 0) + 1
            state.extra = Opaque() if cmd.key == "lock" else None
            ctx.emit(Echoed(ctx.message.id, cmd.key))

        app = pt.App(db, hooks=[])
        app.register_command(Add)
        app.register_command(Echoed)
        app.register_worker(worker)
        with capture_logs() as logs:
            async with serving(app):
                await app.execute(Add("a"))
                locked = await app.execute(Add("lock"))
                await app.caught_up()
        (failed, *_) = events(logs, "petrock.snapshot_failed")
        assert failed["position"] == locked.id
        assert failed["error_details"] == "Opaque is not a JSON value"
        assert await stored(db) == [("w", 1)]
        async with pt.open_log(db) as log:
            assert (await log.store.positions())["w"] >= locked.id  # the commit landed

    async def test_taken_on_request(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        app, worker = tally_app(
            db, Seen(), snapshot_every=1000, app_options={"snapshot_every": 1000}
        )
        async with serving(app):
            for cmd in TEN[:3]:
                await app.execute(cmd)
            await app.caught_up()
            assert app.inspect()["workers"]["w"]["snapshot"]["position"] is None
            (taken,) = await worker.snapshot_now()
            assert (taken["position"], taken["pending"], taken["partition"]) == (6, False, 0)
            shown = app.inspect()["workers"]["w"]["snapshot"]
            assert shown["position"] == 6
            assert shown["state_version"] == "1"
            assert shown["age_seconds"] >= 0
            assert shown["taken_at"].endswith("+00:00")
            assert app.inspect()["projection"]["snapshot"]["position"] is None
        # And the projection's, at the graceful stop.
        assert await stored(db) == [(PROJECTION, 6), ("w", 6)]
        plain: pt.PatternWorker[None] = pt.PatternWorker("plain")
        plain.on_command("test/add", _nothing)
        app = pt.App(db, hooks=[])
        app.register_command(Add)
        app.register_command(Echoed)
        app.register_worker(plain)
        async with serving(app):
            with pytest.raises(pt.ConfigurationError, match="takes no snapshots"):
                await plain.snapshot_now()
            assert app.inspect()["workers"]["plain"]["snapshot"] is None


# --- operators: HTTP, command line, metrics --------------------------------------------------

EXE = shutil.which("petrock-trio") or str(Path(sys.executable).parent / "petrock-trio")


@asynccontextmanager
async def http_api(app: pt.App, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` served with its HTTP API on a free loopback port."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0, **options))
            async with httpx.AsyncClient(base_url=url, timeout=30) as client, serving(app):
                yield client
            nursery.cancel_scope.cancel()


class TestOperators:
    """`POST /workers/{name}/snapshot`, `petrock-trio workers snapshot`, the age gauge."""

    async def test_the_endpoint_takes_one_now(self, tmp_path: Path) -> None:
        db = str(tmp_path / "log.db")
        app, _ = tally_app(db, Seen(), snapshot_every=1000)
        async with http_api(app, token="sesame") as client:
            await app.execute(Add("a"))
            await app.caught_up()
            refused = await client.post("/workers/w/snapshot")
            assert refused.status_code == 401
            auth = {"Authorization": "Bearer sesame"}
            answer = await client.post("/workers/w/snapshot", headers=auth)
            assert answer.status_code == 200
            (taken,) = answer.json()["snapshots"]
            assert (taken["name"], taken["position"], taken["pending"]) == ("w", 2, False)
            assert answer.json()["worker"] == "w"
            shown = (await client.get("/inspect")).json()["workers"]["w"]["snapshot"]
            assert shown["position"] == 2
            missing = await client.post("/workers/nobody/snapshot", headers=auth)
            assert (missing.status_code, missing.json()["error"]["type"]) == (404, "NotFound")
        assert await stored(db) == [("w", 2)]

    async def test_a_worker_without_snapshots_is_a_conflict(self, tmp_path: Path) -> None:
        app, _ = tally_app(str(tmp_path / "log.db"), Seen(), snapshot_every=None)
        async with http_api(app) as client:
            answer = await client.post("/workers/w/snapshot")
        assert answer.status_code == 409
        assert answer.json()["error"]["type"] == "NoSnapshots"
        assert "snapshot_every" in answer.json()["error"]["message"]

    async def test_the_age_gauge(self, autojump_clock: trio.testing.MockClock) -> None:
        with memory_database() as db:
            app, worker = tally_app(db, Seen(), snapshot_every=1000)
            async with http_api(app) as client:

                async def age() -> float:
                    text = (await client.get("/metrics")).text
                    (line,) = [
                        ln for ln in text.splitlines() if ln.startswith("petrock_snapshot_age")
                    ]
                    assert line.startswith('petrock_snapshot_age_seconds{worker="w"} ')
                    return float(line.split()[-1])

                assert math.isnan(await age())  # none yet
                await app.execute(Add("a"))
                await app.caught_up()
                await worker.snapshot_now()
                await trio.sleep(42)
                assert await age() == pytest.approx(42, abs=0.01)

    async def test_the_command_line(self, tmp_path: Path) -> None:
        app, _ = tally_app(str(tmp_path / "log.db"), Seen(), snapshot_every=1000)
        async with http_api(app) as client:
            await app.execute(Add("a"))
            await app.caught_up()
            url = str(client.base_url)

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [EXE, "workers", "snapshot", *args, "--url", url],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )

            done = await trio.to_thread.run_sync(run, "w")
            assert (done.returncode, done.stdout) == (0, "w: snapshot at message 2\n")
            as_json = await trio.to_thread.run_sync(run, "w", "--json")
            assert json.loads(as_json.stdout)["snapshots"][0]["position"] == 2
            unknown = await trio.to_thread.run_sync(run, "nobody")
            assert unknown.returncode == 1
            assert unknown.stderr.startswith("Error: 404 NotFound: no pattern worker named")
            shown = await trio.to_thread.run_sync(inspect, "--url", url)
            assert "snapshot" in shown.stdout
            assert re.search(r"│ 2 \(\d+ s ago\)", shown.stdout), shown.stdout
        offline = inspect("--database", str(tmp_path / "log.db"), "--json")
        assert json.loads(offline.stdout)["snapshots"]["w"]["position"] == 2
        table = inspect("--database", str(tmp_path / "log.db")).stdout
        assert "snapshot" in table


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [EXE, "inspect", *args], capture_output=True, text=True, timeout=60, check=True, env=env
    )


async def test_the_projection_saves_the_latest_after_a_burst(tmp_path: Path) -> None:
    """Pages applied while a snapshot is written do not leave the latest unsaved: the
    next one is written as soon as the first lands (start-up replay is such a burst)."""
    db = str(tmp_path / "log.db")
    async with pt.open_log(db, commands=[Add]) as log:
        for _ in range(20):
            await log.append(*(Add("k") for _ in range(500)))
    app = pt.App(db, hooks=[], page_size=100, snapshot_every=100)
    app.state = Tally()
    app.register_command(Add, apply=_apply_add)
    async with serving(app):
        with trio.fail_after(10):
            while app.inspect()["projection"]["snapshot"]["position"] != 10_000:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert dict(reversed(await stored(db)))[PROJECTION] == 10_000


class TestStoreFailures:
    """A snapshot the store refuses is logged; the next one is due all the same."""

    @pytest.mark.parametrize("name", ["rare", PROJECTION])
    async def test_a_refused_snapshot_write_between_messages(self, name: str) -> None:
        inner = open_store(":memory:")
        faulty = FaultyStore(inner)
        # The first one, however often it is written (a group commit that fails is
        # written again one commit at a time).
        faulty.fail_commits(
            10,
            when=lambda commits: any(
                (r.name, r.position) == (name, 5) for c in commits for r in c.snapshots
            ),
        )
        worker: pt.PatternWorker[Tally] = pt.PatternWorker("rare", state=Tally(), snapshot_every=5)
        worker.on_command("test/note", _nothing)
        app = pt.App(store=faulty, hooks=[], snapshot_every=5)
        app.state = Tally()
        app.register_command(Add, apply=_apply_add)
        app.register_command(Note)
        app.register_worker(worker)
        with capture_logs() as logs:
            async with serving(app):
                for n in range(30):
                    await app.execute(Add(str(n)))
                await app.caught_up()
                with trio.fail_after(10):
                    while name not in {r.name for r in await inner.snapshots()}:  # noqa: ASYNC110
                        await trio.sleep(0.01)
        (refused,) = events(logs, "petrock.snapshot_not_saved")
        assert (refused["snapshot"], refused["position"]) == (name, 5)
        assert refused["error_details"] == "StoreError('injected store failure')"
        assert faulty.failed_commits >= 1


@pytest.mark.postgres
async def test_a_restart_on_postgres_replays_the_tail(postgres_url: str) -> None:
    """With PostgreSQL (and so leases): the leased run loads its snapshot at takeover."""
    ids = await fill(postgres_url, TEN, app_options={"snapshot_every": 4})
    seen = Seen()
    app, worker = tally_app(postgres_url, seen, app_options={"snapshot_every": 4})
    with capture_logs() as logs:
        async with serving(app):
            assert worker.state.totals == app.state.totals == TEN_TOTALS
    loaded = {e["snapshot"]: e["position"] for e in events(logs, "petrock.snapshot_loaded")}
    assert set(loaded) == {"w", PROJECTION}
    assert seen.replayed == after(ids, loaded["w"])
