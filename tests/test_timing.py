"""Timing on Trio's clock: periodic intervals, timeouts and retry delays, exact under MockClock."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, make_app


def diffs(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


class TestPeriodicWork:
    """Periodic work runs at go-live and then every interval, exactly."""

    async def test_interval(self, autojump_clock: trio.testing.MockClock) -> None:
        runs: list[float] = []

        async def tick(ctx: pt.PeriodicContext, state: Any) -> None:
            runs.append(trio.current_time())

        app, worker, _ = make_app(periodic=(tick, 2.5))
        async with serving(app):
            start = trio.current_time()
            await trio.sleep(10.1)
        assert [r - start for r in runs] == [0.0, 2.5, 5.0, 7.5, 10.0]
        assert worker.metrics().periodic_runs == 5

    async def test_overrunning_run_delays_the_next(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        runs: list[float] = []

        async def slow(ctx: pt.PeriodicContext, state: Any) -> None:
            runs.append(trio.current_time())
            await trio.sleep(2.5 if len(runs) == 1 else 0)

        app, _, _ = make_app(periodic=(slow, 1.0))
        async with serving(app):
            await trio.sleep(5.5)
        # 0 overran to 2.5: ticks at 1 and 2 were missed, the next starts at 3.
        assert diffs(runs) == [3.0, 1.0, 1.0]

    async def test_default_timeout_is_30_seconds(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        ends: list[float] = []

        async def hang(ctx: pt.PeriodicContext, state: Any) -> None:
            try:
                await trio.sleep_forever()
            finally:
                ends.append(trio.current_time())

        app, worker, _ = make_app(periodic=(hang, 100.0))
        async with serving(app):
            start = trio.current_time()
            await trio.sleep(31)
            metrics = worker.metrics()
        assert ends[0] - start == 30.0
        assert (metrics.periodic_failures, metrics.timeouts) == (1, 1)

    @pytest.mark.parametrize(
        ("worker_timeout", "work_timeout", "expected"),
        [
            pytest.param(12.0, None, 12.0, id="per-worker"),
            pytest.param(12.0, 3.0, 3.0, id="per-work-wins"),
        ],
    )
    async def test_timeout_overrides(
        self,
        autojump_clock: trio.testing.MockClock,
        worker_timeout: float,
        work_timeout: float | None,
        expected: float,
    ) -> None:
        app = pt.App()
        worker: pt.PatternWorker[None] = pt.PatternWorker("w", periodic_timeout=worker_timeout)
        ends: list[float] = []

        async def hang(ctx: pt.PeriodicContext, state: Any) -> None:
            try:
                await trio.sleep_forever()
            finally:
                ends.append(trio.current_time())

        worker.set_periodic_work(hang, interval=100.0, timeout=work_timeout)
        app.register_worker(worker)
        async with serving(app):
            start = trio.current_time()
            await trio.sleep(50)
        assert ends[0] - start == expected


def failing_worker(
    *,
    handler_timeout: float = 5.0,
    timeout: float | None = None,
    retry: pt.Backoff | None = None,
    hang: bool = False,
) -> tuple[pt.App, list[float]]:
    app = pt.App()
    app.register_command(Add)
    attempts: list[float] = []
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "failing", handler_timeout=handler_timeout, retry=retry or pt.Backoff(max_attempts=1)
    )

    async def handler(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        attempts.append(trio.current_time())
        if hang:
            await trio.sleep_forever()
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    worker.on_command("test/add", handler, timeout=timeout)
    app.register_worker(worker)
    return app, attempts


class TestHandlerTimeout:
    """A handler is cut off after 5 s by default, or its overrides; that is a failure."""

    @pytest.mark.parametrize(
        ("handler_timeout", "timeout", "expected"),
        [
            pytest.param(5.0, None, 5.0, id="default-5s"),
            pytest.param(2.0, None, 2.0, id="per-worker"),
            pytest.param(2.0, 0.25, 0.25, id="per-handler-wins"),
        ],
    )
    async def test_timeout(
        self,
        autojump_clock: trio.testing.MockClock,
        handler_timeout: float,
        timeout: float | None,
        expected: float,
    ) -> None:
        app, attempts = failing_worker(handler_timeout=handler_timeout, timeout=timeout, hang=True)
        async with serving(app):
            await app.execute(Add("k"))
            await app.caught_up()
            done = trio.current_time()
            (letter,) = await app.dead_letters()
        assert done - attempts[0] == expected
        assert "HandlerTimeout" in letter.error
        assert app.workers["failing"].metrics().timeouts == 1


class TestRetryDelays:
    """Failed handlers are retried after 1, 2, 4 … s capped at 30 s, then dead-lettered."""

    async def test_default_backoff(self, autojump_clock: trio.testing.MockClock) -> None:
        app, attempts = failing_worker(retry=pt.Backoff())
        async with serving(app):
            await app.execute(Add("k"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
        assert diffs(attempts) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert letter.attempts == 8
        assert "attempt 8 failed" in letter.error

    async def test_custom_backoff(self, autojump_clock: trio.testing.MockClock) -> None:
        policy = pt.Backoff(initial=0.1, factor=3.0, max_delay=1.0, max_attempts=5)
        app, attempts = failing_worker(retry=policy)
        async with serving(app):
            await app.execute(Add("k"))
            await app.caught_up()
        assert diffs(attempts) == [0.1, 0.3, 0.9, 1.0]
        assert policy.delays() == pytest.approx([0.1, 0.3, 0.9, 1.0])

    def test_jitter_stays_in_bounds(self) -> None:
        policy = pt.Backoff(jitter=0.5)
        for attempt in range(1, 10):
            base = min(2 ** (attempt - 1), 30)
            assert base * 0.5 <= policy.delay(attempt) <= base * 1.5

    @pytest.mark.parametrize(
        "kwargs", [{"max_attempts": 0}, {"factor": 0.5}, {"jitter": 2}, {"initial": -1}]
    )
    def test_invalid_policies(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.Backoff(**kwargs)

    def test_zero_initial_warns(self) -> None:
        with pytest.warns(UserWarning, match="tight loop"):
            pt.Backoff(initial=0)

    def test_cap(self) -> None:
        assert math.isclose(pt.Backoff().delay(50), 30.0)


async def test_timeouts_inside_one_page_keep_order_and_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Handlers that overrun in the middle of a page are cut off at their own deadline;
    the rest of the page goes on after their retries, in order."""
    seen: list[tuple[float, str, int]] = []
    with pt.testing.memory_database() as database:
        async with pt.open_log(database, commands=[Add]) as log:
            await log.append(*(Add(f"k{i}") for i in range(4)))  # one page
        app = pt.App(database=database)
        app.register_command(Add)
        worker: pt.PatternWorker[None] = pt.PatternWorker("paged", retry=pt.Backoff())

        @worker.on_command("test/add")
        async def handler(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            seen.append((trio.current_time(), cmd.key, ctx.attempt))
            if cmd.key in {"k1", "k3"} and ctx.attempt == 1:
                await trio.sleep(60)  # far past the 5 s timeout

        app.register_worker(worker)
        async with serving(app):
            start = trio.current_time()
            await app.caught_up()
    assert [(t - start, key, attempt) for t, key, attempt in seen] == [
        (0, "k0", 1),
        (0, "k1", 1),
        (6, "k1", 2),  # cut off at 5, retried 1 s later
        (6, "k2", 1),
        (6, "k3", 1),
        (12, "k3", 2),
    ]
