"""The app: inspect, caught_up, graceful and hard shutdown, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

import petrock_trio as pt
from petrock_trio.stores import Commit, SQLiteStore
from petrock_trio.testing import serving
from tests.support import Add, Note, make_app


class TestInspect:
    """inspect() is JSON-serialisable and shows positions, lag, health and metrics."""

    async def test_report(self) -> None:
        app, _, _ = make_app()
        async with serving(app):
            await app.execute(Add("a"))
            await app.execute(Note("n"))
            await app.caught_up()
            report = app.inspect()
        json.dumps(report)
        assert report["running"] is True
        assert report["head"] == 3
        assert "test/add" in report["commands"]
        tally = report["workers"]["tally"]
        assert tally["routes"] == ["test/add", "test/note"]
        assert (tally["position"], tally["lag"]) == (3, 0)
        assert tally["metrics"]["processed"] == 2
        assert tally["health"] == {"status": "healthy", "reasons": []}
        assert report["positions"] == {"tally": 3}
        assert report["health"]["status"] == "healthy"

    def test_report_when_stopped(self) -> None:
        app, _, _ = make_app()
        report = app.inspect()
        assert (report["running"], report["head"]) == (False, None)

    def test_repr_shows_state(self) -> None:
        app, worker, _ = make_app()
        assert repr(app) == "<App ':memory:' stopped commands=5 workers=1>"
        assert repr(worker) == (
            "<PatternWorker 'tally' routes=['test/add', 'test/note'] position=0 in_flight=0 "
            "state=Tally(totals={})>"
        )


class TestRegistration:
    """Registration errors are configuration errors, found before serving."""

    def test_duplicate_worker_and_route(self) -> None:
        app, worker, _ = make_app()
        with pytest.raises(pt.ConfigurationError, match="already registered"):
            app.register_worker(worker)
        with pytest.raises(pt.ConfigurationError, match="already routes"):
            worker.on_command("test/add", lambda ctx, cmd, state: None)  # type: ignore[arg-type, return-value]

    async def test_no_registration_while_serving(self) -> None:
        app, _, _ = make_app()
        async with serving(app):
            with pytest.raises(pt.ConfigurationError, match="while the app is serving"):
                app.register_command(Add)

    def test_register_feature(self) -> None:
        class Feature:
            @staticmethod
            def register(app: pt.App) -> None:
                app.register_command(Add)

        app = pt.App()
        app.register_feature(Feature)
        assert app.registry.names() == ["test/add"]
        with pytest.raises(pt.ConfigurationError):
            app.register_feature(object())  # type: ignore[arg-type]


@pytest.fixture
def file_clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Virtual time for tests on a real file: the store's thread hops look like idleness
    to autojump, so jump only after 50 ms of real quiet (far longer than a write here)."""
    mock_clock.autojump_threshold = 0.05
    return mock_clock


