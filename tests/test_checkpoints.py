"""Every async function of the engine is a checkpoint, on the fast path too.

Trio's rule, kept by the engine's public async API: a caller can rely on an ``await``
being a place where it may be cancelled and where other tasks run, even when the
answer is at hand (an in-memory store, a value already applied).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, Note, make_app

Call = Callable[[pt.App], Awaitable[Any]]

CALLS: list[Any] = [
    pytest.param(lambda app: app.execute(Note("x")), id="execute"),
    pytest.param(lambda app: app.caught_up(), id="caught_up"),
    pytest.param(lambda app: app.dead_letters(), id="dead_letters"),
    pytest.param(lambda app: app.log.append(Note("y")), id="log.append"),
    pytest.param(lambda app: app.log.read_after(0), id="log.read_after"),
    pytest.param(lambda app: app.log.store.positions(), id="store.positions"),
    pytest.param(lambda app: app.log.store.head(), id="store.head"),
]


@pytest.mark.parametrize("call", CALLS)
async def test_public_calls_checkpoint(autojump_clock: trio.testing.MockClock, call: Call) -> None:
    app, _, _ = make_app()
    async with serving(app):
        await app.execute(Add("a"))
        await app.caught_up()
        with trio.testing.assert_checkpoints():
            await call(app)


async def test_a_handler_that_never_waits_lets_others_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker catching up on handlers that never await still yields, page by page
    and message by message, so other tasks are not starved."""
    app, _, calls = make_app(page_size=10)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with serving(app), trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        before = ticks
        await app.log.append(*[Add(str(i)) for i in range(100)])
        await app.caught_up()
        nursery.cancel_scope.cancel()
    assert len(calls.live) == 100
    assert ticks - before >= 100
