"""serve(app): one root nursery holding the writer, the pump, the projection and the workers."""

from __future__ import annotations

import signal
import threading
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import trio

from ._app import App
from ._clock import for_this_run
from ._controls import Controls
from ._errors import ConfigurationError, PetrockError
from ._leases import LeaseKeeper
from ._lifespan import lifespan_of
from ._log import MessageLog
from ._logging import get_logger
from ._loopwatch import Block, Culprit, LoopWatch
from ._positions import PositionFlusher
from ._pump import LogPump
from ._reset import run_resettable
from ._routes import unregistered
from ._runstate import RunState
from ._runtime import Run, Runtime
from ._snapshots import PROJECTION
from ._worker import PatternWorker
from .stores import SnapshotRecord, open_store

__all__ = ["check_routes", "serve"]

_log = get_logger("petrock_trio")


async def serve(
    app: App,
    *,
    handle_signals: bool = True,
    loop_block_threshold: float | None = 1.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``app`` until cancelled, ``app.stop()``, or SIGINT/SIGTERM.

    ``task_status.started()`` is called once every worker has replayed its saved
    position and the state projection has applied the log, so ``await
    nursery.start(serve, app)`` returns an app ready for ``execute``.

    Shutdown (signal or ``app.stop()``) is graceful: new commands are refused, waits
    end, running handlers get ``app.shutdown_grace`` seconds to finish, positions are
    committed and the store is closed. Cancelling the caller's scope is the hard stop:
    running handlers are cancelled (their messages are handled again next time), and
    positions are still committed.

    A watchdog thread reports code that keeps the event loop from running for more
    than ``loop_block_threshold`` seconds of real time (``None``: no watchdog): it
    logs ``petrock.loop_blocked`` naming the handler or task, and the worker whose
    handler blocked is degraded for its health's ``dead_letter_window``.

    ``app.lifespan`` is entered first, before the store opens, and left last, after
    the store closed; what it yields is ``app.resources`` meanwhile.

    Error handling: handler and periodic errors never reach here; a failing store
    raises :class:`StoreError` out of ``serve``, a failure entering the lifespan its
    own error. A route that names no registered command raises
    :class:`ConfigurationError` before anything starts.
    """
    if loop_block_threshold is not None and not loop_block_threshold > 0:
        raise ConfigurationError("loop_block_threshold must be positive (or None)")
    check_routes(app)
    runs: dict[str, Run] = {}
    watch = None
    if loop_block_threshold is not None:
        watch = LoopWatch(
            loop_block_threshold,
            culprit=partial(_culprit, runs),
            on_block=partial(_mark_blocked, runs),
        )
        watch.start()
    try:
        async with lifespan_of(app, app.lifespan, grace=app.shutdown_grace) as resources:
            app.resources = resources
            try:
                await _serve(app, runs, handle_signals=handle_signals, task_status=task_status)
            finally:
                app.resources = None
    finally:
        if watch is not None:
            watch.stop()


def check_routes(app: App) -> None:
    """Every route names a command the app registered: a typo (``"orders/plcae"``)
    would serve silently, handling nothing. An error, not a warning: commands are
    registered per app, and every process that serves a log builds the same app."""
    known = app.registry.names()
    for worker in app.workers.values():
        if isinstance(worker, PatternWorker):
            problem = unregistered(worker.name, worker.routes, known)
            if problem is not None:
                raise ConfigurationError(problem)


async def _serve(
    app: App,
    runs: dict[str, Run],
    *,
    handle_signals: bool,
    task_status: trio.TaskStatus[None],
) -> None:
    store = app.store or open_store(app.database, synchronous=app.synchronous)
    log = MessageLog(store, app.registry, for_this_run(app.clock))
    await log.open()
    try:
        rt = await _runtime(app, log)
        if rt.leases is None:
            for stored in app.run_names():
                runs[stored] = app.open_run(stored, rt)
        # From here on the app can be used, by its workers' start-up code too; commands
        # executed meanwhile wait for the state projection like any other.
        app.attach(rt)
        async with trio.open_nursery() as root:
            await root.start(log.run_writer)
            try:
                async with trio.open_nursery() as engine:
                    await engine.start(rt.pump.run)
                    engine.start_soon(rt.flusher.run)
                    engine.start_soon(store.watch, partial(_published, log, rt.controls))
                    engine.start_soon(rt.controls.run)
                    await engine.start(app.redrive_tickets.run)
                    if rt.leases is not None:
                        await engine.start(rt.leases.run)
                    if handle_signals and threading.current_thread() is threading.main_thread():
                        engine.start_soon(_watch_signals, app, rt, engine.cancel_scope)
                    try:
                        await engine.start(_run_parts, app, rt, runs, engine.cancel_scope)
                    except RuntimeError:
                        if not rt.stopping.is_set():
                            raise
                        return  # stopped during start-up: never started, nothing to serve
                    _log.info(
                        "petrock.serving",
                        database=redact(app.database),
                        head=log.head.value,
                        workers=len(app.workers),
                    )
                    task_status.started()
            finally:
                app.attach(None)
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await rt.flusher.flush(direct=True)
                    finally:
                        if rt.leases is not None:
                            await rt.leases.release()
                root.cancel_scope.cancel()
    finally:
        app.attach(None)
        await store.aclose()
    _log.info("petrock.stopped", database=redact(app.database), head=log.head.value)


def _culprit(runs: dict[str, Run]) -> Culprit | None:
    """The worker whose handler or periodic work executes now (the watchdog's thread
    calls this while the event loop is blocked)."""
    for run in list(runs.values()):
        if isinstance(run, RunState):
            executing = run.executing()
            if executing is not None:
                return Culprit(run.name, *executing, partition=run.partition)
    return None


def _mark_blocked(runs: dict[str, Run], block: Block) -> None:
    """Degrade the worker that blocked the event loop (on the Trio thread)."""
    culprit = block.culprit
    if culprit is None:
        return
    for run in runs.values():
        if (
            isinstance(run, RunState)
            and run.name == culprit.worker
            and run.partition == culprit.partition
        ):
            run.blocked = (trio.current_time(), block.reason)


async def _runtime(app: App, log: MessageLog) -> Runtime:
    """Everything one serving shares, with what the store holds of earlier ones."""
    store = log.store
    letters: dict[str, set[int]] = {}
    # By name, newest first: a run loads the first it can use (see _snapshots).
    snapshots: dict[str, list[SnapshotRecord]] = {}
    for record in await store.snapshots():
        snapshots.setdefault(record.name, []).append(record)
    for letter in await store.dead_letters():
        letters.setdefault(letter.worker, set()).add(letter.message_id)
    leases = (
        LeaseKeeper(store, log.clock, app.run_names(), ttl=app.lease_ttl)
        if app.uses_leases()
        else None
    )
    flusher = PositionFlusher(log, interval=app.position_flush_interval, leases=leases)
    pump = LogPump(log, page_size=app.page_size, on_page=flusher.touch)
    return Runtime(
        log=log,
        pump=pump,
        flusher=flusher,
        saved_positions=await store.positions(),
        dead_letter_ids=letters,
        retries={r.worker: r for r in await store.retries()},
        leases=leases,
        controls=await _controls(app, log, leases),
        snapshots=snapshots,
        applied=app.projection.prepare(
            pump, head=log.head.value, snapshots=snapshots.get(PROJECTION, ())
        ).position,
        **app.runtime_options(),
    )


async def _controls(app: App, log: MessageLog, leases: LeaseKeeper | None) -> Controls:
    """The workers' controls as the store holds them (a worker paused there starts
    paused), and which runs a reset of each worker restarts here."""
    names: dict[str, list[str]] = {}
    for stored, (worker, _) in app.run_names().items():
        names.setdefault(worker, []).append(stored)
    store = log.store
    records, discarded = await store.controls(), await store.discarded()
    return Controls(store, records, names=names, leases=leases, discarded=discarded)


def _published(log: MessageLog, controls: Controls, head: int) -> None:
    """Another process committed: the head it reached, and maybe changes of controls."""
    log.publish_head(head)
    controls.poke()


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _run_parts(
    app: App,
    rt: Runtime,
    runs: dict[str, Run],
    engine: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the projection and every worker; started once all have replayed."""
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            if not await _start_parts(app, rt, runs, outer, nursery):
                # Stopped during start-up replay: replay has no effects, so stop at once.
                _log.info("petrock.stopped_during_startup")
                outer.cancel_scope.cancel()
                engine.cancel()
                return
            task_status.started()
            await rt.stopping.wait()
            _log.info("petrock.stopping", grace=app.shutdown_grace)
            for run in list(runs.values()):
                run.stop()
            nursery.cancel_scope.deadline = trio.current_time() + app.shutdown_grace
        # The projection stops last: work that was finishing may wait for it to apply
        # what it appended. Whoever still waits is told the app stopped.
        await app.projection.save_now()
        app.projection.stop()
        rt.close_waiters()
    engine.cancel()


