"""Leases: each worker runs in exactly one of the processes sharing a log.

Two app objects on one database stand for two processes here (each has its own store
connections, so to the database they are two clients); tests/cluster runs real
processes and kills one.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import petrock_trio as pt
from petrock_trio._leases import LeaseKeeper
from petrock_trio.stores import Commit, RetryRecord, Store, open_store
from petrock_trio.testing import FaultyStore, memory_database, serving, wait_until
from tests.support import Add, Echoed
from tests.test_http import api


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "log.db")


async def _open(database: str) -> Store:
    store = open_store(database)
    await store.open()
    return store


async def _take(store: Store, holder: str, wanted: list[str], ttl: float) -> dict[str, int]:
    return await store.leases(holder, {}, wanted, ttl=ttl, now=pt.SystemClock())


class TestStoreLeases:
    async def test_one_holder_at_a_time(self, database: str) -> None:
        a, b = await _open(database), await _open(database)
        try:
            assert await _take(a, "a", ["w1", "w2"], 30) == {"w1": 1, "w2": 1}
            assert await _take(b, "b", ["w1", "w2", "w3"], 30) == {"w3": 1}
            renewed = await a.leases("a", {"w1": 1, "w2": 1}, [], ttl=30, now=pt.SystemClock())
            assert renewed == {"w1": 1, "w2": 1}
            holders = {r.worker: (r.holder, r.epoch) for r in await a.lease_records()}
            assert holders == {"w1": ("a", 1), "w2": ("a", 1), "w3": ("b", 1)}
        finally:
            await a.aclose()
            await b.aclose()

    async def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(
        self, database: str
    ) -> None:
        a, b = await _open(database), await _open(database)
        try:
            assert await _take(a, "a", ["w"], 0.2) == {"w": 1}
            assert await _take(b, "b", ["w"], 30) == {}  # not expired yet
            await trio.sleep(0.4)
            assert await _take(b, "b", ["w"], 30) == {"w": 2}
            # The old holder's renewal finds the epoch moved on: it holds nothing.
            assert await a.leases("a", {"w": 1}, [], ttl=30, now=pt.SystemClock()) == {}
            head = await a.head()
            fenced = Commit(appends=[("test/add", b"{}")], positions={"w": 5}, leases={"w": 1})
            with pytest.raises(pt.LeaseLost) as caught:
                await a.commit_many([fenced])
            assert caught.value.workers == ("w",)
            assert await a.head() == head
            assert (await a.positions()).get("w") is None
            # The new holder's commit goes through.
            (rows,) = await b.commit_many(
                [Commit(appends=[("test/add", b"{}")], positions={"w": 5}, leases={"w": 2})]
            )
            assert len(rows) == 1
            assert (await b.positions())["w"] == 5
        finally:
            await a.aclose()
            await b.aclose()

    async def test_released_lease_is_free_at_once(self, database: str) -> None:
        a, b = await _open(database), await _open(database)
        try:
            assert await _take(a, "a", ["w"], 30) == {"w": 1}
            await a.release_leases({"w": 1})
            assert await _take(b, "b", ["w"], 30) == {"w": 2}
        finally:
            await a.aclose()
            await b.aclose()

    @pytest.mark.postgres
    async def test_postgres_lease_of_a_gone_connection_is_free_at_once(
        self, postgres_url: str
    ) -> None:
        """A killed process's backend ends with its connection: no wait for expiry."""
        a, b = await _open(postgres_url), await _open(postgres_url)
        try:
            assert await _take(a, "a", ["w"], 3600) == {"w": 1}
            await a.aclose()
            with trio.fail_after(5):
                # The server notices the closed socket; nothing tells this client when.
                while (taken := await _take(b, "b", ["w"], 30)) == {}:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert taken == {"w": 2}
        finally:
            await b.aclose()

    @pytest.mark.postgres
    async def test_postgres_holder_of_another_role_is_seen_alive(self, postgres_url: str) -> None:
        """pg_stat_activity hides another role's backend start time: the pid must do."""
        import psycopg  # noqa: PLC0415 - only where the server exists

        with psycopg.connect(postgres_url, autocommit=True) as conn:
            schema = conn.execute("SELECT current_schema()").fetchone()
            assert schema is not None
            conn.execute(
                "DO $$ BEGIN CREATE ROLE petrock_other LOGIN;"
                " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
            conn.execute(f"GRANT ALL ON SCHEMA {schema[0]} TO petrock_other")
        other_url = postgres_url.replace("user=postgres", "user=petrock_other")
        assert other_url != postgres_url
        b = await _open(other_url)  # creates the tables, so it may use them
        a = await _open(postgres_url)
        try:
            assert await _take(a, "a", ["w"], 3600) == {"w": 1}
            assert await _take(b, "b", ["w"], 30) == {}
        finally:
            await a.aclose()
            await b.aclose()

    async def test_retry_state_is_cleared_by_the_position_that_passes_it(
        self, database: str
    ) -> None:
        store = await _open(database)
        try:
            record = RetryRecord("w", 7, 2, 1000.0, 900.0)
            await store.commit_many([Commit(retries=[record])])
            assert await store.retries() == [record]
            await store.commit_many([Commit(positions={"w": 6})])
            assert await store.retries() == [record]
            await store.commit_many([Commit(positions={"w": 7})])
            assert await store.retries() == []
        finally:
            await store.aclose()


WORKERS = ("w1", "w2", "w3", "w4")


def _build(database: str, *, ttl: float, gate: trio.Event | None = None) -> pt.App:
    app = pt.App(database=database, leases=True, lease_ttl=ttl, shutdown_grace=2.0)
    app.register_command(Add)
    app.register_command(Echoed)
    for name in WORKERS:
        worker: pt.PatternWorker[None] = pt.PatternWorker(name)

        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None, name: str = name) -> None:
            if gate is not None:
                await gate.wait()
            ctx.emit(Echoed(ctx.message.id, name))

        worker.on_command("test/add", on_add)
        app.register_worker(worker)
    return app


