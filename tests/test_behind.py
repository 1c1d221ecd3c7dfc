"""Commit behind (``commit_behind=True``): a message's commit is written while the next
handler runs (``_behind``).

What must hold: a commit that fails behind the loop sends the loop back to its message
(retried as any failed attempt), the next message is handled again after it, and
nothing lands twice or out of order; a commit whose outcome is unknown counts as
written when its position is; a stop or a pause waits for the commit in flight; a
commit with validated emits is never behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._partition import partition_name, stable_hash
from petrock_trio.stores import Commit
from petrock_trio.testing import memory_database, serving, worker_harness
from tests.support import Add, Echoed, Named, Note, apply_named


def positioned(message_id: int) -> Any:
    """A fault filter: the transaction that writes worker ``w``'s position ``message_id``."""

    def when(commits: Sequence[Commit]) -> bool:
        return any(c.positions.get("w") == message_id for c in commits)

    return when


def echoing(
    calls: list[tuple[int, int]],
    *,
    wait: float = 0.0,
    retry: pt.Backoff | None = None,
    started: list[float] | None = None,
) -> pt.PatternWorker[None]:
    """Worker ``w``: records (message id, attempt) of each live call (and when it
    started, in ``started``), emits Echoed."""
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "w", retry=retry or pt.Backoff(), commit_behind=True
    )

    @worker.on(Note)
    async def note(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        calls.append((ctx.message.id, ctx.attempt))
        if started is not None:
            started.append(trio.current_time())
        await trio.sleep(wait)
        ctx.emit(Echoed(ctx.message.id, cmd.text))

    return worker


async def echoes(app: pt.App) -> list[int]:
    """The source ids of the Echoed commands in the log, in log order."""
    return [
        m.command.source_id
        for m in await app.log.read_after(0)
        if isinstance(m.command, Echoed) and m.command.source_id
    ]


# In these, handlers take 0.5 s and every transaction 0.8 s (a slow disk, on Trio's
# clock), so that each commit is written alone: handler 3 runs while the commits of 1
# and 2 are written, and queues its own behind 2's.
HANDLER, TRANSACTION = 0.5, 0.8


@attrs.define
class Outcome:
    """What a run of ``w`` over some Notes left, with faults arranged beforehand."""

    calls: list[tuple[int, int]]
    echoes: list[int]
    positions: dict[str, int]
    failed: list[pt.HandlerFailed]
    letters: list[tuple[int, int]]
    attempt_times: list[float]
    processed: int
    retries: int
    started: list[float] = attrs.Factory(list)  # of each live call, in order


async def faulted(
    arrange: Callable[[pt.testing.FaultyStore], None],
    *,
    notes: int = 3,
    retry: pt.Backoff | None = None,
    page_size: int = 1000,
    spaced: bool = False,
) -> Outcome:
    """``spaced``: an Echoed of message 0 after each Note, which ``w`` does not route."""
    calls: list[tuple[int, int]] = []
    started: list[float] = []
    worker = echoing(calls, wait=HANDLER, retry=retry, started=started)
    async with worker_harness(
        worker, commands=[Note, Echoed], faults=True, page_size=page_size
    ) as h:
        assert h.store is not None
        h.store.stall_commits(TRANSACTION)
        arrange(h.store)
        texts = "abcdefgh"[:notes]
        if spaced:
            await h.app.log.append(*(c for t in texts for c in (Note(t), Echoed(0, "-"))))
        else:
            await h.app.log.append(*(Note(text) for text in texts))
        await h.settle()
        return Outcome(
            calls=calls,
            echoes=await echoes(h.app),
            positions=await h.positions(),
            failed=[e for e in h.events if isinstance(e, pt.HandlerFailed)],
            letters=[(d.message_id, d.attempts) for d in await h.dead_letters()],
            attempt_times=h.attempt_times(2),
            processed=h.metrics().processed,
            retries=len(await h.app.log.store.retries()),
            started=started,
        )


def unknown() -> Exception:
    return pt.OutcomeUnknown("connection lost")


class TestAFailedCommit:
    async def test_goes_back_to_its_message_and_handles_the_next_again(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        out = await faulted(lambda store: store.fail_commits(1, when=positioned(2)))
        # 3 ran while 2's commit was written; 2's failed, and 3's, queued after it, was
        # not written: 2 is retried, then 3 handled again.
        assert out.calls == [(1, 1), (2, 1), (3, 1), (2, 2), (3, 1)]
        assert out.echoes == [1, 2, 3]
        assert out.positions == {"w": 3}
        first, second = out.attempt_times
        assert second - first >= 1.0  # the retry's backoff, as for any failure
        assert [(e.message_id, e.attempt) for e in out.failed] == [(2, 1)]
        assert "injected store failure" in repr(out.failed[0].error)
        assert (out.processed, out.retries) == (3, 0)

    async def test_that_fails_for_good_dead_letters_its_message_only(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        out = await faulted(
            lambda store: store.fail_commits(2, when=positioned(1)),  # both attempts' commits
            notes=2,
            retry=pt.Backoff(max_attempts=2),
        )
        assert out.letters == [(1, 2)]
        assert out.echoes == [2]
        assert out.positions == {"w": 2}
        assert out.calls == [(1, 1), (2, 1), (1, 2), (2, 1)]


class TestPagesQueuedBehind:
    """With commits in flight at the end of a page, the pages queued behind it are
    handled on without waiting for them, up to a page's worth of the run's rows (pages
    of four rows here, two of them Notes, as for one partition of many)."""

    async def test_the_next_page_starts_while_the_commits_are_written(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        out = await faulted(lambda store: None, notes=6, page_size=4, spaced=True)
        assert out.calls == [(m, 1) for m in range(1, 12, 2)]
        gaps = [b - a for a, b in itertools.pairwise(out.started)]
        # Notes 1, 3 | 5, 7 | 9, 11: page 2 starts as soon as 3's handler returned, its
        # commits still in flight; after page 2, the run has had a page's worth of rows
        # (four), and the commits of 1 to 7 are written before page 3 is taken.
        assert gaps[:3] == pytest.approx([HANDLER] * 3)
        assert gaps[3] > TRANSACTION
        assert gaps[4] == pytest.approx(HANDLER)
        assert out.echoes == [1, 3, 5, 7, 9, 11]
        assert out.positions == {"w": 11}

    async def test_a_commit_failing_on_the_next_page_goes_back_to_its_message(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        out = await faulted(
            lambda store: store.fail_commits(1, when=positioned(3)),
            notes=4,
            page_size=4,
            spaced=True,
        )
        # Notes 1, 3 | 5, 7 (pages of four rows). 5 and 7, of the next page, ran while
        # 3's commit was written; it failed: 3 is retried, then 5 and 7 handled again.
        assert out.calls == [(1, 1), (3, 1), (5, 1), (7, 1), (3, 2), (5, 1), (7, 1)]
        assert out.echoes == [1, 3, 5, 7]
        assert out.positions == {"w": 7}
        assert (out.processed, out.retries) == (4, 0)


class TestAnUnknownOutcome:
    async def test_written_counts_as_done(self, autojump_clock: trio.testing.MockClock) -> None:
        out = await faulted(
            lambda store: store.fail_commits(1, unknown, when=positioned(2), after=True)
        )
        # 2 is done. 3's commit, queued after one whose outcome was unknown, was not
        # written (it could have landed without 2's): 3 is handled again.
        assert out.calls == [(1, 1), (2, 1), (3, 1), (3, 1)]
        assert out.echoes == [1, 2, 3]
        assert out.positions == {"w": 3}
        assert out.failed == []

    async def test_not_written_is_a_failure(self, autojump_clock: trio.testing.MockClock) -> None:
        out = await faulted(lambda store: store.fail_commits(1, unknown, when=positioned(2)))
        assert out.calls == [(1, 1), (2, 1), (3, 1), (2, 2), (3, 1)]
        assert out.echoes == [1, 2, 3]
        assert [(e.message_id, e.attempt) for e in out.failed] == [(2, 1)]


class TestWaitsForTheCommitInFlight:
    """Commits take 2 s here (a slow disk, on Trio's clock); handlers 0.5 s. The times
    are counted from the append's return, when handler 1 starts."""

    async def stopped_at(self, seconds: float) -> tuple[dict[str, int], list[int], list[int]]:
        calls: list[tuple[int, int]] = []
        with memory_database() as database:
            store = pt.testing.FaultyStore(pt.stores.open_store(database))
            store.stall_commits(2.0)
            app = pt.App(database=database, store=store, shutdown_grace=30.0)
            app.register_command(Note)
            app.register_command(Echoed)
            app.register_worker(echoing(calls, wait=0.5))
            async with serving(app):
                await app.log.append(Note("a"), Note("b"), Note("c"))
                await trio.sleep(seconds)
                app.stop()
            async with pt.open_log(database, commands=[Note, Echoed]) as log:
                positions = await log.store.positions()
                echoed = [
                    m.command.source_id
                    for m in await log.read_after(0)
                    if isinstance(m.command, Echoed)
                ]
        return positions, [i for i, _ in calls], echoed

    async def test_a_stop_while_the_next_handler_runs(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # Handler 2 runs while 1's commit is written: both land before the app stops.
        assert await self.stopped_at(0.7) == ({"w": 2}, [1, 2], [1, 2])

    async def test_a_stop_before_the_next_handler(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The stop comes during handler 1: its commit lands, handler 2 never starts.
        assert await self.stopped_at(0.2) == ({"w": 1}, [1], [1])

    async def test_a_pause(self, autojump_clock: trio.testing.MockClock) -> None:
        calls: list[tuple[int, int]] = []
        async with worker_harness(
            echoing(calls, wait=0.5), commands=[Note, Echoed], faults=True
        ) as h:
            assert h.store is not None
            h.store.stall_commits(2.0)
            await h.app.log.append(Note("a"), Note("b"))  # one page
            await trio.sleep(0.2)
            await h.app.pause_worker("w")  # during handler 1
            await trio.sleep(10)
            # Parked before message 2, once message 1's commit was written.
            assert calls == [(1, 1)]
            assert h.metrics().position == 1
            await h.app.resume_worker("w")
            await h.settle()
            assert calls == [(1, 1), (2, 1)]


class TestValidatedEmits:
    async def test_are_committed_before_the_next_handler(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        saved_when_called: list[int] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker("w", commit_behind=True)

        @worker.on(Note)
        async def note(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            saved_when_called.append((await ctx_positions(ctx)).get("w", 0))
            ctx.emit(Named(f"{cmd.text}-{ctx.message.id}"))

        async def ctx_positions(ctx: pt.HandlerContext) -> dict[str, int]:
            return await app.log.store.positions()

        app = pt.App()
        app.state.names = set()
        app.register_command(Note)
        app.register_command(Named, apply=apply_named)
        app.register_worker(worker)
        async with serving(app):
            await app.log.append(*(Note(str(i)) for i in range(5)))
            await app.caught_up()
        # Each handler sees the one before it written: a validated emit is not sent behind.
        assert saved_when_called == [0, 1, 2, 3, 4]

    async def test_wait_for_the_commits_in_flight_when_one_fails(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Message 1's commit goes behind the loop and fails; message 2 emits a validated
        command, so its commit is written at once, and not before 1's: otherwise 2's
        position would land without 1's, and 2, handled again after 1, emit twice."""
        calls: list[tuple[int, int]] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "w", retry=pt.Backoff(), commit_behind=True
        )

        @worker.on(Note)
        async def note(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            calls.append((ctx.message.id, ctx.attempt))
            await trio.sleep(HANDLER)
            if cmd.text == "named":
                ctx.emit(Named(f"n-{ctx.message.id}"))
            else:
                ctx.emit(Echoed(ctx.message.id, cmd.text))

        with memory_database() as database:
            store = pt.testing.FaultyStore(pt.stores.open_store(database))
            store.stall_commits(TRANSACTION)
            store.fail_commits(1, when=positioned(1))
            app = pt.App(database=database, store=store)
            app.state.names = set()
            app.register_command(Note)
            app.register_command(Echoed)
            app.register_command(Named, apply=apply_named)
            app.register_worker(worker)
            async with serving(app):
                await app.log.append(Note("a"), Note("named"))
                await app.caught_up()
                emitted = [m.command for m in await app.log.read_after(2)]
        assert calls == [(1, 1), (2, 1), (1, 2), (2, 1)]
        assert emitted == [Echoed(1, "a"), Named("n-2")]


class TestRowsReplayedMeanwhile:
    async def test_are_not_replayed_again_when_the_loop_goes_back(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """After a change of partitions, live and replayed rows interleave: message 2's
        key was done by its old partition, 1's and 3's were not. 1's commit fails
        behind the loop, which goes back over 2: replaying it again would count its
        change to state twice."""
        done, live = "a", next(k for k in "bcdefgh" if stable_hash(k) % 2 != stable_hash("a") % 2)
        with memory_database() as database:
            await self.partitioned_before(database, done, live)
            await self.served(database, done, live)

    async def partitioned_before(self, database: str, done: str, live: str) -> None:
        """The log and the positions of two partitions: ``done``'s at 2, ``live``'s at 0."""
        async with pt.open_log(database, commands=[Add, Echoed]) as log:
            await log.append(Add(live), Add(done), Add(live))
            old = {partition_name("w", stable_hash(k) % 2, 2): p for k, p in ((done, 2), (live, 0))}
            await log.commit(log.new_commit(positions=old))

    async def served(self, database: str, done: str, live: str) -> None:
        calls: list[tuple[int, bool]] = []
        worker: pt.PatternWorker[dict[str, int]] = pt.PatternWorker(
            "w", state={}, key=lambda cmd: cmd.key, commit_behind=True, retry=pt.Backoff()
        )

        @worker.on(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: dict[str, int]) -> None:
            calls.append((ctx.message.id, ctx.is_replay))
            if not ctx.is_replay:
                await trio.sleep(HANDLER)
                ctx.emit(Echoed(ctx.message.id, cmd.key))
            state[cmd.key] = state.get(cmd.key, 0) + cmd.amount

        async with worker_harness(
            worker, commands=[Add, Echoed], database=database, faults=True
        ) as h:
            assert h.store is not None
            h.store.stall_commits(TRANSACTION)
            h.store.fail_commits(1, when=positioned(1))
            await h.settle()
            assert [c for c in calls if c[1]] == [(2, True)]
            assert [i for i, replay in calls if not replay] == [1, 3, 1, 3]
            assert await echoes(h.app) == [1, 3]
            # 1 and 3 changed state twice each (a retried attempt's changes stay, see
            # docs/workers.md); 2, replayed, once.
            assert worker.state == {live: 4, done: 1}