async def _start_parts(
    app: App, rt: Runtime, runs: dict[str, Run], outer: trio.Nursery, nursery: trio.Nursery
) -> bool:
    """Start the projection and every worker concurrently (the pump feeds all their
    replays at once); False if a stop came first."""
    async with trio.open_nursery() as racing:

        async def start_all() -> None:
            async with trio.open_nursery() as starting:
                starting.start_soon(outer.start, app.projection.bind(rt).run)
                for stored in app.run_names():
                    if rt.leases is None:
                        worker = app.run_names()[stored][0]
                        resettable = partial(run_resettable, app.open_run, rt, stored, worker, runs)
                        starting.start_soon(nursery.start, resettable)
                    else:
                        run_leased = partial(_run_leased, app, rt, rt.leases, stored, runs)
                        starting.start_soon(nursery.start, run_leased)
            racing.cancel_scope.cancel()

        async def stop_requested() -> None:
            await rt.stopping.wait()
            racing.cancel_scope.cancel()

        racing.start_soon(start_all)
        racing.start_soon(stop_requested)
    return not rt.stopping.is_set()


async def _run_leased(
    app: App,
    rt: Runtime,
    leases: LeaseKeeper,
    stored: str,
    runs: dict[str, Run],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``stored`` (a worker, or a partition of one) whenever this process holds its
    lease; stand by otherwise.

    Started once the worker is live here, or as soon as it is known to be another
    process's. Every takeover starts a fresh run from what the store holds: position,
    dead letters, retry state, and state rebuilt by replay.
    """
    worker, partition = app.run_names()[stored]
    while not rt.stopping.is_set():
        if stored not in leases.held:
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            async with trio.open_nursery() as waiting:

                async def stop_waiting() -> None:
                    await rt.stopping.wait()
                    waiting.cancel_scope.cancel()

                waiting.start_soon(stop_waiting)
                await leases.wait_held(stored)
                waiting.cancel_scope.cancel()
            if rt.stopping.is_set():
                return
        with leases.activity(stored) as scope:
            try:
                await rt.reload(stored, worker)
            except PetrockError as exc:
                # The database failed at the takeover: try again while the lease holds.
                _log.warning(
                    "petrock.takeover_failed",
                    worker_name=worker,
                    partition=partition,
                    error_details=repr(exc),
                    exc_info=exc,
                )
                await trio.sleep(leases.interval)
                continue
            runs[stored] = run = app.open_run(stored, rt)
            try:
                async with trio.open_nursery() as running:
                    await running.start(run.run)
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
            finally:
                del runs[stored]
        if scope.cancelled_caught:
            # Another process took over: what this one had not committed, it handles.
            rt.flusher.feeds.pop(stored, None)
            _log.warning("petrock.worker_standby", worker_name=worker, partition=partition)


async def _watch_signals(app: App, rt: Runtime, engine: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not rt.stopping.is_set():
                _log.info("petrock.signal", signal=signal.Signals(signum).name)
                app.stop()
            else:
                engine.cancel()  # a second signal: stop now
                return
