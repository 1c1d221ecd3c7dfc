"""Stretches: the handler calls of a page share one cancel scope, deadlines stay exact.

What a cancel scope per call guaranteed must hold: each handler is cut off at its own
deadline and nothing else is, in replay as live; other tasks still run while a worker
catches up on handlers that never wait; and a handler called by another task of the
same run (periodic work during a retry's wait) is not put in the loop's scope.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio._stretch import MESSAGES
from petrock_trio.testing import memory_database, serving
from tests.support import Add


@attrs.define
class Recorder:
    events: list[Any] = attrs.field(factory=list[Any])

    def __call__(self, event: Any) -> None:
        self.events.append(event)


async def gaps_seen(count: int, *, blocking: float = 0.0) -> list[int]:
    """Messages handled between two looks of a task that only ever checkpoints, while
    one worker catches up on ``count`` messages whose handler never waits (blocking the
    loop ``blocking`` seconds of real time each)."""
    ticks: list[int] = []
    handled: list[int] = []
    worker: pt.PatternWorker[None] = pt.PatternWorker("quick", batch_positions=True)

    @worker.on(Add)
    async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        if blocking:
            time.sleep(blocking)  # noqa: ASYNC251 - the point: a handler that blocks
        handled.append(ctx.message.id)

    app = pt.App()
    app.register_worker(worker)

    async def ticker() -> None:
        while True:
            ticks.append(len(handled))
            await trio.lowlevel.checkpoint()

    async with serving(app), trio.open_nursery() as nursery:
        await app.log.append(*(Add(str(i)) for i in range(count)))  # one page
        nursery.start_soon(ticker)
        await app.caught_up()
        nursery.cancel_scope.cancel()
    assert len(handled) == count
    return [b - a for a, b in itertools.pairwise(ticks)]


class TestOthersRun:
    """A worker whose handlers never wait still lets other tasks run. It yields at
    least every MESSAGES messages; the task looking, run in the same batch of the
    scheduler or the next, sees at most two such stretches between its looks."""

    async def test_at_least_every_so_many_messages(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        gaps = await gaps_seen(1000)
        assert max(gaps) <= 2 * MESSAGES
        assert len(gaps) >= 1000 // MESSAGES

    async def test_at_once_after_a_slow_handler(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A handler that blocks the loop is followed by a schedule point at once: the
        budget is time too."""
        gaps = await gaps_seen(20, blocking=0.002)
        assert max(gaps) <= 2
        assert len(gaps) >= 10


