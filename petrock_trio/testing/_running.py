"""Shared machinery of the test helpers: serving an app, in-memory databases, waiting."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

from .._app import App
from .._serve import serve

__all__ = ["memory_database", "serving", "wait_until"]


async def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - a bound on the polling, applied with fail_after
    interval: float = 0.01,
) -> None:
    """Check ``predicate`` every ``interval`` seconds until it is true.

    For conditions nothing signals, such as a reply from a real HTTP service. Raises
    ``trio.TooSlowError`` after ``timeout`` seconds (Trio's clock) instead of hanging.
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the condition has no event to wait on
            await trio.sleep(interval)


@contextmanager
def memory_database() -> Iterator[str]:
    """A SQLite database in memory that outlives app restarts inside the ``with``.

    Yields a database URL for ``App(database=...)``. Like ``":memory:"`` it runs on the
    Trio thread (exact under MockClock), but several apps, one after another, see the
    same log: restarts and replay can be tested in virtual time.
    """
    url = f"file:petrock-{uuid.uuid4().hex}?mode=memory&cache=shared"
    keeper = sqlite3.connect(url, uri=True)
    try:
        yield url
    finally:
        keeper.close()


@asynccontextmanager
async def serving(app: App, *, graceful: bool = True) -> AsyncIterator[App]:
    """Serve ``app`` for the body of the ``async with``; replay is done on entry.

    On exit the app shuts down gracefully (positions committed) unless ``graceful`` is
    False, which cancels it the way a hard stop would.
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(app, handle_signals=False, task_status=task_status)
        )
        try:
            yield app
        finally:
            if graceful:
                app.stop()
            else:
                nursery.cancel_scope.cancel()