class TestShutdown:
    """Graceful shutdown finishes running handlers, commits, and starts nothing new."""

    async def test_graceful_finishes_in_flight(
        self, tmp_path: Path, file_clock: trio.testing.MockClock
    ) -> None:
        db = str(tmp_path / "g.db")
        app = pt.App(database=db, shutdown_grace=10.0)
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker("slow")
        finished: list[int] = []

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            await trio.sleep(3)
            finished.append(ctx.message.id)

        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("1"))
            await app.execute(Note("2"))
            await trio.sleep(1)
            app.stop()
            with pytest.raises(pt.NotRunning):
                await app.execute(Note("3"))
        assert finished == [1]
        store = SQLiteStore(db)
        await store.open()
        assert (await store.positions())["slow"] == 1
        await store.aclose()

    async def test_grace_period_runs_out(
        self, tmp_path: Path, file_clock: trio.testing.MockClock
    ) -> None:
        db = str(tmp_path / "g.db")
        app = pt.App(database=db, shutdown_grace=2.0)
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker("stuck", handler_timeout=100)

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            await trio.sleep(50)

        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("1"))
            await trio.testing.wait_all_tasks_blocked()
            stopping_at = trio.current_time()
            app.stop()
        assert trio.current_time() - stopping_at == 2.0
        store = SQLiteStore(db)
        await store.open()
        assert (await store.positions()).get("stuck", 0) == 0  # not done: handled again next time
        await store.aclose()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_gracefully(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "sig.db"
    script = textwrap.dedent(
        f"""
        import sys, trio
        import petrock_trio as pt
        from tests.support import make_app, Add

        app, worker, calls = make_app({str(db)!r})

        async def main():
            async with trio.open_nursery() as nursery:
                await nursery.start(pt.serve, app)
                await app.execute(Add("a"))
                await app.caught_up()
                print("ready", flush=True)
        trio.run(main)
        print("stopped", calls.live, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # structlog writes its own lines to stdout too
        if line.strip() == "ready":
            break
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped [('a', 1)]" in out


async def test_commands_in_flight_at_shutdown_do_not_hang(tmp_path: Path) -> None:
    """An execute() caught by shutdown either lands or says the app stopped; never hangs."""
    app, _, _ = make_app(str(tmp_path / "s.db"), shutdown_grace=30.0)
    outcomes: list[str] = []

    async def submit(i: int) -> None:
        try:
            await app.execute(Note(str(i)))
            outcomes.append("ok")
        except pt.NotRunning:
            outcomes.append("refused")

    with trio.fail_after(10):  # far below the grace period: nothing waits for it
        async with trio.open_nursery() as nursery, serving(app):
            for i in range(50):
                nursery.start_soon(submit, i)
            await trio.lowlevel.checkpoint()
            app.stop()
    assert len(outcomes) == 50
    async with pt.open_log(str(tmp_path / "s.db"), commands=[Note]) as log:
        stored = [m for m in await log.read_after(0) if m.name == "test/note"]
    assert len(stored) >= outcomes.count("ok")  # every accepted command is in the log


async def test_stop_during_startup_replay(autojump_clock: trio.testing.MockClock) -> None:
    """A stop during a long replay ends serve promptly; serve never reports started."""
    with pt.testing.memory_database() as db:
        app = pt.App(database=db)
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker("slow-replay")

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            if ctx.is_replay:
                await trio.sleep(1)

        app.register_worker(worker)
        async with serving(app):
            for i in range(10):
                await app.execute(Note(str(i)))
            await app.caught_up()
        outcome: list[str] = []

        async def run() -> None:
            await pt.serve(app, handle_signals=False)
            outcome.append("returned")

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(run)
            await trio.sleep(3.5)
            app.stop()
        assert outcome == ["returned"]
        assert trio.current_time() - start == 3.5
        assert worker.metrics().replayed == 3


async def test_executes_waiting_for_state_are_told_when_the_app_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """execute() returns once state has applied its command; callers still waiting
    for that when the app stops get NotRunning (their commands are in the log)."""
    with pt.testing.memory_database() as url:
        store = pt.testing.FaultyStore(pt.stores.open_store(url))
        app = pt.App(database=url)
        app.store = store
        app.register_command(Note)
        seen: list[str] = []

        async def submit(text: str) -> None:
            try:
                await app.execute(Note(text))
                seen.append(f"{text} ok")
            except pt.NotRunning:
                seen.append(f"{text} refused")

        # Virtual time: a wait that nothing ends fails here instead of hanging.
        with trio.fail_after(600):
            async with serving(app):
                await app.execute(Note("first"))
                # A row of another writer's comes first, which the pump must read (its
                # own rows it is handed), and reads stall: the projection stops.
                store.stall_reads(3600.0)
                theirs = Commit(appends=[("test/note", b'{"text":"theirs"}')], timestamp=0.0)
                await store.commit_many([theirs])
                async with trio.open_nursery() as nursery:
                    for text in "abc":
                        nursery.start_soon(submit, text)
                    await trio.sleep(10)
                    assert seen == []  # all three appended, none applied yet
                    app.stop()
        assert sorted(seen) == ["a refused", "b refused", "c refused"]
        async with pt.open_log(url, commands=[Note]) as log:
            texts = [m.command.text for m in await log.read_after(0)]
        assert texts[:2] == ["first", "theirs"]
        assert sorted(texts[2:]) == ["a", "b", "c"]  # in the order they were appended