class TestReplay:
    """A replayed handler that overruns is cut off at its own deadline, and replay goes
    on with the next message under its own."""

    async def test_a_replay_cut_off_in_the_middle_of_a_page(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        seen: list[tuple[float, str, bool]] = []
        with memory_database() as database:
            async with pt.open_log(database, commands=[Add]) as log:
                await log.append(*(Add(f"k{i}") for i in range(4)))
                await log.store.commit_many([pt.stores.Commit(positions={"replayer": 3})])
            recorder = Recorder()
            app = pt.App(database=database, hooks=[recorder])
            app.register_command(Add)
            worker: pt.PatternWorker[None] = pt.PatternWorker("replayer")

            @worker.on(Add)
            async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                seen.append((trio.current_time(), cmd.key, ctx.is_replay))
                if cmd.key == "k1":
                    await trio.sleep(60)  # far past the 5 s timeout
                await trio.sleep(1)  # waits within its deadline

            app.register_worker(worker)
            start = trio.current_time()
            async with serving(app):
                await app.caught_up()
        assert [(t - start, key, replay) for t, key, replay in seen] == [
            (0, "k0", True),
            (1, "k1", True),  # cut off at 6
            (6, "k2", True),
            (7, "k3", False),
        ]
        replays = [e for e in recorder.events if isinstance(e, pt.Replayed)]
        errors = [type(e.error).__name__ for e in replays]
        assert errors == ["NoneType", "HandlerTimeout", "NoneType"]
        assert [e.duration for e in replays] == [1, 5, 1]


class TestAnotherTaskOfTheRun:
    """Periodic work that runs while the loop waits to retry inside a stretch (the
    lock let go) runs in a scope of its own: its deadline is its own, and the loop's
    stretch is neither used nor harmed."""

    async def test_periodic_work_during_a_retry_wait(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        attempts: list[float] = []
        periodic: list[tuple[float, float]] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "both", retry=pt.Backoff(initial=10.0, max_attempts=3), batch_positions=True
        )

        @worker.on(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            attempts.append(trio.current_time())
            await trio.sleep(1)
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")  # retried 10 s later

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            started = trio.current_time()
            try:
                await trio.sleep(100)
            finally:
                periodic.append((started, trio.current_time()))

        worker.set_periodic_work(work, interval=10.0, timeout=3.0)
        recorder = Recorder()
        app = pt.App(hooks=[recorder])
        app.register_worker(worker)
        start = trio.current_time()
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
        # Periodic runs at 0 (to 3) and 10 (to 13, during the retry's wait: 4 to 14).
        assert [(a - start, b - start) for a, b in periodic[:2]] == [(0, 3), (10, 13)]
        assert [t - start for t in attempts] == [3, 14]
        assert worker.statistics().crashes == 0
        failed = [e for e in recorder.events if isinstance(e, pt.HandlerFailed)]
        assert [(e.attempt, e.timed_out) for e in failed] == [(1, False)]


class TestKeyboardInterruptProtection:
    """A Ctrl-C is delivered at the main task's next checkpoint, never inside a handler
    or periodic work (a KeyboardInterrupt seen there is the code's own, a failure of
    it): their calls are KI-protected, in a stretch or in a scope of their own."""

    async def test_handlers_and_periodic_work_run_protected(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        seen: list[tuple[str, bool]] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker("guarded")

        @worker.on(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            seen.append((f"{cmd.key} before", trio.lowlevel.currently_ki_protected()))
            if cmd.key == "waits":
                await trio.sleep(1)
                seen.append((f"{cmd.key} after", trio.lowlevel.currently_ki_protected()))

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            seen.append(("periodic", trio.lowlevel.currently_ki_protected()))

        worker.set_periodic_work(work, interval=10.0)
        app = pt.App()
        app.register_worker(worker)
        async with serving(app):
            await app.execute(Add("quick"))
            await app.execute(Add("waits"))
            await app.caught_up()
            await trio.sleep(11)
        assert trio.lowlevel.currently_ki_protected() is False  # the test itself is not
        assert ("periodic", True) in seen
        assert [s for s in seen if s[0] != "periodic"] == [
            ("quick before", True),
            ("waits before", True),
            ("waits after", True),
        ]


class TestShutdown:
    """A handler cut off during a graceful shutdown still has its failure settled: its
    retry state is saved, as it was with a scope of its own."""

    async def test_a_timeout_during_the_grace_period(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with memory_database() as database:
            worker: pt.PatternWorker[None] = pt.PatternWorker("slow", retry=pt.Backoff())

            @worker.on(Add)
            async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                await trio.sleep(60)  # far past the 5 s timeout

            recorder = Recorder()
            app = pt.App(database=database, hooks=[recorder], shutdown_grace=30.0)
            app.register_worker(worker)
            async with serving(app):
                await app.execute(Add("a"))
                await trio.sleep(1)
                app.stop()  # the handler is cut off at 5 s, inside the grace period
            async with pt.open_log(database, commands=[Add]) as log:
                retries = await log.store.retries()
        failed = [e for e in recorder.events if isinstance(e, pt.HandlerFailed)]
        assert [(e.attempt, e.timed_out) for e in failed] == [(1, True)]
        assert [(r.worker, r.message_id, r.attempts) for r in retries] == [("slow", 1, 1)]


# --- a property: handlers of every kind in one page keep the timeline of a model -----

# What an attempt's handler does: (seconds it runs, whether it succeeds). "overrun"
# is cut off at the 5 s timeout; "shielded" overruns inside a shield and returns.
BEHAVIOURS: dict[str, tuple[float, bool]] = {
    "instant": (0.0, True),
    "short": (1.0, True),
    "overrun": (5.0, False),
    "fail": (0.0, False),
    "fail_after_wait": (1.0, False),
    "shielded": (6.0, True),
}
# Delays longer than the timeout: a retry waits inside the stretch, past any stale deadline.
RETRY = pt.Backoff(initial=6.0, max_attempts=3)


def expected_timeline(scripts: list[list[str]]) -> list[tuple[int, int, float]]:
    """(message, attempt, start) of every attempt, and so each one's outcome, as the
    engine must run them one after another: each handler under its own 5 s deadline,
    failures retried after the policy's delay, the third failure dead-lettered."""
    timeline: list[tuple[int, int, float]] = []
    now = 0.0
    for message, script in enumerate(scripts, 1):
        for attempt in range(1, RETRY.max_attempts + 1):
            timeline.append((message, attempt, now))
            behaviour = script[attempt - 1] if attempt <= len(script) else "instant"
            duration, succeeds = BEHAVIOURS[behaviour]
            now += duration
            if succeeds or attempt == RETRY.max_attempts:
                break
            now += RETRY.delay(attempt)
    return timeline


async def run_scripts(scripts: list[list[str]]) -> tuple[list[tuple[int, int, float]], list[int]]:
    started: list[tuple[int, int, float]] = []
    with memory_database() as database:
        async with pt.open_log(database, commands=[Add]) as log:
            await log.append(*(Add(str(i)) for i in range(len(scripts))))  # one page
        worker: pt.PatternWorker[None] = pt.PatternWorker("scripted", retry=RETRY)

        @worker.on(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            started.append((ctx.message.id, ctx.attempt, trio.current_time()))
            script = scripts[ctx.message.id - 1]
            behaviour = script[ctx.attempt - 1] if ctx.attempt <= len(script) else "instant"
            if behaviour in {"short", "fail_after_wait"}:
                await trio.sleep(1)
            elif behaviour == "overrun":
                await trio.sleep(60)
            elif behaviour == "shielded":
                with trio.CancelScope(shield=True):
                    await trio.sleep(6)
            if behaviour in {"fail", "fail_after_wait"}:
                raise ValueError(behaviour)

        app = pt.App(database=database)
        app.register_command(Add)
        app.register_worker(worker)
        # Virtual time: a scenario that goes wrong fails at once instead of hanging.
        with trio.fail_after(10_000):
            async with serving(app):
                await app.caught_up()
                dead = sorted(d.message_id for d in await app.dead_letters("scripted"))
    origin = started[0][2]
    return [(m, a, t - origin) for m, a, t in started], dead


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scripts=st.lists(
        st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=3),
        min_size=1,
        max_size=6,
    )
)
def test_every_kind_of_handler_in_one_page_keeps_the_model_timeline(
    scripts: list[list[str]],
) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    timeline, dead = trio.run(run_scripts, scripts, clock=clock)
    assert timeline == expected_timeline(scripts)
    gave_up = [
        m
        for m, script in enumerate(scripts, 1)
        if len(script) == RETRY.max_attempts and not any(BEHAVIOURS[b][1] for b in script)
    ]
    assert dead == gave_up
