"""PatternWorker: the declaration of a worker (routes, periodic work, options).

A declaration is not its run: what changes while a worker runs (position, retry
state, metrics, its state object) lives in a run object that ``serve`` builds for
each serving (``_run.py``). The declaration is frozen once registered with an app.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, Unpack, overload

import attrs

from ._commands import Command, command_name
from ._errors import ConfigurationError
from ._group import RunGroup, RunView, Shown, WorkerStatistics
from ._health import HealthThresholds
from ._partition import KeyFn, check_worker_name, partition_name
from ._retry import Backoff
from ._routes import (
    Handler,
    Periodic,
    PeriodicWork,
    Route,
    RouteOptions,
    TypedHandler,
    check_options,
    class_route,
    new_route,
)
from ._services import ExternalService
from ._snapshots import SnapshotOptions, SnapshotPolicy, oldest

__all__ = [
    "Handler",
    "PatternWorker",
    "Periodic",
    "PeriodicWork",
    "Route",
    "RunView",
    "WorkerStatistics",
]

S = TypeVar("S")
C = TypeVar("C", bound=Command)


class PatternWorker(Shown[S]):
    """A background worker declared by command patterns.

    Handlers are ``async def handler(ctx, cmd, state)``, routed by command class with
    :meth:`on` (typed: ``PatternWorker[S]`` binds them to ``S`` and to the class) or
    by name with :meth:`on_command`; periodic work is ``async def work(ctx, state)``.
    Handlers and periodic work of one worker never run at the same time, so they
    share ``state`` without locks.

    On start the worker replays messages up to its saved position with
    ``ctx.is_replay=True`` (emits suppressed) to rebuild ``state``, then handles later
    messages live, one at a time in id order. A live handler that raises or overruns
    its timeout is retried with ``retry`` backoff and dead-lettered after
    ``retry.max_attempts``. With ``replay=False`` the rebuild is skipped; a route
    declared with ``replay=False`` is skipped in replay (live only).

    A live message's position is durable before the next one starts: a crash or a
    failover re-handles at most one. ``batch_positions=True`` (idempotent effects)
    writes those of messages that emitted nothing in groups, every
    ``App(position_flush_interval=...)``; ``commit_behind=True`` writes each commit
    while the next handlers run, a crash re-handling up to three (docs/workers.md).

    Each serving starts ``state`` again from a deep copy of the state the worker was
    constructed with, or from its latest snapshot: with ``snapshot_every=N`` (messages)
    or ``snapshot_interval`` (seconds), ``state`` is saved with the position it
    reflects, and a restart replays only what came after (docs/workers.md#snapshots).
    """

    def __init__(
        self,
        name: str,
        description: str = "",
        state: S = None,  # type: ignore[assignment]
        *,
        handler_timeout: float = 5.0,
        periodic_timeout: float = 30.0,
        retry: Backoff | None = None,
        replay: bool = True,
        services: Iterable[ExternalService] = (),
        health: HealthThresholds | None = None,
        page_capacity: int = 16,
        batch_positions: bool = False,
        commit_behind: bool = False,
        partitions: int = 1,
        key: KeyFn | None = None,
        snapshot_every: int | None = None,
        snapshot_interval: float | None = None,
        state_version: str = "1",
    ) -> None:
        if not name.strip():
            raise ConfigurationError("a worker needs a name")
        check_worker_name(name)
        if isinstance(partitions, bool) or partitions < 1:
            raise ConfigurationError("partitions must be a positive integer")
        if handler_timeout <= 0 or periodic_timeout <= 0:
            raise ConfigurationError("handler_timeout and periodic_timeout must be positive")
        if page_capacity < 1:
            raise ConfigurationError("page_capacity must be at least 1")
        self.name = name
        self.description = description
        self._initial_state = copy.deepcopy(state)
        self._state: S = state
        self.handler_timeout = handler_timeout
        self.periodic_timeout = periodic_timeout
        self.retry = retry or Backoff()
        self.replay = replay
        self.services: tuple[ExternalService, ...] = tuple(services)
        self.thresholds = health or HealthThresholds()
        self.page_capacity = page_capacity
        self.batch_positions = batch_positions
        self.commit_behind = commit_behind
        self.partitions = partitions
        self.key = key
        self.snapshot_options = SnapshotOptions.checked(
            snapshot_every, snapshot_interval, state_version, replay=replay
        )
        self.snapshots: SnapshotPolicy | None = None  # known once registered
        self._routes: dict[str, Route] = {}
        self.route_table: Mapping[str, Route] = types.MappingProxyType(self._routes)
        self.periodic: Periodic | None = None
        self._frozen = False
        self._state_taken = False
        self._current = RunGroup(name, partitions)

    def __repr__(self) -> str:
        stats = self.statistics()
        retrying = f" retrying={stats.retrying_message}" if stats.retrying_message else ""
        return (
            f"<PatternWorker {self.name!r} routes={sorted(self._routes)} "
            f"position={stats.position} in_flight={stats.in_flight}{retrying} "
            f"state={self.state!r}>"
        )

    # --- declaration ------------------------------------------------------------------

    @overload
    def on(
        self, command: type[C], handler: None = None, **options: Unpack[RouteOptions[C]]
    ) -> Callable[[TypedHandler[C, S]], TypedHandler[C, S]]: ...

    @overload
    def on(
        self, command: type[C], handler: TypedHandler[C, S], **options: Unpack[RouteOptions[C]]
    ) -> TypedHandler[C, S]: ...

    def on(self, command: type[C], handler: Handler | None = None, **options: Any) -> Any:
        """Route the commands of class ``command`` to ``handler(ctx, cmd, state)``, typed
        with the class and the worker's state; without ``handler``, a decorator.

        The options are :meth:`on_command`'s. ``register_worker`` registers the class
        with the app, unless it is already.
        """
        return self._router(class_route(command), command, handler, **options)

    # By name, the command's class is unknown here: the handler is typed by the worker's
    # state only (a handler written for another worker's state is still caught).
    @overload
    def on_command(
        self, name: str | type[Any], handler: None = None, **options: Unpack[RouteOptions[Any]]
    ) -> Callable[[TypedHandler[Any, S]], TypedHandler[Any, S]]: ...

    @overload
    def on_command(
        self,
        name: str | type[Any],
        handler: TypedHandler[Any, S],
        **options: Unpack[RouteOptions[Any]],
    ) -> TypedHandler[Any, S]: ...

    def on_command(
        self, name: str | type[Any], handler: Handler | None = None, **options: Any
    ) -> Any:
        """Route commands called ``name`` (for commands defined elsewhere) to ``handler``;
        without ``handler``, a decorator. ``timeout=`` and ``retry=`` replace the
        worker's for this route; ``key=`` (``key(cmd)``) is the partition key of these
        commands instead of the worker's; ``replay=False`` runs the handler live only
        (replay skips it): the place for external calls."""
        route_name = command_name(name) if isinstance(name, type) else name
        return self._router(route_name, None, handler, **options)

    def _router(
        self,
        name: str,
        command: type[Any] | None,
        handler: Handler | None,
        *,
        timeout: float | None = None,
        retry: Backoff | None = None,
        key: KeyFn | None = None,
        replay: bool = True,
    ) -> Any:
        check_options(name, timeout, key, replay)
        fields = {"name": name, "timeout": timeout, "retry": retry, "key": key}

        def register(fn: Handler) -> Handler:
            route = new_route(self.name, self._routes, fn, replay=replay, command=command, **fields)
            self._check_open("routes")
            self._routes[name] = route
            return fn

        return register if handler is None else register(handler)

    def set_periodic_work(
        self, work: PeriodicWork, interval: float = 1.0, *, timeout: float | None = None
    ) -> None:
        """Run ``work(ctx, state)`` every ``interval`` seconds while the worker is live.

        The first run starts as soon as the worker has replayed; later runs start
        ``interval`` seconds after the previous start (a run that overruns delays the
        next one, it never overlaps it). Skipped while a declared service is unavailable.
        """
        if interval <= 0 or (timeout is not None and timeout <= 0):
            raise ConfigurationError("interval and timeout must be positive")
        self._check_open("periodic work")
        self.periodic = Periodic(work, interval, timeout)

    def _check_open(self, what: str) -> None:
        if self._frozen:
            raise ConfigurationError(
                f"worker {self.name!r} is registered with an app: declare its {what} "
                "before register_worker"
            )

    def freeze(self) -> None:
        """No more routes or periodic work (called by ``App.register_worker``)."""
        if self.partitions > 1:
            keyless = sorted(n for n, r in self._routes.items() if (r.key or self.key) is None)
            if keyless:
                raise ConfigurationError(
                    f"worker {self.name!r} has {self.partitions} partitions but no key for "
                    f"{', '.join(map(repr, keyless))}: pass key= to the worker or the route"
                )
        self.snapshots = self.snapshot_options.policy(f"worker {self.name!r}", self._initial_state)
        self._frozen = True

    def partition_names(self) -> list[str]:
        """The names its partitions' positions and leases are stored under."""
        n = self.partitions
        return [partition_name(self.name, i, n) for i in range(n)]

    def key_of(self, name: str) -> KeyFn | None:
        """The partition key function of route ``name``."""
        return self._routes[name].key or self.key

    @property
    def routes(self) -> frozenset[str]:
        return frozenset(self._routes)

    def limit(self, name: str) -> float:
        """The timeout of the handler for ``name``, in seconds."""
        route = self._routes[name]
        return route.timeout if route.timeout is not None else self.handler_timeout

    def periodic_limit(self) -> float:
        periodic = self.periodic
        if periodic is not None and periodic.timeout is not None:
            return periodic.timeout
        return self.periodic_timeout

    def take_state(self) -> S:
        """The state a new run starts from: the object the worker was constructed with
        for its first run, a fresh deep copy of it for every later one (and for every
        partition: partitions share nothing)."""
        if self._state_taken or self.partitions > 1:
            return copy.deepcopy(self._initial_state)
        self._state_taken = True
        return self._state

    def _swap_handler(self, name: str, handler: Handler) -> Route:
        """Replace a route's handler, returning the old route (the testing kit's
        fault injection; the running worker looks routes up per message)."""
        original = self._routes[name]
        self._routes[name] = attrs.evolve(original, handler=handler)
        return original

    def _restore(self, route: Route) -> None:
        self._routes[route.name] = route

    def info(self) -> dict[str, Any]:
        return {
            "kind": "pattern",
            "description": self.description,
            "routes": sorted(self._routes),
            "periodic_interval": self.periodic.interval if self.periodic else None,
            "services": [s.name for s in self.services],
            "partition_count": self.partitions,
            # The oldest of its partitions' latest snapshots (None: none yet, or none asked).
            "snapshot": oldest([p.get("snapshot") for p in self.partition_details()]),
        }
