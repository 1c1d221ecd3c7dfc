"""WorkerHarness: run one worker as the engine would, and look at everything it does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import attrs
import structlog.testing
import trio
import trio.testing
from trio_util import AsyncValue, wait_any

from .._app import App, DeadLetter, Feature
from .._clock import TrioWallClock, WallClock
from .._events import (
    DeadLettered,
    Event,
    HandlerCompleted,
    HandlerFailed,
    PeriodicCompleted,
    PeriodicFailed,
    Replayed,
)
from .._health import HealthReport
from .._message import Message
from .._metrics import WorkerMetrics
from .._serve import serve
from .._worker import PatternWorker, Route
from ..stores import open_store
from ._faults import FaultyStore
from ._running import memory_database

__all__ = ["HandlerCall", "WorkerHarness", "worker_harness"]

# How long send, append and settle wait (Trio seconds; virtual under a MockClock)
# before saying what the worker is stuck on, instead of hanging the test.
SETTLE_TIMEOUT: Final = 3600.0


@attrs.frozen
class HandlerCall:
    """One run of a handler: when it started (``at``, Trio time), which message and
    attempt, and its ``outcome``: ``"ok"``, ``"error"``, ``"timeout"``, ``"retry"``
    (it raised ``pt.Retry``, or a declared service was unavailable) or ``"replay"``;
    ``error`` is what it raised."""

    at: float
    command_type: str
    message_id: int
    attempt: int
    outcome: str
    error: BaseException | None = None


class WorkerHarness:
    """A running app with one worker under test, and recordings of what it did.

    Build it with :func:`worker_harness`. Everything runs on Trio's clock: under
    pytest-trio's ``autojump_clock`` a test that waits an hour takes milliseconds.
    """

    def __init__(self, app: App, worker: PatternWorker[Any], store: FaultyStore | None) -> None:
        self.app = app
        self.worker = worker
        self.store = store
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self.calls: list[HandlerCall] = []
        self.periodic_runs: list[tuple[float, BaseException | None]] = []
        self.events: list[Event] = []
        self.logs: list[Any] = []
        self._emitted: list[tuple[str, bytes]] = []
        # Messages whose next attempt is scheduled, and a count of this worker's
        # events: what a wait with settle=False watches besides the positions.
        self._retrying: set[int] = set()
        self._reports: Any = AsyncValue(0)

    def __repr__(self) -> str:
        return (
            f"<WorkerHarness {self.worker.name!r} calls={len(self.calls)} "
            f"emitted={len(self._emitted)} periodic_runs={len(self.periodic_runs)}>"
        )

    # --- recording (the harness is a hook) ------------------------------------------------

    def __call__(self, event: Event, /) -> None:
        if getattr(event, "worker", None) != self.worker.name:
            return
        self.events.append(event)
        self._reports.value += 1
        now = trio.current_time()
        match event:
            case HandlerCompleted():
                self._retrying.discard(event.message.id)
                self.calls.append(
                    HandlerCall(
                        now - event.duration,
                        event.message.name,
                        event.message.id,
                        event.attempt,
                        "ok",
                    )
                )
                self._emitted.extend(event.emitted)
            case HandlerFailed():
                if event.delay is not None:
                    self._retrying.add(event.message_id)
                outcome = (
                    "retry"
                    if event.retry_requested or event.service_unavailable
                    else "timeout"
                    if event.timed_out
                    else "error"
                )
                self.calls.append(
                    HandlerCall(
                        now - event.duration,
                        event.command_type,
                        event.message_id,
                        event.attempt,
                        outcome,
                        event.error,
                    )
                )
            case Replayed():
                self.calls.append(
                    HandlerCall(
                        now - event.duration,
                        event.message.name,
                        event.message.id,
                        1,
                        "replay",
                        event.error,
                    )
                )
            case PeriodicCompleted():
                self.periodic_runs.append((now - event.duration, None))
                self._emitted.extend(event.emitted)
            case PeriodicFailed():
                self.periodic_runs.append((now - event.duration, event.error))
            case DeadLettered():
                self._retrying.discard(event.message_id)
            case _:
                pass

    # --- driving ----------------------------------------------------------------------

    async def send(self, *commands: object, settle: bool = True) -> list[Message]:
        """Execute ``commands`` one by one, validated as the app would, then wait for
        the worker (see :meth:`settle`; ``settle=False``: see :meth:`append`)."""
        messages = [await self.app.execute(cmd) for cmd in commands]
        await self._wait(messages[-1].id if messages else 0, settle=settle)
        return messages

    async def append(self, *commands: object, settle: bool = True) -> list[Message]:
        """Append ``commands`` without validation (replaying history, bad sequences),
        then wait for the worker.

        By default until it has settled everything (:meth:`settle`: retries waited
        out). With ``settle=False`` only until it has handled these messages (or
        dead-lettered, or passed ones it does not route) or waits to retry one of
        them, with what can run at that instant run: the retry is scheduled, its
        failed attempt in :attr:`calls`. Then :meth:`settle` waits for the rest.
        """
        messages = await self.app.log.append(*commands)
        await self._wait(messages[-1].id if messages else 0, settle=settle)
        return messages

    async def append_raw(self, name: str, payload: bytes, *, settle: bool = True) -> int:
        """Append a row as stored bytes, e.g. one that does not decode; return its id.
        Waits as :meth:`append` does."""
        (row,) = await self.app.log.commit(self.app.log.new_commit(encoded=[(name, payload)]))
        await self._wait(row.id, settle=settle)
        return row.id

    async def settle(self, *, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ASYNC109
        """Let everything that can run now run (periodic work due at this instant
        included), then wait until the worker has settled everything appended so
        far: each message handled or dead-lettered, retries and waits for services
        waited out, commands emitted meanwhile included.

        Raises ``trio.TooSlowError``, naming the message the worker is stuck on, if
        that takes more than ``timeout`` seconds of Trio time (virtual time under a
        MockClock: a service that never comes back fails the test in milliseconds).
        """
        with trio.move_on_after(timeout) as scope:
            await trio.testing.wait_all_tasks_blocked()
            await self.app.caught_up()
        if scope.cancelled_caught:
            raise trio.TooSlowError(self._stuck(timeout))

    async def _wait(self, last: int, *, settle: bool) -> None:
        if settle:
            await self.settle()
            return
        with trio.move_on_after(SETTLE_TIMEOUT) as scope:
            await self._tried(last)
            await trio.testing.wait_all_tasks_blocked()
        if scope.cancelled_caught:
            raise trio.TooSlowError(self._stuck(SETTLE_TIMEOUT))

    async def _tried(self, last: int) -> None:
        """Until every position of the worker is at ``last`` or beyond, or the worker
        waits to retry a message up to ``last``."""
        while True:
            positions = self._positions()
            if all(p.value >= last for p in positions) or any(m <= last for m in self._retrying):
                return
            # wait_value checks at once: nothing changes unseen between here and there.
            changes = [partial(p.wait_value, lambda v, seen=p.value: v != seen) for p in positions]
            reports = self._reports.value
            changes.append(partial(self._reports.wait_value, lambda n, seen=reports: n != seen))
            await wait_any(*changes)

    def _positions(self) -> list[Any]:
        """The worker's positions in memory (one per partition), as the app serves it."""
        names = getattr(self.worker, "partition_names", lambda: [self.worker.name])()
        rt = self.app._rt  # noqa: SLF001 - the kit reads the serving's positions
        assert rt is not None, "the harness's app is not serving"
        return [rt.flusher.feeds[name] for name in names if name in rt.flusher.feeds]

    def _stuck(self, timeout: float) -> str:
        """What the worker has not finished, for a wait that ran out of time."""
        rt = self.app._rt  # noqa: SLF001
        head = rt.log.head.value if rt is not None else 0
        position = min((p.value for p in self._positions()), default=0) if rt else 0
        message = min(self._retrying, default=position + 1)
        tries = [c for c in self.calls if c.message_id == message]
        detail = (
            f"{len(tries)} attempt(s), the last {tries[-1].outcome}: {tries[-1].error!r}"
            if tries
            else "no attempt yet"
        )
        return (
            f"worker {self.worker.name!r} has not settled message {message} ({detail}) "
            f"within {timeout:g} s of Trio time; its position is {position}, the head "
            f"{head}. A service that never comes back? Raise it with up(), or wait "
            "longer with settle(timeout=...)."
        )

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of (virtual) time pass with the worker running, and what is
        due at the end of them start."""
        await trio.sleep(seconds)
        await trio.testing.wait_all_tasks_blocked()

    async def run_periodic(self) -> None:
        """Run the worker's periodic work once, now, as the engine runs it, and wait
        until what it emitted is settled."""
        await self.worker.run_periodic_now()
        await self.app.caught_up()

    async def restart(self, *, hard: bool = False) -> None:
        """Stop the app and serve it again on the same log: the worker replays.

        ``hard=True`` cancels instead of shutting down gracefully.
        """
        assert self._scope is not None
        if hard:
            self._scope.cancel()
        else:
            self.app.stop()
        await self._stopped.wait()
        await self._start()

    async def _start(self) -> None:
        assert self._nursery is not None
        self._stopped = trio.Event()
        await self._nursery.start(self._serve)

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with trio.CancelScope() as self._scope:
                await serve(self.app, handle_signals=False, task_status=task_status)
        finally:
            self._stopped.set()

    @contextlib.contextmanager
    def failing(
        self,
        command: str,
        times: int = 1,
        error: Callable[[], Exception] = lambda: RuntimeError("injected failure"),
    ) -> Iterator[None]:
        """Make the handler of ``command`` raise ``error()`` on its next ``times`` runs
        (a network error, a bug, a timeout: whatever ``error`` builds)."""
        remaining = times
        original: Route | None = None

        async def wrapped(ctx: Any, cmd: Any, state: Any) -> None:
            nonlocal remaining
            if remaining > 0:
                remaining -= 1
                raise error()
            assert original is not None
            await original.handler(ctx, cmd, state)

        # The running worker looks its routes up per message.
        original = self.worker._swap_handler(command, wrapped)  # noqa: SLF001
        try:
            yield
        finally:
            self.worker._restore(original)  # noqa: SLF001

    # --- looking ----------------------------------------------------------------------

    @property
    def state(self) -> Any:
        return self.worker.state

    @property
    def emitted(self) -> list[Any]:
        """Commands the worker committed (handlers and periodic work), decoded, in order."""
        registry = self.app.registry
        return [registry.decode(name, payload) for name, payload in self._emitted]

    def calls_for(self, command_type: str | None = None, *, live: bool = True) -> list[HandlerCall]:
        return [
            c
            for c in self.calls
            if (command_type is None or c.command_type == command_type)
            and (c.outcome != "replay" if live else c.outcome == "replay")
        ]

    def attempt_times(self, message_id: int) -> list[float]:
        """When each live attempt at ``message_id`` started (for retry-delay assertions)."""
        return [c.at for c in self.calls if c.message_id == message_id and c.outcome != "replay"]

    def periodic_times(self) -> list[float]:
        return [at for at, _ in self.periodic_runs]

    async def dead_letters(self) -> list[DeadLetter]:
        return await self.app.dead_letters(self.worker.name)

    def metrics(self) -> WorkerMetrics:
        return self.worker.metrics()

    def health(self) -> HealthReport:
        return self.worker.health()

    async def positions(self) -> dict[str, int]:
        """Positions as committed in the store (not the in-memory ones)."""
        return await self.app.log.store.positions()


@asynccontextmanager
async def worker_harness(
    worker: PatternWorker[Any],
    *,
    commands: Iterable[type[Any]] = (),
    feature: Feature | None = None,
    database: str | None = None,
    clock: WallClock | None = None,
    faults: bool = False,
    capture_logs: bool = True,
    **app_options: Any,
) -> AsyncIterator[WorkerHarness]:
    """Serve ``worker`` on a fresh app and yield a :class:`WorkerHarness` for it.

    ``commands`` are registered, and a ``feature`` registers its commands and state;
    of the workers it registers only ``worker`` is served (its other workers would
    handle the same commands, emit their own and take their share of time).
    ``database`` defaults to an in-memory SQLite database that survives
    :meth:`~WorkerHarness.restart` inside the block; pass a file path for a real log.
    ``faults=True`` puts a :class:`FaultyStore` in front of the store
    (``harness.store``). Wall time defaults to :class:`TrioWallClock` so ages and
    timestamps follow Trio's clock, virtual or not. Other keywords go to ``App``.
    """
    with contextlib.ExitStack() as stack:
        url = database or stack.enter_context(memory_database())
        app = App(database=url, clock=clock or TrioWallClock(), **app_options)
        store = FaultyStore(open_store(url)) if faults else None
        app.store = store
        for cls in commands:
            app.register_command(cls)
        if feature is not None:
            feature.register(app)
            for name in [n for n, w in app.workers.items() if w is not worker]:
                del app.workers[name]
        if worker.name not in app.workers:
            app.register_worker(worker)
        harness = WorkerHarness(app, worker, store)
        app.hooks.append(harness)
        if capture_logs:
            harness.logs = stack.enter_context(structlog.testing.capture_logs())
        async with trio.open_nursery() as nursery:
            harness._nursery = nursery  # noqa: SLF001 - set up by its own factory
            await harness._start()  # noqa: SLF001
            try:
                yield harness
            finally:
                app.stop()