async def _echoes(store: Store) -> Counter[tuple[str, int]]:
    seen: Counter[tuple[str, int]] = Counter()
    after = 0
    while rows := await store.read_after(after, 1000):
        after = rows[-1].id
        for row in rows:
            if row.name == "test/echoed":
                echoed = json.loads(row.payload)
                seen[echoed["key"], echoed["source_id"]] += 1
    return seen


async def _wait_for_echoes(store: Store, sources: list[int]) -> Counter[tuple[str, int]]:
    expected = {(w, s) for w in WORKERS for s in sources}
    with trio.fail_after(30):
        while not expected <= set(seen := await _echoes(store)):  # noqa: ASYNC110 - another client's rows
            await trio.sleep(0.02)
    return seen


class TestAppLeases:
    async def test_each_worker_runs_in_one_process_and_moves_on_graceful_stop(
        self, database: str
    ) -> None:
        first, second = _build(database, ttl=2.0), _build(database, ttl=2.0)
        reader = await _open(database)
        sources: list[int] = []
        try:
            async with serving(second):
                async with serving(first):
                    held = [set(app.inspect()["leases"]["held"]) for app in (first, second)]
                    assert held[0] | held[1] == set(WORKERS)
                    assert not held[0] & held[1]
                    for i in range(10):
                        app = (first, second)[i % 2]
                        sources.append((await app.execute(Add(f"k{i}"))).id)
                    await _wait_for_echoes(reader, sources)
                # The first process released its leases: the second runs everything now.
                stopped_at = trio.current_time()
                await wait_until(lambda: set(second.inspect()["leases"]["held"]) == set(WORKERS))
                # Released leases are taken at the next round, not after expiry.
                assert trio.current_time() - stopped_at < second.lease_ttl
                sources.extend([(await second.execute(Add(f"later{i}"))).id for i in range(10)])
                seen = await _wait_for_echoes(reader, sources)
            assert set(seen.values()) == {1}, "every worker handled every add exactly once"
            assert len(seen) == len(WORKERS) * len(sources)
        finally:
            await reader.aclose()

    async def test_a_holder_that_lost_its_lease_cannot_commit(self, database: str) -> None:
        """A frozen holder resumes after another process took over: its commit is refused,
        nothing it emits lands, and it stands by."""
        gate = trio.Event()
        app = _build(database, ttl=30.0, gate=gate)
        intruder = await _open(database)
        try:
            async with serving(app):
                await app.execute(Add("k"))
                await trio.sleep(0.1)  # every worker is inside its handler, at the gate
                epochs = app.inspect()["leases"]["held"]
                # Another process takes w1 over (as after the holder's lease expired).
                await intruder.release_leases({"w1": epochs["w1"]})
                assert await _take(intruder, "intruder", ["w1"], 3600) == {"w1": epochs["w1"] + 1}
                gate.set()
                seen = await _wait_for_echoes_of(intruder, ["w2", "w3", "w4"])
                await trio.sleep(0.2)
                assert "w1" not in app.inspect()["leases"]["held"]
                assert "w1" in app.inspect()["leases"]["standby"]
                assert app.inspect()["leases"]["losses"] == 1
            seen = await _echoes(intruder)
            assert {w for w, _ in seen} == {"w2", "w3", "w4"}
            assert (await intruder.positions()).get("w1", 0) == 0
        finally:
            await intruder.aclose()


