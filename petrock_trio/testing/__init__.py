"""Test helpers for petrock_trio applications and workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._app import App
from .._serve import serve

__all__ = ["serving"]


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
