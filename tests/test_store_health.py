"""Store health: failed writes and reads, lock waits, a full disk and a deleted file show
in ``app.health()``; nothing is acknowledged that is not durably in the log."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio._store_health import MonitoredStore
from petrock_trio.testing import serving, worker_harness
from tests.support import Add, Note, make_app
from tests.test_faults import COMMANDS, echo_worker

HEALTHY = pt.HealthReport(pt.Health.HEALTHY)


def degraded(*reasons: str) -> pt.HealthReport:
    return pt.HealthReport(pt.Health.DEGRADED, reasons)


def unhealthy(*reasons: str) -> pt.HealthReport:
    return pt.HealthReport(pt.Health.UNHEALTHY, reasons)


def appends(commits: Any) -> bool:
    return any(c.appends for c in commits)


class TestFailures:
    """Failures measured on Trio's clock: degraded at once, unhealthy when they last."""

    async def test_failing_appends(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            full = "database or disk is full"
            h.store.fail_commits(8, error=lambda: pt.StoreError(full), when=appends)
            seen: list[pt.HealthReport] = []
            for attempt in range(8):  # every 5 s, from 0 to 35 s
                with pytest.raises(pt.StoreError, match=full):
                    await h.app.execute(Note(f"refused {attempt}"))
                seen.append(h.app.health())
                await trio.sleep(5.0)
            assert seen[0] == degraded(f"store: append failed: {full}")
            assert seen[6] == degraded(f"store: append failed: {full}")  # at 30 s
            assert seen[7] == unhealthy(f"store: writes failing for 35.0 s: {full}")
            assert h.app.health() == unhealthy(f"store: writes failing for 35.0 s: {full}")
            report = h.app.inspect()["store_health"]
            assert report["status"] == "unhealthy"
            assert report["write_failures"] == 8
            await h.send(Note("kept"))  # the store recovered: the next write succeeds
            assert h.app.health() == HEALTHY
            assert h.app.inspect()["store_health"]["status"] == "healthy"

    async def test_thresholds_are_configurable(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(
            echo_worker(), commands=COMMANDS, faults=True, store_unhealthy_after=10.0
        ) as h:
            assert h.store is not None
            h.store.fail_commits(3, when=appends)
            for _ in range(3):  # at 0, 6 and 12 s
                with pytest.raises(pt.StoreError):
                    await h.app.execute(Note("refused"))
                await trio.sleep(6.0)
            assert h.app.health() == unhealthy(
                "store: writes failing for 12.0 s: injected store failure"
            )

    async def test_failing_reads(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.fail_reads(6)
            start = trio.current_time()
            seen: dict[float, pt.HealthReport] = {}

            async def look() -> None:
                for at in (0.5, 30.0, 32.0):
                    await trio.sleep_until(start + at)
                    seen[at] = h.app.health()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                # The pump reads at 0, 1, 3, 7, 15 and 31 s (backoff), all failing; 61 s works.
                await h.app.execute(Note("late"))
                assert trio.current_time() - start == pytest.approx(61.0)
            assert seen[0.5] == degraded("store: read failed: injected store failure")
            assert seen[30.0] == degraded("store: read failed: injected store failure")
            assert seen[32.0] == unhealthy(
                "store: reads failing for 31.0 s: injected store failure"
            )
            assert h.app.health() == HEALTHY


class TestLockWaits:
    async def test_a_write_waiting_too_long(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.stall_commits(8.0)
            start = trio.current_time()
            seen: dict[float, pt.HealthReport] = {}

            async def look() -> None:
                for at in (4.9, 5.5, 7.5):
                    await trio.sleep_until(start + at)
                    seen[at] = h.app.health()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                await h.app.execute(Note("slow"))
                h.store.stall_commits(0)
            assert trio.current_time() - start == pytest.approx(8.0)
            assert seen[4.9] == HEALTHY
            assert seen[5.5] == degraded("store: a write has waited 5.5 s for the database lock")
            assert seen[7.5] == degraded("store: a write has waited 7.5 s for the database lock")
            assert h.app.health() == HEALTHY  # it went through: the wait is over

    async def test_a_write_waiting_past_the_unhealthy_threshold(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(
            echo_worker(), commands=COMMANDS, faults=True, store_degraded_after=2.0
        ) as h:
            assert h.store is not None
            h.store.stall_commits(40.0)
            start = trio.current_time()
            seen: dict[float, pt.HealthReport] = {}

            async def look() -> None:
                for at in (2.5, 31.0):
                    await trio.sleep_until(start + at)
                    seen[at] = h.app.health()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                await h.app.execute(Note("stuck"))
                h.store.stall_commits(0)
            assert seen[2.5] == degraded("store: a write has waited 2.5 s for the database lock")
            assert seen[31.0] == unhealthy("store: a write has waited 31.0 s for the database lock")
            assert h.app.health() == HEALTHY


class TestReadWaits:
    """A database that stops answering (a stopped server, a hung network) shows in
    health while a read waits, even with no write under way to notice it."""

    async def test_a_read_waiting_too_long(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(echo_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.stall_reads(40.0)
            start = trio.current_time()
            seen: dict[float, pt.HealthReport] = {}

            async def look() -> None:
                for at in (4.9, 5.5, 31.0):
                    await trio.sleep_until(start + at)
                    seen[at] = h.app.health()
                assert h.app.inspect()["store_health"]["read_waiting"] == 31.0
                assert h.app.inspect()["store_health"]["write_waiting"] is None
                assert h.store is not None
                h.store.stall_reads(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(look)
                # The append goes through; the pump's read of it is what waits.
                await h.app.execute(Note("unread"))
            assert trio.current_time() - start == pytest.approx(40.0)
            assert seen[4.9] == HEALTHY
            assert seen[5.5] == degraded("store: a read has waited 5.5 s for the database")
            assert seen[31.0] == unhealthy("store: a read has waited 31.0 s for the database")
            assert h.app.health() == HEALTHY


def hold_write_lock(path: str, seconds: float, ready: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def test_real_lock_held_by_another_connection(tmp_path: Path) -> None:
    """A second connection holds the write lock for 2 s: degraded while the write waits."""
    db = str(tmp_path / "locked.db")
    app, _, _ = make_app(db, store_degraded_after=0.5)
    async with serving(app):
        ready = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(db, 2.0, ready))
        holder.start()
        await trio.to_thread.run_sync(ready.wait)
        statuses: list[pt.Health] = []
        reasons: list[str] = []

        async def look() -> None:
            while True:
                report = app.health()
                statuses.append(report.status)
                reasons.extend(report.reasons)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await app.execute(Note("waits"))
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(holder.join)
        after = app.health()
    assert pt.Health.DEGRADED in statuses
    assert all(r.startswith("store: a write has waited ") for r in reasons), reasons
    assert after == HEALTHY


class TestDeletedFile:
    """No acknowledgement after the file is gone; unhealthy; logged once."""

    async def test_deleted_file_refuses_every_append(self, tmp_path: Path) -> None:
        db = tmp_path / "app.db"
        app, _, _ = make_app(str(db))
        acknowledged: list[pt.Message] = []
        refused: list[pt.StoreGone] = []
        with capture_logs() as logs:
            async with serving(app):
                await app.execute(Add("before"))
                db.unlink()
                for i in range(20):
                    try:
                        acknowledged.append(await app.execute(Add(f"after {i}")))
                    except pt.StoreGone as exc:
                        refused.append(exc)
                report = app.health()
                store_health = app.inspect()["store_health"]
        assert acknowledged == []
        assert len(refused) == 20
        reason = f"store: database file {str(db)!r} was deleted"
        assert report == unhealthy(reason)
        assert store_health["status"] == "unhealthy"
        assert store_health["gone"] == reason.removeprefix("store: ")
        gone = [e for e in logs if e["event"] == "petrock.store_gone"]
        assert len(gone) == 1
        assert gone[0]["log_level"] == "error"

    async def test_noticed_without_a_write(self, tmp_path: Path) -> None:
        db = tmp_path / "app.db"
        app, _, _ = make_app(str(db))
        with capture_logs() as logs:
            async with serving(app):
                await app.execute(Add("before"))
                db.unlink()
                noticed = trio.current_time()
                for _ in range(100):  # 5 s at most
                    if app.health().status is pt.Health.UNHEALTHY:
                        break
                    await trio.sleep(0.05)
                noticed = trio.current_time() - noticed
                with pytest.raises(pt.StoreGone):
                    await app.execute(Add("after"))
        assert noticed < 2.0
        assert [e["log_level"] for e in logs if e["event"] == "petrock.store_gone"] == ["error"]

    async def test_replaced_file(self, tmp_path: Path) -> None:
        db = tmp_path / "app.db"
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        app, _, _ = make_app(str(db))
        async with serving(app):
            await app.execute(Add("before"))
            other.replace(db)
            with pytest.raises(pt.StoreGone, match="replaced"):
                await app.execute(Add("after"))
            assert app.health() == unhealthy(
                f"store: database file {str(db)!r} was replaced by another file"
            )

    async def test_memory_database_has_no_file_to_lose(self) -> None:
        app, _, _ = make_app(":memory:")
        async with serving(app):
            await app.execute(Add("a"))
            assert app.health() == HEALTHY
            assert app.inspect()["store_health"]["gone"] is None


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; skips where mounting is not allowed."""
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot mount a small tmpfs for a full disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the disk is full; return it."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    os.sync()
    return filler


async def test_disk_full(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small") as small:
        app, _, _ = make_app(str(small / "app.db"))
        async with serving(app):
            await app.execute(Note("fits"))
            await app.caught_up()
            filler = await trio.to_thread.run_sync(fill, small)
            with pytest.raises(pt.StoreError, match="full"):
                await app.execute(Note("x" * 200_000))
            full = app.health()
            await trio.to_thread.run_sync(filler.unlink)
            await app.execute(Note("fits again"))
            recovered = app.store_health()
            await app.caught_up()
            caught_up = app.health()
    assert full.status is pt.Health.DEGRADED
    assert "store: append failed: SQLite: database or disk is full" in full.reasons
    assert recovered == HEALTHY
    assert caught_up == HEALTHY


@pytest.mark.postgres
async def test_postgres_lost_connection(postgres_url: str) -> None:
    """A PostgreSQL connection lost under a commit: degraded, healthy once it reconnects."""
    psycopg = pytest.importorskip("psycopg")
    from petrock_trio.stores._postgres import PostgresStore  # noqa: PLC0415 - needs psycopg

    app, _, _ = make_app(postgres_url, leases=False)
    async with serving(app):
        await app.execute(Note("before"))
        await app.caught_up()
        store = app.log.store
        assert isinstance(store, MonitoredStore)
        assert isinstance(store.inner, PostgresStore)
        writer = store.inner._writer
        assert writer is not None

        def terminate() -> None:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (writer.backend_pid,))

        await trio.to_thread.run_sync(terminate)
        with pytest.raises(pt.StoreError):
            await app.execute(Note("lost"))
        lost = app.store_health()
        await app.execute(Note("after"))
        recovered = app.store_health()
    assert lost.status is pt.Health.DEGRADED
    (reason,) = lost.reasons
    assert reason.startswith("append failed: ")
    assert recovered == HEALTHY


def test_store_thresholds_are_checked() -> None:
    with pytest.raises(pt.ConfigurationError):
        pt.App(store_degraded_after=0)
    with pytest.raises(pt.ConfigurationError):
        pt.App(store_degraded_after=10.0, store_unhealthy_after=5.0)
