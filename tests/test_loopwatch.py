"""The event-loop watchdog: code that blocks the Trio loop is reported, with who did it.

These tests run on the real clock (the watchdog measures real time) and block the loop
on purpose with ``time.sleep``; each takes at most a few seconds.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog.testing
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import wait_until
from tests.support import Add, Note

WATCHDOG = "petrock-loopwatch"


@asynccontextmanager
async def served(app: pt.App, threshold: float | None) -> AsyncIterator[pt.App]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(pt.serve, app, handle_signals=False, loop_block_threshold=threshold)
        )
        try:
            yield app
        finally:
            app.stop()


def blocks(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "petrock.loop_blocked"]


def sampled(logs: Sequence[MutableMapping[str, Any]], code: str) -> list[MutableMapping[str, Any]]:
    """The blocks whose sampled stack shows ``code``."""
    return [line for line in blocks(logs) if code in line.get("stack", "")]


def blamed(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The blocks that name what blocked the loop."""
    return [line for line in blocks(logs) if "command_type" in line]


def blocking_app() -> tuple[pt.App, pt.PatternWorker[None], pt.PatternWorker[None]]:
    """``orders`` blocks the loop for 2 s on each note; ``stock`` awaits like it should."""
    app = pt.App()
    app.register_command(Note)
    app.register_command(Add)
    orders: pt.PatternWorker[None] = pt.PatternWorker("orders")
    stock: pt.PatternWorker[None] = pt.PatternWorker("stock")

    @orders.on_command("test/note")
    async def place(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        time.sleep(2)  # noqa: ASYNC251 - the defect under test

    @stock.on_command("test/add")
    async def count(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        await trio.sleep(0.01)

    app.register_worker(orders)
    app.register_worker(stock)
    return app, orders, stock


async def test_a_handler_that_blocks_is_named_and_its_worker_degraded() -> None:
    app, orders, stock = blocking_app()
    with structlog.testing.capture_logs() as logs:
        async with served(app, 0.5):
            await app.execute(Add("a"))
            message = await app.execute(Note("slow"))
            await app.caught_up()
            # A loaded machine may also stall the whole process past the threshold,
            # with no handler to blame: those lines are not this test's.
            await wait_until(lambda: blamed(logs), timeout=3)
            (line,) = blamed(logs)
            assert line["log_level"] in {"warning", "error"}
            assert line["worker_name"] == "orders"
            assert line["command_type"] == "test/note"
            assert line["message_id"] == message.id
            assert 1.5 <= line["blocked_for"] <= 3
            assert "time.sleep(2)" in line["stack"]  # the main thread, sampled while blocked
            said = (
                f"blocked the event loop for {line['blocked_for']:.1f} s in handler for 'test/note'"
            )
            assert line["reason"] == said
            health = orders.health()
            assert health.status is pt.Health.DEGRADED
            (reason,) = health.reasons
            assert reason.startswith(said)
            assert stock.health().status is pt.Health.HEALTHY


async def test_blocking_periodic_work_is_attributed_to_periodic() -> None:
    app = pt.App()
    sweeper: pt.PatternWorker[None] = pt.PatternWorker("sweeper")
    runs: list[int] = []

    async def sweep(ctx: pt.PeriodicContext, state: None) -> None:
        runs.append(ctx.run)
        if len(runs) == 1:
            time.sleep(1.0)  # noqa: ASYNC251 - the defect under test

    sweeper.set_periodic_work(sweep, interval=3600)
    app.register_worker(sweeper)
    with structlog.testing.capture_logs() as logs:
        async with served(app, 0.3):
            await wait_until(lambda: blamed(logs), timeout=3)
            (line,) = blamed(logs)
            assert line["worker_name"] == "sweeper"
            assert line["command_type"] == "periodic"
            assert "message_id" not in line
            assert 0.7 <= line["blocked_for"] <= 2
            assert "in periodic work" in line["reason"]
            assert sweeper.health().status is pt.Health.DEGRADED


async def test_blocking_outside_any_handler_names_the_task() -> None:
    app = pt.App()
    slept: list[int] = []

    def apply(state: Any, cmd: Note, message: pt.Message) -> None:
        if not slept:
            slept.append(message.id)
            time.sleep(0.8)

    app.register_command(Note, apply)
    idle: pt.PatternWorker[None] = pt.PatternWorker("idle")
    app.register_worker(idle)
    with structlog.testing.capture_logs() as logs:
        async with served(app, 0.3):
            await app.execute(Note("x"))
            await wait_until(lambda: sampled(logs, "time.sleep(0.8)"), timeout=3)
            (line,) = sampled(logs, "time.sleep(0.8)")
            assert "worker_name" not in line
            assert "Projection" in line["task"]
            assert "time.sleep(0.8)" in line["stack"]
            assert idle.health().status is pt.Health.HEALTHY


async def test_ordinary_work_reports_nothing() -> None:
    app = pt.App()
    app.register_command(Note)
    busy: pt.PatternWorker[None] = pt.PatternWorker("busy")
    handled: list[int] = []

    @busy.on_command("test/note")
    async def work(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        await trio.sleep(0.03)
        handled.append(ctx.message.id)

    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        await trio.sleep(0.02)

    busy.set_periodic_work(tick, interval=0.1)
    app.register_worker(busy)
    with structlog.testing.capture_logs() as logs:
        async with served(app, 0.5):
            started = time.monotonic()
            while time.monotonic() - started < 2:
                await app.execute(Note("n"))
                await trio.sleep(0.06)
            await app.caught_up()
    assert len(handled) > 10
    assert blocks(logs) == []
    assert busy.health().status is pt.Health.HEALTHY


async def test_virtual_time_is_not_a_block(autojump_clock: trio.testing.MockClock) -> None:
    """Autojump moves Trio's clock an hour ahead in a few real milliseconds: the
    watchdog measures real time only, so nothing looks blocked."""
    app = pt.App(clock=pt.TrioWallClock())
    app.register_command(Note)
    sleepy: pt.PatternWorker[None] = pt.PatternWorker("sleepy")

    @sleepy.on_command("test/note")
    async def nap(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        await trio.sleep(4)

    async def hourly(ctx: pt.PeriodicContext, state: None) -> None:
        await trio.sleep(20)

    sleepy.set_periodic_work(hourly, interval=60)
    app.register_worker(sleepy)
    with structlog.testing.capture_logs() as logs:
        async with served(app, 0.2):
            started = trio.current_time()
            for _ in range(3):
                await app.execute(Note("n"))
            await trio.sleep(3600)
            assert trio.current_time() - started >= 3600
            assert sleepy.health().status is pt.Health.HEALTHY
    assert blocks(logs) == []


async def test_the_watchdog_thread_lives_as_long_as_serve() -> None:
    def watching() -> bool:
        return any(t.name == WATCHDOG for t in threading.enumerate())

    app = pt.App()
    async with served(app, 1.0):
        assert watching()
    assert not watching()
    async with served(pt.App(), None):  # None: no watchdog
        assert not watching()
