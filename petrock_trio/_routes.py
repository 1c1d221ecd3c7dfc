"""Routes: which handler a worker runs for a command, with that route's own options.

A route is declared by name (``on_command("orders/place", ...)``) or by command class
(``on(PlaceOrder, ...)``); a class route keeps its class, which ``register_worker``
registers with the app. Before serving, every route must name a command the app has
registered (:func:`unregistered`): commands are registered per app, and every
process serving a log builds the same app, so a name no command has is a typo.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypedDict, TypeVar

import attrs

from ._commands import Command, CommandRegistry, command_name
from ._context import HandlerContext, PeriodicContext
from ._errors import ConfigurationError, UnknownCommand
from ._partition import KeyFn
from ._retry import Backoff

__all__ = [
    "Handler",
    "Periodic",
    "PeriodicWork",
    "Route",
    "RouteOptions",
    "TypedHandler",
    "check_options",
    "class_route",
    "new_route",
    "route_classes",
    "unregistered",
]

C = TypeVar("C", bound=Command)
S = TypeVar("S")
Handler = Callable[[HandlerContext, Any, Any], Awaitable[None]]
# A handler bound to its command's type and its worker's state type (``on``).
TypedHandler = Callable[[HandlerContext, C, S], Awaitable[None]]
PeriodicWork = Callable[[PeriodicContext, Any], Awaitable[None]]


class RouteOptions(TypedDict, Generic[C], total=False):
    """The options of one route (``on`` and ``on_command``)."""

    timeout: float | None
    retry: Backoff | None
    key: Callable[[C], object] | None
    replay: bool


@attrs.frozen
class Route:
    """One route: command name, handler, and its own timeout and retry policy."""

    name: str
    handler: Handler
    timeout: float | None
    retry: Backoff | None
    # Partitioned workers: the message's partition key, from the command.
    key: KeyFn | None = None
    # False: live only. Replay skips the handler, so its external calls (a charge, a
    # mail) cannot happen again for messages handled before a restart.
    replay: bool = True
    # The class it was declared with (``on``): register_worker registers it.
    command: type[Any] | None = None


@attrs.frozen
class Periodic:
    work: PeriodicWork
    interval: float
    timeout: float | None


def class_route(cls: object) -> str:
    """The route name of a command class given to ``on``."""
    if not isinstance(cls, type):
        raise ConfigurationError(
            f"on() takes a command class, not {cls!r}; route a name with on_command()"
        )
    try:
        return command_name(cls)
    except UnknownCommand:
        raise ConfigurationError(
            f"on({cls.__qualname__}): {cls.__qualname__} is not a command class; "
            "decorate it with @pt.command"
        ) from None


def check_options(name: object, timeout: float | None, key: KeyFn | None, replay: bool) -> None:
    """Refuse a route's bad options where they are given (decorator or call)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a route needs a command name or class, not {name!r}")
    if timeout is not None and timeout <= 0:
        raise ConfigurationError("a handler timeout must be positive")
    if not isinstance(replay, bool):
        raise ConfigurationError(f"replay must be True or False, not {replay!r}")
    if key is not None and not callable(key):
        raise ConfigurationError(f"the key for {name!r} is not callable")


def new_route(worker: str, routes: Mapping[str, Route], handler: Handler, **fields: Any) -> Route:
    """A route of ``worker`` (which routes ``routes`` already) to ``handler``."""
    name = fields["name"]
    if not callable(handler):
        raise ConfigurationError(f"the handler for {name!r} is not callable")
    if name in routes:
        raise ConfigurationError(f"worker {worker!r} already routes {name!r}")
    return Route(handler=handler, **fields)


def route_classes(
    worker: str, routes: Iterable[Route], registry: CommandRegistry
) -> list[type[Any]]:
    """The classes ``worker`` routes with ``on`` that ``registry`` lacks; refuses a
    name registered to another class."""
    missing = []
    for route in routes:
        cls = route.command
        if cls is None:
            continue
        if not registry.is_registered(route.name):
            missing.append(cls)
            continue
        known = registry.lookup(route.name)
        if known is not cls:
            raise ConfigurationError(
                f"worker {worker!r} routes {cls.__qualname__} as {route.name!r}, but "
                f"{route.name!r} is registered to {known.__qualname__}"
            )
    return missing


def unregistered(worker: str, routes: Iterable[str], known: Iterable[str]) -> str | None:
    """Why ``worker`` cannot be served, if one of its ``routes`` is not among the
    ``known`` command names; None if every route is."""
    names = sorted(known)
    for route in sorted(routes):
        if route in names:
            continue
        close = difflib.get_close_matches(route, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (
            f"worker {worker!r} routes {route!r}, but no command of that name is "
            f"registered with this app{hint}: register its class with "
            "app.register_command, or route it with worker.on(cls)"
        )
    return None