async def _wait_for_echoes_of(store: Store, workers: list[str]) -> Counter[tuple[str, int]]:
    with trio.fail_after(30):
        while True:
            seen = await _echoes(store)
            if set(workers) <= {w for w, _ in seen}:
                return seen
            await trio.sleep(0.02)


class TestRetryStateSurvivesRestart:
    async def test_backoff_resumes_with_its_attempt_count_and_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        attempts: list[tuple[float, int]] = []

        def build(database: str) -> pt.App:
            app = pt.App(database=database, clock=pt.TrioWallClock(), shutdown_grace=0)
            app.register_command(Add)
            worker: pt.PatternWorker[None] = pt.PatternWorker(
                "flaky", retry=pt.Backoff(initial=1.0, max_attempts=5)
            )

            @worker.on_command("test/add")
            async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                attempts.append((trio.current_time(), ctx.attempt))
                raise RuntimeError("down")

            app.register_worker(worker)
            return app

        with memory_database() as database:
            async with serving(build(database)) as app:
                await app.execute(Add("k"))
                await trio.sleep(4)  # attempts at 0, 1 and 3; the next is due at 7
            await trio.sleep(1)  # down from 4 to 5
            async with serving(build(database)) as app:
                await trio.sleep(20)
                (letter,) = await app.dead_letters()
        assert attempts == [(0, 1), (1, 2), (3, 3), (7, 4), (15, 5)]
        assert letter.attempts == 5
        assert letter.first_failed_at.timestamp() == pt.TrioWallClock().epoch


def _recording(**app_options: Any) -> tuple[pt.App, pt.PatternWorker[None], list[str]]:
    """An app with one worker that records the keys of the Adds it handles."""
    handled: list[str] = []
    app = pt.App(**app_options)
    app.register_command(Add)
    worker: pt.PatternWorker[None] = pt.PatternWorker("follower")

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        handled.append(cmd.key)

    app.register_worker(worker)
    return app, worker, handled


def _follower_and_writer(database: str) -> tuple[pt.App, list[str], pt.App]:
    """Two apps on one log, as two processes would be: one follows, one appends."""
    follower, _, handled = _recording(database=database, leases=False)
    writer = pt.App(database=database, leases=False)
    writer.register_command(Add)
    return follower, handled, writer


class TestAppendsFromAnotherProcess:
    async def test_wake_a_follower_without_polling_the_table(self, database: str) -> None:
        """SQLite: PRAGMA data_version; PostgreSQL: LISTEN/NOTIFY."""
        follower, handled, writer = _follower_and_writer(database)
        async with serving(follower), serving(writer):
            for i in range(5):
                await writer.execute(Add(f"k{i}"))
            await wait_until(lambda: len(handled) == 5, timeout=5)
            reads = follower.inspect()["store"]["reads"]
        assert handled == [f"k{i}" for i in range(5)]
        assert reads < 50, "the follower read the log on a wake-up, not on a poll"

    async def test_caught_up_covers_what_another_process_appended(self, database: str) -> None:
        """``caught_up`` waits for everything committed before it was called, whoever
        appended it, not only for what this process has heard of so far."""
        follower, handled, writer = _follower_and_writer(database)
        async with serving(follower), serving(writer):
            for i in range(5):
                await writer.execute(Add(f"k{i}"))
                await follower.caught_up()
                assert handled == [f"k{j}" for j in range(i + 1)]


async def test_prometheus_shows_which_process_runs_each_worker(tmp_path: Path) -> None:
    database = str(tmp_path / "log.db")
    first, second = _build(database, ttl=30.0), _build(database, ttl=30.0)

    async def held(client: httpx.AsyncClient) -> dict[str, float]:
        response = await client.get("/metrics")
        return {
            s.labels["worker"]: s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
            if s.name == "petrock_worker_lease_held"
        }

    async with api(first) as one, api(second) as two:
        # The first process took every lease; the second stands by for all of them.
        assert await held(one) == dict.fromkeys(WORKERS, 1.0)
        assert await held(two) == dict.fromkeys(WORKERS, 0.0)


async def test_a_takeover_that_cannot_read_the_store_tries_again(tmp_path: Path) -> None:
    class FailingOnce(FaultyStore):
        calls = 0

        async def positions(self) -> dict[str, int]:
            self.calls += 1
            if self.calls == 2:  # the first read after the lease was taken
                raise pt.StoreError("injected: database unavailable")
            return await super().positions()

    store = FailingOnce(open_store(str(tmp_path / "log.db")))
    app, worker, handled = _recording(store=store, leases=True, lease_ttl=0.5)
    async with serving(app):
        await wait_until(lambda: worker.statistics().running, timeout=5)
        await app.execute(Add("k"))
        await app.caught_up()
    assert handled == ["k"]
    assert store.calls >= 3


