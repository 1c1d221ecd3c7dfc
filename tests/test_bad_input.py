"""Bad input gets a typed error and loses nothing; bad rows are dead-lettered, work goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.stores import Commit
from petrock_trio.testing import serving
from tests.support import Add, Named, Note, make_app


@pt.command("test/not-registered")
@attrs.frozen
class NotRegistered:
    x: int = 0


@attrs.frozen
class NotACommand:
    x: int = 0


class TestExecuteRefuses:
    """execute() raises the typed error and appends nothing."""

    @pytest.mark.parametrize(
        ("cmd", "error"),
        [
            pytest.param(NotRegistered(), pt.UnknownCommand, id="unregistered"),
            pytest.param(NotACommand(), pt.UnknownCommand, id="not-a-command"),
            pytest.param(Named(""), pt.ValidationError, id="validation"),
            pytest.param(Note("x" * 5000), pt.PayloadTooLarge, id="oversized"),
            pytest.param(Add(key=5), pt.DecodeError, id="wrong-type"),  # type: ignore[arg-type]
        ],
    )
    async def test_refused(self, cmd: object, error: type[Exception]) -> None:
        app, _, calls = make_app(max_payload_bytes=1024)
        async with serving(app):
            with pytest.raises(error):
                await app.execute(cmd)
            await app.execute(Note("after"))
            await app.caught_up()
            assert app.inspect()["head"] == 1
        assert calls.live == [("after", 1)]

    async def test_duplicate_is_validated_against_current_state(self) -> None:
        app, _, _ = make_app()
        async with serving(app):
            await app.execute(Named("a"))
            with pytest.raises(pt.ValidationError, match="taken"):
                await app.execute(Named("a"))

    async def test_concurrent_validated_commands_see_each_other(self) -> None:
        app, _, _ = make_app()
        outcomes: list[str] = []

        async def attempt() -> None:
            try:
                await app.execute(Named("same"))
                outcomes.append("ok")
            except pt.ValidationError:
                outcomes.append("refused")

        async with serving(app), trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(attempt)
        assert sorted(outcomes) == ["ok"] + ["refused"] * 9

    async def test_not_running(self) -> None:
        app, _, _ = make_app()
        with pytest.raises(pt.NotRunning):
            await app.execute(Note("x"))


async def append_raw(path: str, rows: list[tuple[str, bytes]]) -> None:
    async with pt.open_log(path) as log:
        await log.commit(Commit(appends=rows, timestamp=1.0))


class TestBadRowsInTheLog:
    """A row that does not decode is dead-lettered for each worker routing it."""

    async def test_undecodable_row(self, tmp_path: Path) -> None:
        db = str(tmp_path / "bad.db")
        await append_raw(
            db,
            [
                ("test/add", b'{"key": "good"}'),
                ("test/add", b'{"key": 42}'),
                ("test/add", b"\xff not json"),
                ("test/note", b'{"text": "still here"}'),
            ],
        )
        app, worker, calls = make_app(db)
        async with serving(app):
            await app.caught_up()
            letters = await app.dead_letters()
            report = app.inspect()
        assert calls.live == [("good", 1), ("still here", 4)]
        assert [(d.worker, d.message_id, d.command_name) for d in letters] == [
            ("tally", 2, "test/add"),
            ("tally", 3, "test/add"),
        ]
        assert "DecodeError" in letters[0].error
        assert worker.metrics().dead_lettered == 2
        assert report["projection"]["errors"] == 2
        assert app.state.totals == {"good": 1}
        assert report["workers"]["tally"]["health"]["status"] == "degraded"

    async def test_unknown_name_routed_by_a_worker(self, tmp_path: Path) -> None:
        """A route to a name no registered command has is refused before serving: its
        rows could never be handled (they do not decode), so it is a typo or a command
        left unregistered."""
        db = str(tmp_path / "ghost.db")
        await append_raw(db, [("ghost/thing", b"{}")])
        app = pt.App(database=db)
        worker: pt.PatternWorker[None] = pt.PatternWorker("ghosts")
        seen: list[Any] = []

        @worker.on_command("ghost/thing")
        async def handle(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:
            seen.append(cmd)

        app.register_worker(worker)
        with pytest.raises(pt.ConfigurationError, match="'ghosts' routes 'ghost/thing'"):
            await pt.serve(app)
        assert seen == []

    async def test_dead_lettered_row_is_not_replayed(self, tmp_path: Path) -> None:
        db = str(tmp_path / "bad.db")
        await append_raw(db, [("test/add", b'{"key": 42}'), ("test/add", b'{"key": "ok"}')])
        app, _, _ = make_app(db)
        async with serving(app):
            await app.caught_up()
        app, worker, calls = make_app(db)
        async with serving(app):
            await app.caught_up()
        assert calls.replayed == [("ok", 2)]
        assert calls.live == []
        assert worker.metrics().dead_lettered == 0


class TestHandlerSteering:
    """Permanent skips retries; invalid emits fail the handler; dead letters can be re-driven."""

    async def test_permanent(self, autojump_clock: trio.testing.MockClock) -> None:
        app = pt.App()
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")
        calls: list[float] = []

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            calls.append(trio.current_time())
            raise pt.Permanent("never")

        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("x"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
        assert len(calls) == 1
        assert letter.attempts == 1

    async def test_invalid_emit_fails_the_handler(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, _ = make_app()
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "emitter", retry=pt.Backoff(max_attempts=2)
        )

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            ctx.emit(Named(""))

        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("x"))
            await app.caught_up()
            (letter,) = await app.dead_letters("emitter")
        assert "ValidationError" in letter.error
        assert letter.attempts == 2

    async def test_redrive(self, autojump_clock: trio.testing.MockClock) -> None:
        app = pt.App()
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker("w", retry=pt.Backoff(max_attempts=1))
        broken = True
        handled: list[int] = []

        @worker.on_command("test/note")
        async def handle(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            if broken:
                raise RuntimeError("dependency missing")
            handled.append(ctx.message.id)

        app.register_worker(worker)
        async with serving(app):
            await app.execute(Note("x"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
            await app.redrive(letter.worker, letter.message_id)
            assert len(await app.dead_letters()) == 1  # failed again: still there
            broken = False
            await app.redrive(letter.worker, letter.message_id)
            assert await app.dead_letters() == []
            with pytest.raises(LookupError):
                await app.redrive("nobody", 1)
        assert handled == [1]


async def test_redrive_takes_only_dead_letters(autojump_clock: trio.testing.MockClock) -> None:
    app, _, calls = make_app()
    async with serving(app):
        (message,) = [await app.execute(Add("a"))]
        await app.caught_up()
        with pytest.raises(LookupError, match="not a dead letter"):
            await app.redrive("tally", message.id)
    assert calls.live == [("a", message.id)]  # handled once, not again by the re-drive
