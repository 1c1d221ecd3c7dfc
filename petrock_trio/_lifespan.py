"""The app's lifespan: resources opened before its workers start, closed after they stop.

``App(lifespan=fn)`` names a function of the app returning an async context manager
(``@contextlib.asynccontextmanager``). ``serve`` enters it before anything else
starts (before the store opens and replay begins) and leaves it after everything
stopped and the store closed; what it yields is ``app.resources`` and
``ctx.resources`` meanwhile. One shared ``httpx.AsyncClient`` instead of a client per
call saves its connection set-up (50-150 ms) on every call.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from ._errors import ConfigurationError

__all__ = ["Lifespan", "check_lifespan", "lifespan_of"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def check_lifespan(lifespan: Lifespan | None) -> Lifespan | None:
    """``lifespan`` if it can be one (``None`` for none)."""
    if lifespan is not None and not callable(lifespan):
        raise ConfigurationError(
            f"lifespan must be a function of the app returning an async context manager, "
            f"not {lifespan!r}"
        )
    return lifespan


@asynccontextmanager
async def lifespan_of(
    app: object, lifespan: Lifespan | None, *, grace: float
) -> AsyncIterator[Any]:
    """Enter ``lifespan(app)`` and yield what it yields; leave it afterwards.

    Leaving is shielded for up to ``grace`` seconds: after a hard stop (``serve``
    cancelled) a shared client is still closed, not abandoned half-way by the same
    cancellation that stopped the handlers.

    Error handling: a failure entering it propagates unchanged (nothing else has
    started); a ``lifespan(app)`` that is no async context manager (an ``async def``
    without ``@asynccontextmanager``, say) raises :class:`ConfigurationError`.
    """
    if lifespan is None:
        yield None
        return
    manager: Any = lifespan(app)
    if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
        if inspect.iscoroutine(manager):
            manager.close()  # never awaited, and never to be: no warning about it
        raise ConfigurationError(
            f"lifespan(app) returned {type(manager).__name__}, not an async context "
            "manager: decorate the function with @contextlib.asynccontextmanager"
        )
    resources = await manager.__aenter__()
    try:
        yield resources
    except BaseException as exc:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + grace):
            if await manager.__aexit__(type(exc), exc, exc.__traceback__):
                return
        raise
    with trio.CancelScope(shield=True, deadline=trio.current_time() + grace):
        await manager.__aexit__(None, None, None)