class CutOff(FaultyStore):
    """A store whose lease rounds fail once ``cut`` (a network cut off from it)."""

    cut = False

    async def leases(
        self,
        holder: str,
        held: Mapping[str, int],
        wanted: Sequence[str],
        *,
        ttl: float,
        now: float,
    ) -> dict[str, int]:
        if self.cut:
            raise pt.StoreError("injected: network unreachable")
        return await super().leases(holder, held, wanted, ttl=ttl, now=now)


async def test_a_holder_cut_off_from_the_database_stops_before_another_takes_over(
    tmp_path: Path,
) -> None:
    """Cut off, a holder cannot renew: it stops its workers once ``ttl`` has passed since
    its last renewal began, which is before the store lets anyone else take them."""

    database = str(tmp_path / "log.db")
    ttl = 1.0
    first = _build(database, ttl=ttl)
    store = CutOff(open_store(database))
    first.store = store
    second = _build(database, ttl=ttl)
    async with serving(first), serving(second):
        assert set(first.inspect()["leases"]["held"]) == set(WORKERS)
        store.cut = True
        cut_at = trio.current_time()
        await wait_until(lambda: not first.inspect()["leases"]["held"], timeout=5)
        stopped_after = trio.current_time() - cut_at
        await wait_until(lambda: set(second.inspect()["leases"]["held"]) == set(WORKERS), timeout=5)
        taken_after = trio.current_time() - cut_at
        workers = list(first.workers.values())
        assert all(isinstance(w, pt.PatternWorker) and not w.statistics().running for w in workers)
    assert stopped_after <= ttl + 0.1
    assert stopped_after <= taken_after


async def test_sqlite_without_inotify_polls_for_other_processes_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify is missing (not Linux), the watch polls data_version instead."""
    from petrock_trio.stores import _sqlitewatch  # noqa: PLC0415 - the seam under test

    @contextlib.contextmanager
    def no_inotify(path: str) -> Iterator[None]:
        yield None

    monkeypatch.setattr(_sqlitewatch, "wal_changes", no_inotify)
    database = str(tmp_path / "log.db")
    follower, _, handled = _recording(database=database)
    writer = pt.App(database=database)
    writer.register_command(Add)
    async with serving(follower), serving(writer):
        await trio.sleep(1.5)  # idle: the poll has slowed down to once a second
        await writer.execute(Add("late"))
        await wait_until(lambda: handled == ["late"], timeout=5)


async def test_no_handler_starts_once_the_lease_ran_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every handler is preceded by the lease check, in a stretch too (where the loop's
    own cancel point stands for the check's checkpoint): cut off from renewing, a
    holder starts no handler after its lease's term, even before the renewal task
    notices at its next round."""

    started: list[float] = []
    # In memory, no thread: virtual time moves only while every task waits for it.
    with memory_database() as url:
        async with pt.open_log(url, commands=[Add]) as log:
            await log.append(*[Add(str(i)) for i in range(2000)])
        app = pt.App(database=url, leases=True, lease_ttl=1.0)
        app.register_command(Add)
        store = CutOff(open_store(url))
        app.store = store
        worker: pt.PatternWorker[None] = pt.PatternWorker("slow", batch_positions=True)

        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            started.append(trio.current_time())
            if len(started) == 50:
                store.cut = True  # renewals fail from now on
            # Busy for 10 ms and never yields: the stretch goes on, the renewal task
            # runs only at its schedule points (every 64 messages or millisecond).
            autojump_clock.jump(0.01)

        worker.on_command("test/add", on_add)
        app.register_worker(worker)
        async with serving(app):
            keeper = app._rt.leases if app._rt is not None else None
            assert keeper is not None
            await wait_until(lambda: store.cut, timeout=10)
            await wait_until(lambda: not app.inspect()["leases"]["held"], timeout=10)
            valid_until = keeper._valid_until  # the term the check keeps to
    assert 50 < len(started) < 2000
    assert max(started) < valid_until


async def test_waiting_for_a_lease_held_and_lost_again_before_the_waiter_runs() -> None:
    """State changes at every checkpoint: a lease taken and lost again before the task
    waiting for it runs leaves that task waiting, instead of failing it."""
    keeper = LeaseKeeper(open_store(":memory:"), pt.SystemClock, ["w"], ttl=10.0)
    got: list[int] = []

    async def waiter() -> None:
        got.append(await keeper.wait_held("w"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        keeper.held["w"] = 1  # taken (as a renewal round does) ...
        keeper._changes.value += 1  # what a round tells its waiters
        keeper.lose(["w"])  # ... and lost before the waiter ran
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        keeper.held["w"] = 2
        keeper._changes.value += 1
    assert got == [2]
