"""Replay vs live on a real log (SQLite file, PostgreSQL): restarts, appends while down, crashes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import petrock_trio as pt
from petrock_trio.stores import SQLiteStore
from petrock_trio.testing import serving
from tests.support import Add, Echoed, Note, make_app


async def log_names(path: str) -> list[tuple[int, str, Any]]:
    async with pt.open_log(path, commands=[Add, Echoed, Note]) as log:
        return [(m.id, m.name, m.command) for m in await log.read_after(0, 10_000)]


async def echo_counts(path: str) -> Counter[int]:
    return Counter(cmd.source_id for _, name, cmd in await log_names(path) if name == "test/echoed")


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        # Only this parameter needs a server; where there is none it skips.
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "app.db")


class TestRestart:
    """Saved positions split replay from live handling exactly."""

    async def test_commands_appended_while_down_are_handled_live(self, database: str) -> None:
        db = database
        app, worker, first = make_app(db)
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()  # its echo (id 2) lands before the next add
            await app.execute(Add("b", 2))
            await app.caught_up()
        assert first.live == [("a", 1), ("b", 3)]

        async with pt.open_log(db, commands=[Add, Note]) as log:
            await log.append(Add("c", 5), Note("offline"))

        app, worker, second = make_app(db)
        async with serving(app):
            # serve returned: replay is over before the first command is executed.
            assert second.replayed == [("a", 1), ("b", 3)]
            await app.caught_up()
            assert second.live == [("c", 5), ("offline", 6)]
            assert worker.state.totals == {"a": 1, "b": 2, "c": 5}
            assert app.state.totals == {"a": 1, "b": 2, "c": 5}
            assert worker.metrics().replayed == 2
        assert await echo_counts(db) == {1: 1, 3: 1, 5: 1}

        app, worker, third = make_app(db)
        async with serving(app):
            await app.caught_up()
        assert third.live == []
        assert third.replayed == [("a", 1), ("b", 3), ("c", 5), ("offline", 6)]
        assert await echo_counts(db) == {1: 1, 3: 1, 5: 1}

    async def test_replay_false_skips_the_rebuild(self, tmp_path: Path) -> None:
        db = str(tmp_path / "app.db")
        app, _, _ = make_app(db)
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
        app, worker, calls = make_app(db)
        worker.replay = False
        async with serving(app):
            await app.execute(Add("b"))
            await app.caught_up()
        assert calls.replayed == []
        assert calls.live == [("b", 3)]
        assert worker.state.totals == {"b": 1}

    async def test_hard_cancel_still_commits_positions(self, database: str) -> None:
        app, _, _ = make_app(database, position_flush_interval=3600)
        async with serving(app, graceful=False):
            await app.execute(Note("n1"))
            await app.caught_up()
        async with pt.open_log(database) as log:
            assert (await log.store.positions())["tally"] == 1

    async def test_same_app_object_can_serve_again(self, tmp_path: Path) -> None:
        db = str(tmp_path / "app.db")
        app, worker, calls = make_app(db)
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
        async with serving(app):
            await app.caught_up()
            assert worker.state.totals == {"a": 1}
        assert calls.live == [("a", 1)]
        assert calls.replayed == [("a", 1)]


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing after it runs."""


class TestCrashBeforeCommit:
    """A crash between handler and commit re-handles the message; its emits land once."""

    async def test_emits_exactly_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        db = str(tmp_path / "app.db")
        original = SQLiteStore.commit_many
        crashes = 0

        async def crash_on_emit(self: SQLiteStore, commits: Any) -> Any:
            nonlocal crashes
            if any(name == "test/echoed" for c in commits for name, _ in c.appends) and not crashes:
                crashes += 1
                raise SimulatedCrash
            return await original(self, commits)

        monkeypatch.setattr(SQLiteStore, "commit_many", crash_on_emit)
        app, _, calls = make_app(db)
        with pytest.RaisesGroup(SimulatedCrash, flatten_subgroups=True):
            async with serving(app):
                await app.execute(Add("a"))
                await trio.sleep_forever()
        assert calls.live == [("a", 1)]
        assert await echo_counts(db) == {}

        app, _, calls = make_app(db)
        async with serving(app):
            await app.caught_up()
        assert calls.live == [("a", 1)]  # handled again, live: its effect had not landed
        assert await echo_counts(db) == {1: 1}
        assert crashes == 1
