"""The log's writer: many callers' commits grouped, each caller told of its own rows,
nothing acknowledged that is not written, nobody left waiting when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._log import MessageLog
from petrock_trio.stores import SQLiteStore, open_store
from petrock_trio.testing import FaultyStore
from tests.support import Note


async def test_many_callers_each_get_their_own_durable_rows(tmp_path: Path) -> None:
    """Group commits on a file: every acknowledged row is in the file, once, with the id
    its caller was told."""
    path = str(tmp_path / "log.db")
    app = pt.App(path)
    app.register_command(Note)
    store = open_store(path)
    assert isinstance(store, SQLiteStore)
    log = MessageLog(store, app.registry, app.clock)
    await log.open()
    told: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run_writer)

        async def append(n: int) -> None:
            for k in range(10):
                (message,) = await log.append(Note(f"{n}-{k}"))
                told[f"{n}-{k}"] = message.id

        async with trio.open_nursery() as callers:
            for n in range(50):
                callers.start_soon(append, n)
        nursery.cancel_scope.cancel()
    assert log.batches < 500  # commits were grouped
    rows = await store.read_after(0, 10_000)
    await store.aclose()
    assert [r.id for r in rows] == list(range(1, 501))
    stored = {app.registry.decode(r.name, r.payload).text: r.id for r in rows}
    assert stored == told


async def test_commits_queued_when_the_writer_stops_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A commit that was never written is refused, not left waiting for ever."""
    app = pt.App()
    app.register_command(Note)
    store = FaultyStore(open_store(":memory:"))
    log = MessageLog(store, app.registry, app.clock)
    await log.open()
    store.stall_commits(10.0)
    outcomes: list[str] = []

    async def append(text: str) -> None:
        try:
            await log.append(Note(text))
        except pt.PetrockError as exc:
            outcomes.append(f"{text}: {exc}")
        else:
            outcomes.append(f"{text}: written")

    async with trio.open_nursery() as callers, trio.open_nursery() as writer:
        await writer.start(log.run_writer)
        callers.start_soon(append, "first")  # taken by the writer, stalled
        await trio.testing.wait_all_tasks_blocked()
        callers.start_soon(append, "queued")
        await trio.testing.wait_all_tasks_blocked()
        writer.cancel_scope.cancel()
    assert "queued: the log writer stopped before this commit was written" in outcomes
    assert len(outcomes) == 2
    await store.aclose()


class TestACommitQueuedAfterAnother:
    """``submit(commit, after=pending)``: not written if the one before it failed or
    its outcome is unknown, whether the two share a transaction or not."""

    async def outcomes(
        self, error: type[Exception] | None, *, together: bool
    ) -> tuple[list[str], list[str]]:
        app = pt.App()
        app.register_command(Note)
        store = FaultyStore(open_store(":memory:"))
        log = MessageLog(store, app.registry, app.clock)
        await log.open()
        if error is not None:
            store.fail_commits(
                2,  # the shared transaction, then the first commit alone
                error=lambda: error("injected"),
                when=lambda commits: any(c.appends[0][1] == b'{"text":"first"}' for c in commits),
            )
        told: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run_writer)
            first = log.submit(log.new_commit([Note("first")]))
            if not together:
                assert first is not None
                await first.done.wait()
            second = log.submit(log.new_commit([Note("second")]), after=first)
            for pending in (first, second):
                assert pending is not None
                try:
                    await log.landed(pending)
                    told.append("written")
                except pt.PetrockError as exc:
                    told.append(type(exc).__name__)
            nursery.cancel_scope.cancel()
        rows = await store.read_after(0, 10)
        return told, [app.registry.decode(r.name, r.payload).text for r in rows]

    @pytest.mark.parametrize("together", [True, False], ids=["one transaction", "two"])
    async def test_both_written(self, together: bool) -> None:
        assert await self.outcomes(None, together=together) == (
            ["written", "written"],
            ["first", "second"],
        )

    @pytest.mark.parametrize("together", [True, False], ids=["one transaction", "two"])
    async def test_the_first_failed(self, together: bool) -> None:
        told, rows = await self.outcomes(pt.StoreError, together=together)
        assert told == ["StoreError", "CommitBeforeFailed"]
        assert rows == []

    async def test_the_first_outcome_unknown(self) -> None:
        told, rows = await self.outcomes(pt.OutcomeUnknown, together=False)
        assert told == ["OutcomeUnknown", "CommitBeforeFailed"]
        assert rows == []
