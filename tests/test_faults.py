"""Faults at the store: failed writes and reads, a locked database, corrupt rows; no loss."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._serve import redact
from petrock_trio.stores import Commit
from petrock_trio.testing import assert_times, serving, worker_harness
from tests.support import Add, Echoed, Note, Tally, make_app

COMMANDS = [Add, Echoed, Note]


def echo_worker() -> pt.PatternWorker[Tally]:
    worker: pt.PatternWorker[Tally] = pt.PatternWorker("echo", state=Tally())

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Tally) -> None:
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    return worker


def positions_only(commits: Any) -> bool:
    return all(not c.appends and c.positions for c in commits)


class TestStoreFaults:
    """Each fault gives a clear error or a delay; the log stays whole and exactly-once."""

    async def test_failed_write_refuses_the_command(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(1, error=lambda: pt.StoreError("database or disk is full"))
            with pytest.raises(pt.StoreError, match="disk is full"):
                await h.app.execute(Add("lost"))
            assert h.app.inspect()["head"] == 0
            await h.send(Add("kept"))
            assert h.emitted == [Echoed(1, "kept")]

    async def test_failed_reads_pause_the_pump(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_reads(3)
            start = trio.current_time()
            await h.send(Add("a"), Add("b"))
            # Reads fail, then are retried after 1, 2 and 4 s: handled at 7 s.
            assert_times([c.at for c in h.calls], [7.0, 7.0], start=start)
            assert h.state.totals == {"a": 1, "b": 1}
            assert h.store.failed_reads == 3

    async def test_locked_database_delays_without_loss(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.stall_commits(5.0)
            start = trio.current_time()
            (message,) = await h.send(Add("a"))
            assert trio.current_time() - start == 10.0  # the append, then the emit
            h.store.stall_commits(0)
            assert h.emitted == [Echoed(message.id, "a")]

    async def test_failed_position_flush_is_retried(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(2, when=positions_only)
            await h.send(Note("no emit"))  # only moves the position, in memory
            await h.advance(1.0)
            assert h.store.failed_commits == 2
            assert (await h.positions())["echo"] == 1

    async def test_failed_emit_commit_is_retried_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(1, when=lambda commits: any(c.positions for c in commits))
            await h.send(Add("a"))
            assert [c.outcome for c in h.calls] == ["error", "ok"]
            assert h.emitted == [Echoed(1, "a")]
            assert h.state.totals == {"a": 2}  # the handler ran twice; the log has one emit


def hold_write_lock(path: str, seconds: float, ready: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def test_real_sqlite_lock_held_by_another_connection(tmp_path: Path) -> None:
    """Another process holding the write lock delays commits (busy timeout), loses nothing."""
    db = str(tmp_path / "locked.db")
    app, worker, calls = make_app(db)
    async with serving(app):
        ready = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(db, 0.5, ready))
        holder.start()
        await trio.to_thread.run_sync(ready.wait)
        started = trio.current_time()
        await app.execute(Add("a"))
        waited = trio.current_time() - started
        await app.caught_up()
        await trio.to_thread.run_sync(holder.join)
    assert waited >= 0.3  # it waited for the lock rather than failing
    assert calls.live == [("a", 1)]
    assert worker.state.totals == {"a": 1}


async def test_corrupt_row_written_by_someone_else(tmp_path: Path) -> None:
    db = str(tmp_path / "corrupt.db")
    async with pt.open_log(db) as log:
        await log.commit(
            Commit(appends=[("test/add", b"\xff\xfe not json"), ("test/add", b'{"key": "ok"}')])
        )
    app, _, calls = make_app(db)
    async with serving(app):
        await app.caught_up()
        letters = await app.dead_letters()
    assert [(d.message_id, d.worker) for d in letters] == [(1, "tally")]
    assert calls.live == [("ok", 2)]


class TestUnknownOutcomes:
    """A commit that may or may not have landed is never blindly written again."""

    async def test_append_is_not_retried(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(1, error=lambda: pt.OutcomeUnknown("lost"), after=True)
            with pytest.raises(pt.OutcomeUnknown):
                await h.app.execute(Note("maybe"))
            await h.settle()
            assert h.app.log.head.value == 1  # it landed once; nobody wrote it again

    async def test_emit_that_landed_is_not_emitted_again(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(
                1,
                error=lambda: pt.OutcomeUnknown("lost"),
                after=True,
                when=lambda commits: any(c.positions and c.appends for c in commits),
            )
            await h.send(Add("a"))
            async with pt.open_log(h.app.database, commands=COMMANDS) as log:
                echoes = [m for m in await log.read_after(0) if m.name == "test/echoed"]
            assert len(echoes) == 1
            assert [c.outcome for c in h.calls] == ["ok"]  # found to have landed: done


def test_passwords_are_not_logged() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("app.db") == "app.db"
