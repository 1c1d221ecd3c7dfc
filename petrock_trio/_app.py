"""The application: its commands, state, workers, and the executor."""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from . import _tracing
from ._clock import WallClock, default_clock
from ._commands import CommandRegistry
from ._dead_letter import DeadLetter
from ._errors import ConfigurationError, NotRunning
from ._events import Hook, StructlogHook
from ._execute import Executor
from ._health import Health, HealthReport
from ._legacy import LegacyRunner, WorkerInfo
from ._lifespan import Lifespan, check_lifespan
from ._log import MessageLog
from ._message import Message
from ._operator import OperatorVerbs
from ._projection import Applier, Projection
from ._routes import route_classes
from ._run import WorkerRun
from ._runtime import Run, Runtime
from ._services import check_service_names, service_report
from ._totals import Totals
from ._worker import PatternWorker
from .stores import Store

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

__all__ = ["App", "DeadLetter", "Feature", "LegacyWorker"]


@runtime_checkable
class LegacyWorker(Protocol):
    """The old worker interface: the engine calls these; the worker does the rest."""

    def info(self) -> WorkerInfo: ...

    async def start(self, app: App) -> None: ...

    async def replay(self) -> None: ...

    async def work(self) -> None: ...

    async def stop(self) -> None: ...


class Feature(Protocol):
    """A feature package: anything with ``register(app)``."""

    def register(self, app: App) -> None: ...


AnyWorker = PatternWorker[Any] | LegacyRunner


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


