"""What only the PostgreSQL store has to get right: order under concurrent writers,
wake-ups across processes, cancellation mid-query, wrapped driver errors, and the
engine running on it end to end.

The contract shared with SQLite is in test_store.py. The admin side of these tests
(blocking locks, inspecting the server) uses plain psycopg, not the code under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import petrock_trio as pt
from petrock_trio.stores import Commit, open_store
from petrock_trio.testing import serving, wait_until
from tests.support import Add, Echoed, apply_add, make_app

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the `postgres` extra)")

from petrock_trio.stores._postgres import PostgresStore  # noqa: E402 - needs psycopg

# Bounds on waits for a real server: generous, since CI machines are small.
SERVER_WAIT = 10.0


class Admin:
    """A plain psycopg connection (in a thread) to hold locks and look at the server."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cur = self.conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

        return await trio.to_thread.run_sync(run)

    async def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        ((value,),) = await self.rows(sql, params)
        return value

    async def backend(self, pid: int) -> tuple[str, str | None]:
        """(state, wait_event_type) of a server backend."""
        rows = await self.rows(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        return rows[0] if rows else ("gone", None)

    async def wait_for_lock_wait(self, pid: int) -> None:
        # Only the wait event: within a pipeline, pg_stat_activity can show a backend
        # waiting for a lock as "idle", with the previous statement's text.
        with trio.fail_after(SERVER_WAIT):
            while (await self.backend(pid))[1] != "Lock":  # noqa: ASYNC110 - polls the server
                await trio.sleep(0.01)


@asynccontextmanager
async def admin(url: str) -> AsyncIterator[Admin]:
    conn = await trio.to_thread.run_sync(lambda: psycopg.connect(url, autocommit=True))
    try:
        yield Admin(conn)
    finally:
        conn.close()


@asynccontextmanager
async def opened(url: str, **kw: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **kw)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def writer_pid(store: PostgresStore) -> int:
    assert store._writer is not None
    return store._writer.backend_pid


def reader_pid(store: PostgresStore) -> int:
    assert store._reader is not None
    return store._reader.backend_pid


def one(name: str) -> Commit:
    return Commit(appends=[(name, b"{}")])


class Follower:
    """Reads ``read_after`` pages the way the pump does; remembers every id it saw."""

    def __init__(self, store: PostgresStore, page: int = 50) -> None:
        self.store = store
        self.page = page
        self.position = 0
        self.seen: list[int] = []

    async def read(self) -> None:
        while rows := await self.store.read_after(self.position, self.page):
            self.seen.extend(r.id for r in rows)
            self.position = rows[-1].id

    async def skipped(self) -> list[int]:
        await self.read()
        every = [r.id for r in await self.store.read_after(0, 1_000_000)]
        return sorted(set(every) - set(self.seen))


@pytest.mark.postgres
class TestOrdering:
    """A follower reading ``id > position`` never skips a row, whoever commits first."""

    @pytest.mark.parametrize("serialize", [True, False], ids=["serialised", "unserialised"])
    async def test_late_commit(self, postgres_url: str, serialize: bool) -> None:
        """Writer A draws its id, then stalls before committing; writer B appends after it.

        Unserialised, B commits first, the follower moves past A's id and never sees A's
        row: the skip the append lock exists to prevent. Serialised, B waits for A.
        """
        async with (
            opened(postgres_url, serialize_appends=serialize) as a,
            opened(postgres_url, serialize_appends=serialize) as b,
            opened(postgres_url) as reader,
            admin(postgres_url) as blocker,
        ):
            await a.commit_many([Commit(positions={"stalled": 0})])
            follower = Follower(reader)
            # A's commit ends with a position update on a row the blocker has locked.
            await blocker.rows("BEGIN")
            await blocker.rows("SELECT * FROM positions WHERE worker = 'stalled' FOR UPDATE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    a.commit_many, [Commit(appends=[("a", b"{}")], positions={"stalled": 1})]
                )
                await blocker.wait_for_lock_wait(writer_pid(a))
                b_done = trio.Event()

                async def append_b() -> None:
                    await b.commit_many([one("b")])
                    b_done.set()

                nursery.start_soon(append_b)
                if serialize:
                    # B queues behind A's append lock instead of committing first.
                    await blocker.wait_for_lock_wait(writer_pid(b))
                else:
                    with trio.fail_after(SERVER_WAIT):
                        await b_done.wait()
                await follower.read()
                await blocker.rows("ROLLBACK")
            skipped = await follower.skipped()
            names = [r.name for r in await reader.read_after(0, 10)]
        if serialize:
            assert skipped == []
            assert names == ["a", "b"]
        else:
            assert len(skipped) == 1  # A's row: it committed below the follower's position
            assert names == ["a", "b"]

    async def test_concurrent_writers(self, postgres_url: str) -> None:
        """Several connections append at once while a follower pages through the log."""
        writers, commits_each = 4, 60
        done = trio.Event()
        async with opened(postgres_url) as reader:
            follower = Follower(reader, page=7)

            async def follow() -> None:
                while not done.is_set():
                    await follower.read()
                    await trio.lowlevel.checkpoint()

            async def write(n: int) -> None:
                async with opened(postgres_url) as store:
                    for i in range(commits_each):
                        names = [f"w{n}/{i}/{k}" for k in range(1 + i % 3)]
                        (rows,) = await store.commit_many(
                            [Commit(appends=[(name, b"{}") for name in names])]
                        )
                        # A commit's rows get consecutive ids, in order.
                        assert [r.id for r in rows] == list(range(rows[0].id, rows[-1].id + 1))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                async with trio.open_nursery() as writing:
                    for n in range(writers):
                        writing.start_soon(write, n)
                done.set()
            assert await follower.skipped() == []
            rows = await reader.read_after(0, 1_000_000)
        assert len(rows) == writers * sum(1 + i % 3 for i in range(commits_each))
        assert len({r.id for r in rows}) == len(rows)
        for n in range(writers):
            mine = [r.name for r in rows if r.name.startswith(f"w{n}/")]
            assert mine == sorted(mine, key=lambda s: [int(x) for x in s.split("/")[1:]])


@pytest.mark.postgres
class TestWatch:
    """``watch`` publishes heads appended through other store objects (other processes)."""

    @staticmethod
    async def watching(
        nursery: trio.Nursery, store: PostgresStore
    ) -> tuple[list[int], Callable[[int], Any]]:
        heads: list[int] = []

        async def until(head: int) -> None:
            with trio.fail_after(SERVER_WAIT):
                while not heads or heads[-1] < head:  # noqa: ASYNC110 - publish is a plain callback
                    await trio.sleep(0.005)

        nursery.start_soon(store.watch, heads.append)
        return heads, until

    async def test_notify_wakes_another_store(self, postgres_url: str) -> None:
        # A poll interval far beyond the test: only LISTEN/NOTIFY can deliver in time.
        async with (
            opened(postgres_url, poll_interval=3600) as watcher,
            opened(postgres_url) as other,
            trio.open_nursery() as nursery,
        ):
            heads, until = await self.watching(nursery, watcher)
            await until(0)  # listening, and the head at that moment published
            start = trio.current_time()
            (rows,) = await other.commit_many([Commit(appends=[("a", b"{}"), ("b", b"{}")])])
            await until(rows[-1].id)
            assert trio.current_time() - start < 2.0
            assert heads[-1] == 2
            nursery.cancel_scope.cancel()

    async def test_poll_finds_rows_appended_without_notify(self, postgres_url: str) -> None:
        async with (
            opened(postgres_url, poll_interval=0.1) as watcher,
            admin(postgres_url) as sql,
            trio.open_nursery() as nursery,
        ):
            _, until = await self.watching(nursery, watcher)
            await until(0)
            await sql.rows(
                "INSERT INTO messages VALUES (nextval('messages_id_seq'), 0, 'x', '\\x7b7d')"
            )
            await until(1)
            nursery.cancel_scope.cancel()

    async def test_foreign_notification_triggers_a_poll(self, postgres_url: str) -> None:
        async with (
            opened(postgres_url, poll_interval=3600) as watcher,
            admin(postgres_url) as sql,
            trio.open_nursery() as nursery,
        ):
            _, until = await self.watching(nursery, watcher)
            await until(0)
            channel = await sql.value("SELECT 'petrock_trio_' || 'messages'::regclass::oid")
            await sql.rows(
                "INSERT INTO messages VALUES (nextval('messages_id_seq'), 0, 'x', '\\x7b7d')"
            )
            await sql.rows("SELECT pg_notify(%s, 'not a head')", (channel,))
            await until(1)
            nursery.cancel_scope.cancel()

    async def test_lost_listening_connection_is_reopened(self, postgres_url: str) -> None:
        url = postgres_url + "&application_name=watcher"
        # Not opened: watch needs only its own connection, the one terminated below.
        watcher = PostgresStore(url, poll_interval=0.1)
        async with (
            opened(postgres_url) as other,
            admin(postgres_url) as sql,
            trio.open_nursery() as nursery,
        ):
            _, until = await self.watching(nursery, watcher)
            await until(0)
            killed = await sql.value(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'watcher'"
            )
            assert killed == 1
            await other.commit_many([one("a")])
            await until(1)
            nursery.cancel_scope.cancel()


@pytest.mark.postgres
class TestCancellation:
    """A cancel scope firing mid-query cancels the server's query; the connection survives."""

    @pytest.mark.parametrize("async_cancel", [True, False], ids=["cancel-conn", "cancel-thread"])
    async def test_cancelled_commit(self, postgres_url: str, async_cancel: bool) -> None:
        async with opened(postgres_url) as store, admin(postgres_url) as blocker:
            assert store._writer is not None
            store._writer.async_cancel = async_cancel
            pid = writer_pid(store)
            await blocker.rows("SELECT pg_advisory_lock(%s)", (PostgresStore.APPEND_LOCK,))
            start = trio.current_time()
            with trio.move_on_after(0.2) as scope:
                await store.commit_many([one("never")])
            assert scope.cancelled_caught
            assert trio.current_time() - start < 2.0
            # The server is no longer running (or waiting in) that transaction.
            assert await blocker.backend(pid) == ("idle", "Client")
            await blocker.rows("SELECT pg_advisory_unlock(%s)", (PostgresStore.APPEND_LOCK,))
            (rows,) = await store.commit_many([one("after")])
            assert writer_pid(store) == pid  # the same connection, still usable
            assert [r.name for r in await store.read_after(0, 10)] == ["after"]
            assert rows[0].name == "after"

    async def test_cancelled_read(self, postgres_url: str) -> None:
        async with opened(postgres_url) as store, admin(postgres_url) as blocker:
            await store.head()
            pid = reader_pid(store)
            await blocker.rows("BEGIN")
            await blocker.rows("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            with trio.move_on_after(0.2) as scope:
                await store.read_after(0, 10)
            assert scope.cancelled_caught
            assert await blocker.backend(pid) == ("idle", "Client")
            await blocker.rows("COMMIT")
            assert await store.read_after(0, 10) == []
            assert reader_pid(store) == pid

    async def test_unresponsive_server_connection_is_discarded(self, postgres_url: str) -> None:
        """A backend that cannot answer (stopped) costs the connection, never a hang."""
        async with opened(postgres_url, abort_grace=0.3) as store, admin(postgres_url) as sql:
            pid = writer_pid(store)
            os.kill(pid, signal.SIGSTOP)
            try:
                start = trio.current_time()
                with trio.move_on_after(0.2) as scope:
                    await store.commit_many([one("maybe")])
                assert scope.cancelled_caught
                assert trio.current_time() - start < 2.0
                assert store._writer is not None
                assert store._writer.closed
            finally:
                os.kill(pid, signal.SIGCONT)
            with trio.fail_after(SERVER_WAIT):
                while (await sql.backend(pid))[0] != "gone":  # noqa: ASYNC110 - polls the server
                    await trio.sleep(0.01)
            await store.commit_many([one("next")])
            assert writer_pid(store) != pid  # a new connection
            # The commit's outcome is unknown to its caller: the stopped backend still
            # held the whole pipeline when it resumed. Either all of it landed or none.
            assert [r.name for r in await store.read_after(0, 10)] in (
                ["next"],
                ["maybe", "next"],
            )

    async def test_cancel_too_late_reports_the_commit(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cancel that reaches the server after the commit does not hide that it landed."""
        async with opened(postgres_url) as store, admin(postgres_url) as sql:
            assert store._writer is not None
            conn = store._writer
            collect = conn._collect

            async def commit_lands_then_cancel(results: list[Any]) -> None:
                if not scope.cancel_called:  # the append's pipeline, not the abort's drain
                    with trio.fail_after(SERVER_WAIT):
                        while not await sql.value("SELECT count(*) FROM messages"):  # noqa: ASYNC110 - polls the server
                            await trio.sleep(0.005)
                    scope.cancel()
                await collect(results)

            aborts: list[bool] = []
            abort = conn._abort

            async def abort_spy(results: list[Any]) -> bool:
                aborts.append(await abort(results))
                return aborts[-1]

            monkeypatch.setattr(conn, "_collect", commit_lands_then_cancel)
            monkeypatch.setattr(conn, "_abort", abort_spy)
            with trio.CancelScope() as scope:
                (rows,) = await store.commit_many([one("landed")])
                await trio.lowlevel.checkpoint()  # where the cancel is delivered instead
            assert scope.cancelled_caught
            assert aborts == [True]  # the cancel hit the wait for results; drained, kept
            monkeypatch.undo()
            assert [r.name for r in rows] == ["landed"]
            assert [r.name for r in await store.read_after(0, 10)] == ["landed"]
            assert writer_pid(store) == conn.backend_pid


@pytest.mark.postgres
class TestErrors:
    """Driver errors reach callers as StoreError, the psycopg error as its cause."""

    async def test_unreachable_server(self, tmp_path: Any) -> None:
        store = PostgresStore(f"postgresql:///db?host={tmp_path}&port=1")
        with pytest.raises(pt.StoreError, match="cannot connect") as info:
            await store.open()
        assert isinstance(info.value.__cause__, psycopg.OperationalError)

    async def test_constraint_violation_keeps_its_sqlstate(self, postgres_url: str) -> None:
        async with opened(postgres_url) as store:
            with pytest.raises(pt.StoreError, match="not-null") as info:
                await store.commit_many([Commit(appends=[("a", None)])])  # type: ignore[list-item]
            assert isinstance(info.value.__cause__, psycopg.errors.NotNullViolation)
            assert info.value.__cause__.sqlstate == "23502"
            await store.commit_many([one("fine")])  # the connection is still good

    async def test_lost_connection_fails_once_then_reconnects(self, postgres_url: str) -> None:
        async with opened(postgres_url) as store, admin(postgres_url) as sql:
            await store.head()
            await sql.rows("SELECT pg_terminate_backend(%s)", (reader_pid(store),))
            with pytest.raises(pt.StoreError) as info:
                await store.head()
            assert isinstance(info.value.__cause__, psycopg.OperationalError)
            assert await store.head() == 0

    async def test_unencodable_commit(self, postgres_url: str) -> None:
        async with opened(postgres_url) as store:
            with pytest.raises(pt.StoreError, match="cannot encode"):
                await store.commit_many([Commit(appends=[(3, b"{}")])])  # type: ignore[list-item]

    async def test_closed_store(self, postgres_url: str) -> None:
        store = PostgresStore(postgres_url)
        with pytest.raises(pt.StoreError, match="closed"):
            await store.head()
        await store.open()
        await store.aclose()
        with pytest.raises(pt.StoreError, match="closed"):
            await store.commit_many([one("late")])


@pytest.mark.postgres
class TestPreparedStatements:
    """Each statement is parsed and planned once per connection, not once per call."""

    async def test_prepared_once(self, postgres_url: str) -> None:
        async with opened(postgres_url) as store:
            for _ in range(3):
                await store.head()
                await store.commit_many([one("a")])
            for conn in (store._writer, store._reader):
                assert conn is not None
                (res,) = await conn.run(
                    [(b"SELECT count(*)::int8 FROM pg_prepared_statements", ())], prepare=False
                )
                counted = res.get_value(0, 0)
                assert counted is not None
                prepared = int.from_bytes(counted, "big")
                # head on the reader; lock, insert and notify on the writer
                assert prepared == (1 if conn is store._reader else 3)


class TestOpenStore:
    """open_store picks the store from the URL and imports psycopg only for PostgreSQL."""

    def test_postgres_urls(self) -> None:
        for url in ("postgresql://u@h/db", "postgres://u@h/db"):
            assert isinstance(open_store(url), PostgresStore)

    def test_repr_hides_the_password(self) -> None:
        store = PostgresStore("postgresql://user:secret@db.example:5432/app")
        assert "secret" not in repr(store)
        assert store.url == "postgresql://user:***@db.example:5432/app"

    def test_invalid_url_is_a_configuration_error(self) -> None:
        with pytest.raises(pt.ConfigurationError):
            open_store("postgresql://u@h/db?nonsense_option=1")

    def test_missing_psycopg_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "psycopg", None)
        monkeypatch.delitem(sys.modules, "petrock_trio.stores._postgres")
        with pytest.raises(pt.ConfigurationError, match=r"petrock-trio\[postgres\]"):
            open_store("postgresql://u@h/db")

    def test_importing_petrock_trio_does_not_import_psycopg(self) -> None:
        code = "import sys, petrock_trio, petrock_trio.stores; print('psycopg' in sys.modules)"
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        assert done.stdout.strip() == "False"


@pytest.mark.postgres
class TestEngineOnPostgres:
    """An app served on PostgreSQL sees other processes' appends at once.

    Handling, emits, restart replay and hard stops on PostgreSQL are the restart tests
    in tests/test_restart.py, run on both stores."""

    async def test_another_process_appends_are_seen_at_once(self, postgres_url: str) -> None:
        app, worker, calls = make_app(postgres_url)
        # A second app on the same database stands for another process: it only
        # executes commands, and the first app's worker handles them live.
        other = pt.App(database=postgres_url)
        other.state.totals = {}
        other.state.echoes = []
        other.register_command(Add, apply=apply_add)
        other.register_command(
            Echoed, apply=lambda state, cmd, message: state.echoes.append(cmd.source_id)
        )
        async with serving(app), serving(other):
            await other.execute(Add("far", 3))
            await wait_until(lambda: calls.live == [("far", 1)], timeout=SERVER_WAIT)
            await wait_until(lambda: app.state.totals == {"far": 3}, timeout=SERVER_WAIT)
            # ...and the echo emitted by the first app reaches the second's state.
            await wait_until(lambda: other.state.echoes == [1], timeout=SERVER_WAIT)
        assert worker.state.totals == {"far": 3}