class App(OperatorVerbs):
    """Commands, feature state and workers over one log.

    ``database`` is a SQLite file path, ``":memory:"`` or a ``postgresql://`` URL
    (or pass an opened-on-serve ``store`` object instead).
    ``leases`` makes each worker run in one of the processes sharing the log, taken
    over within ``lease_ttl`` seconds when that process stops answering (default: on
    for PostgreSQL, off for SQLite; see docs/scaling.md).
    The store counts in ``health()``: degraded after a failed write or read, or while a
    write waits longer than ``store_degraded_after`` seconds for the database lock;
    unhealthy when failures go on (or a write waits) for more than
    ``store_unhealthy_after`` seconds, or the database file is deleted or replaced.
    ``clock`` gives wall time (message timestamps, retry due times, lease expiry): by
    default the system's, or under Trio's MockClock one that moves with it.
    ``lifespan(app)``, an async context manager, is entered by ``serve`` before the
    workers start and left after they stop; what it yields is ``app.resources`` and
    ``ctx.resources`` while serving. ``routes`` (Starlette routes) are served beside
    the HTTP API by ``http_app``, ``serve_http`` and ``petrock-trio serve``.
    ``snapshot_every=N`` and ``state_version`` snapshot the projection's state (see Snapshots).
    ``max_batch`` is the most commands one ``execute_many`` takes.
    Run it with ``trio.run(petrock_trio.serve, app)`` or ``await nursery.start(serve, app)``.
    """

    def __init__(
        self,
        database: str = ":memory:",
        *,
        state: Any = None,
        page_size: int = 1000,
        max_payload_bytes: int = 1 << 20,
        shutdown_grace: float = 10.0,
        position_flush_interval: float = 0.2,
        synchronous: str = "FULL",
        clock: WallClock = default_clock,
        hooks: Iterable[Hook] | None = None,
        store: Store | None = None,
        leases: bool | None = None,
        lease_ttl: float = 5.0,
        store_degraded_after: float = 5.0,
        store_unhealthy_after: float = 30.0,
        snapshot_every: int | None = None,
        state_version: str = "1",
        lifespan: Lifespan | None = None,
        routes: Iterable[BaseRoute] = (),
        max_batch: int = 1000,
    ) -> None:
        _require(page_size >= 1, "page_size must be at least 1")
        _require(max_payload_bytes >= 1, "max_payload_bytes must be at least 1")
        _require(max_batch >= 1, "max_batch must be at least 1")
        _require(shutdown_grace >= 0, "shutdown_grace must not be negative")
        _require(position_flush_interval > 0, "position_flush_interval must be positive")
        _require(
            synchronous.upper() in {"OFF", "NORMAL", "FULL", "EXTRA"},
            "synchronous must be OFF, NORMAL, FULL or EXTRA",
        )
        _require(isinstance(database, str), "database must be a string (a path or a URL)")
        _require(lease_ttl > 0, "lease_ttl must be positive")
        _require(store_degraded_after > 0, "store_degraded_after must be positive")
        _require(
            store_unhealthy_after >= store_degraded_after,
            "store_unhealthy_after must not be less than store_degraded_after",
        )
        self.database = database
        self.state: Any = types.SimpleNamespace() if state is None else state
        self.page_size = page_size
        self.shutdown_grace = shutdown_grace
        self.position_flush_interval = position_flush_interval
        self.synchronous = synchronous
        self.clock = clock
        # Instrumentation: every hook receives every worker event; structured logs by default.
        self.hooks: list[Hook] = [StructlogHook()] if hooks is None else list(hooks)
        # A store object instead of a URL: tests wrap a real store to inject faults.
        self.store = store
        # Several processes serving one log each run every worker only with leases.
        self.leases = leases
        self.lease_ttl = lease_ttl
        self.store_degraded_after = store_degraded_after
        self.store_unhealthy_after = store_unhealthy_after
        self.registry = CommandRegistry(max_payload_bytes=max_payload_bytes)
        self.projection = Projection(snapshot_every=snapshot_every, state_version=state_version)
        self.workers: dict[str, AnyWorker] = {}
        self._command_state: dict[str, Any] = {}
        self._rt: Runtime | None = None
        self._validate_lock = trio.Lock()
        self.totals = Totals()  # what /metrics counts, since the process started
        self.lifespan = check_lifespan(lifespan)
        self.resources: Any = None  # what the lifespan yielded, while serving
        self.routes: tuple[BaseRoute, ...] = tuple(routes)
        self.max_batch = max_batch
        self._executor = Executor(
            self.registry, self.state_for, self.projection.appliers, self._validate_lock, max_batch
        )

    def __repr__(self) -> str:
        status = "serving" if self.running else "stopped"
        return (
            f"<App {self.database!r} {status} commands={len(self.registry.names())} "
            f"workers={len(self.workers)}>"
        )

    # --- registration ---------------------------------------------------------------

    def register_command(
        self, cls: type[Any], apply: Applier | None = None, *, state: Any = None
    ) -> None:
        """Register a command class; ``apply(state, cmd, message)`` keeps feature state.

        ``state`` is what ``apply`` and the command's ``validate`` receive; it defaults
        to ``app.state``.
        """
        self._not_running("register commands")
        name = self.registry.register(cls)
        target = self.state if state is None else state
        self._command_state[name] = target
        if apply is not None:
            self.projection.add(name, apply, target)

    def register_feature(self, feature: Feature) -> None:
        """Let a feature (a module or object with ``register(app)``) register itself."""
        register = getattr(feature, "register", None)
        if register is None:
            raise ConfigurationError(f"{feature!r} has no register(app) function")
        register(self)

    def register_worker(
        self, worker: PatternWorker[Any] | LegacyWorker, *, tick: float = 1.0
    ) -> None:
        """Add a worker: a :class:`PatternWorker`, or an old-style worker run every ``tick`` s.

        The command classes a pattern worker routes with ``on(cls)`` are registered
        (once: registering the same class again changes nothing); a different class
        already registered under one of their names is a :class:`ConfigurationError`.
        """
        self._not_running("register workers")
        runner: AnyWorker
        if isinstance(worker, PatternWorker):
            runner = worker
        elif isinstance(worker, LegacyWorker):
            runner = LegacyRunner(worker, self, tick=tick)
        else:
            raise ConfigurationError(
                f"{worker!r} is neither a PatternWorker nor an old-style worker "
                "(info/start/replay/work/stop)"
            )
        if runner.name in self.workers:
            raise ConfigurationError(f"a worker named {runner.name!r} is already registered")
        check_service_names(self.workers.values(), runner)
        if isinstance(runner, PatternWorker):
            missing = route_classes(runner.name, runner.route_table.values(), self.registry)
            runner.freeze()
            for cls in missing:
                self.register_command(cls)
        self.workers[runner.name] = runner

    def _not_running(self, what: str) -> None:
        if self._rt is not None:
            raise ConfigurationError(f"cannot {what} while the app is serving")

    # --- running --------------------------------------------------------------------

    def attach(self, rt: Runtime | None) -> None:
        """Serve on ``rt`` from now on (``None``: no longer serving); called by ``serve``."""
        self._rt = rt
        if rt is not None:
            _tracing.refresh()  # a tracer provider set up before serving counts

    def runtime_options(self) -> dict[str, Any]:
        """What a Runtime needs of the app (``serve`` builds one per serving)."""
        return {
            "encode_valid": self.encode_valid,
            "state_for": self.state_for,
            "validate_lock": self._validate_lock,
            "hooks": self.hooks,
            "totals": self.totals,
            "resources": self.resources,
        }

    def run_names(self) -> dict[str, tuple[str, int]]:
        """What ``serve`` runs (and leases): a run per worker, one per partition of a
        partitioned worker; by stored name, its (worker, partition)."""
        names: dict[str, tuple[str, int]] = {}
        for name, worker in self.workers.items():
            if isinstance(worker, PatternWorker):
                for index, stored in enumerate(worker.partition_names()):
                    names[stored] = (name, index)
            else:
                names[name] = (name, 0)
        return names

    def open_run(self, stored: str, rt: Runtime) -> Run:
        """A fresh run of ``stored`` (a worker, or a partition of one; see
        :meth:`run_names`) on ``rt``, from what the store holds."""
        name, partition = self.run_names()[stored]
        worker = self.workers[name]
        if isinstance(worker, PatternWorker):
            return WorkerRun(worker, rt, partition)
        return worker.prepare(rt)

    def uses_leases(self) -> bool:
        """Whether each worker runs in one process only: on by default for PostgreSQL,
        whose log several processes share; SQLite opts in with ``leases=True``."""
        if self.leases is not None:
            return self.leases
        url = self.store.url if self.store is not None else self.database
        return url.startswith(("postgresql://", "postgres://"))

    @property
    def running(self) -> bool:
        return self._rt is not None and not self._rt.stopping.is_set()

    def _runtime(self) -> Runtime:
        rt = self._rt
        if rt is None or rt.stopping.is_set():
            raise NotRunning("the app is not serving; start it with serve(app)")
        return rt

    @property
    def log(self) -> MessageLog:
        """The message log while serving (old-style workers read it directly)."""
        return self._runtime().log

    def state_for(self, name: str) -> Any:
        return self._command_state.get(name, self.state)

    def encode_valid(self, cmd: object) -> tuple[str, bytes]:
        """Encode ``cmd`` after checking it against current state; raises the typed errors."""
        return self._executor.encode_valid(cmd)

    async def execute(self, cmd: object) -> Message:
        """Validate ``cmd`` against current state, append it, and wait until state has it.

        Returns the appended :class:`Message`. Raises :class:`UnknownCommand`,
        :class:`ValidationError`, :class:`DecodeError`, :class:`PayloadTooLarge` or
        :class:`NotRunning` before appending, and nothing was appended. Afterwards only
        :class:`NotRunning` (the app stopped before state applied the command, which is
        in the log) or a store error can come.
        """
        tracing = _tracing.ACTIVE
        if tracing is not None:
            return await tracing.execute(self._execute, cmd)
        return await self._execute(cmd)

    async def _execute(self, cmd: object, metadata: Sequence[str | None] = ()) -> Message:
        return await self._executor.one(self._runtime(), cmd, metadata)

    async def execute_many(self, commands: Sequence[object]) -> list[Message]:
        """:meth:`execute` for a batch: one transaction, the messages in order, all or nothing.

        Each command is validated against state with the batch's earlier commands
        applied. A refused command raises its error (as :meth:`execute` would) with
        ``index``, its position in the batch; a batch of more than ``max_batch``
        commands raises :class:`BatchTooLarge`; either way nothing was appended. An
        empty batch returns ``[]``. Returns once state has applied the last message.
        """
        tracing = _tracing.ACTIVE
        if tracing is not None:
            return await tracing.execute_many(self._execute_many, commands)
        return await self._execute_many(commands)

    async def _execute_many(
        self, commands: Sequence[object], metadata: str | None = None
    ) -> list[Message]:
        return await self._executor.many(self._runtime(), commands, metadata)

    async def caught_up(self) -> None:
        """Wait until every worker has handled everything appended so far.

        So far means committed before the call, by this process or another sharing the
        log (the store's head is read first: another process's append may not have
        reached this one's watch yet). Commands emitted meanwhile are waited for too;
        retries and backoff are waited out (a message counts once it succeeded or was
        dead-lettered). Raises :class:`StoreError` if the head cannot be read, and
        :class:`NotRunning` if the app stops while its state is still behind.
        """
        rt = self._runtime()
        rt.log.publish_head(await rt.log.store.head())
        while True:
            target = rt.log.head.value
            # Workers that run in another process (leases) are that process's to wait for.
            for position in [rt.applied, *rt.flusher.feeds.values()]:
                if not await position.reached(target):
                    raise NotRunning("the app stopped before its workers caught up")
            await trio.lowlevel.checkpoint()
            if rt.log.head.value == target:
                return

    def stop(self) -> None:
        """Begin graceful shutdown: refuse new commands, finish handlers, commit, close."""
        if self._rt is not None:
            self._rt.stopping.set()

    # --- observation ----------------------------------------------------------------

    def health(self) -> HealthReport:
        """The worst health among the workers and the store, with their reasons."""
        reports = [*(w.health() for w in self.workers.values()), self.store_health()]
        return HealthReport.worst(reports, prefix=[*self.workers, "store"])

    def store_health(self) -> HealthReport:
        """The store's health: failed writes and reads, lock waits, a file gone."""
        rt = self._rt
        if rt is None:
            return HealthReport(Health.HEALTHY)
        return rt.log.store_health.report(**self._store_thresholds())

    def _store_thresholds(self) -> dict[str, float]:
        return {
            "degraded_after": self.store_degraded_after,
            "unhealthy_after": self.store_unhealthy_after,
        }

    def inspect(self) -> dict[str, Any]:
        """A JSON-serialisable report: log head, commands, workers with positions, lag,
        health and metrics."""
        rt = self._rt
        head = rt.log.head.value if rt is not None else None
        workers: dict[str, Any] = {}
        for name, worker in self.workers.items():
            metrics = worker.metrics()
            replayed, target = worker.replay_progress()
            workers[name] = {
                "name": name,
                **worker.info(),
                "replay": {"position": replayed, "target": target},
                "position": metrics.position,
                "lag": metrics.lag,
                "health": worker.health().to_dict(),
                "metrics": metrics.to_dict(),
                "paused": rt is not None and rt.controls.paused(name),
            }
            if isinstance(worker, PatternWorker) and worker.partitions > 1:
                workers[name]["partitions"] = self._partitions(worker)
        return {
            "database": self.database,
            "running": self.running,
            "head": head,
            "commands": self.registry.names(),
            "projection": self.projection.describe(),
            "positions": {name: w["position"] for name, w in workers.items()},
            "pump": attrs.asdict(rt.pump.statistics()) if rt is not None else None,
            "leases": rt.leases.statistics() if rt is not None and rt.leases else None,
            "store": attrs.asdict(rt.log.store.statistics()) if rt is not None else None,
            "store_health": (
                rt.log.store_health.to_dict(**self._store_thresholds()) if rt is not None else None
            ),
            "workers": workers,
            "services": service_report(self.workers.values(), self.clock()),
            "health": self.health().to_dict(),
        }

    def _partitions(self, worker: PatternWorker[Any]) -> list[dict[str, Any]]:
        """Each partition: those served here in full, the others with their holder."""
        rt = self._rt
        here = {p["partition"]: p for p in worker.partition_details()}
        holders = rt.leases.holders() if rt is not None and rt.leases is not None else {}
        head = rt.log.head.value if rt is not None else 0
        positions = rt.flusher.saved if rt is not None else {}
        shown = []
        for index, stored in enumerate(worker.partition_names()):
            if index in here:
                shown.append(here[index])
                continue
            position = positions.get(stored, 0)
            shown.append(
                {
                    "partition": index,
                    "name": stored,
                    "position": position,
                    "lag": max(0, head - position),
                    "holder": holders.get(stored),
                    "health": None,
                }
            )
        return shown

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetter]:
        """Messages the workers gave up on, oldest failure first."""
        rt = self._runtime()
        return [DeadLetter.from_record(r) for r in await rt.log.store.dead_letters(worker)]
