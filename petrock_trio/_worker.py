"""PatternWorker: declare handlers by command name; the engine runs everything else."""

from __future__ import annotations

import copy
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar, overload

import attrs
import structlog
import trio

from ._context import HandlerContext, PeriodicContext
from ._errors import (
    ConfigurationError,
    HandlerTimeout,
    LeaseLost,
    NotRunning,
    OutcomeUnknown,
    Permanent,
    PetrockError,
    Retry,
    ServiceUnavailable,
    StoreError,
)
from ._events import (
    DeadLettered,
    HandlerCompleted,
    HandlerFailed,
    PeriodicCompleted,
    PeriodicFailed,
    PeriodicSkipped,
    Replayed,
    WorkerCrashed,
)
from ._health import Health, HealthReport, HealthThresholds
from ._message import Message, Page, Row
from ._metrics import MetricsRecorder, WorkerMetrics
from ._pump import Feed
from ._retry import Backoff
from ._runtime import Runtime
from ._services import ExternalService
from .stores import DeadLetterRecord, RetryRecord

__all__ = ["Handler", "PatternWorker", "PeriodicWork", "WorkerStatistics"]

_log = structlog.get_logger("petrock_trio.worker")

S = TypeVar("S")
Handler = Callable[[HandlerContext, Any, Any], Awaitable[None]]
PeriodicWork = Callable[[PeriodicContext, Any], Awaitable[None]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")


@attrs.frozen
class _Route:
    name: str
    handler: Handler
    timeout: float | None
    retry: Backoff | None


@attrs.frozen
class _Periodic:
    work: PeriodicWork
    interval: float
    timeout: float | None


@attrs.frozen
class WorkerStatistics:
    """What a worker is doing right now."""

    running: bool
    live: bool
    position: int
    in_flight: int
    retrying_message: int | None
    retry_attempt: int
    detaches: int
    crashes: int


class _Stop(Exception):
    """Graceful shutdown interrupted a wait; leave without committing the current message."""


class _RedriveRequest:
    def __init__(self, message_id: int) -> None:
        self.message_id = message_id
        self.done = trio.Event()
        self.error: BaseException | None = None


class PatternWorker(Generic[S]):
    """A background worker declared by command patterns.

    Handlers are ``async def handler(ctx, cmd, state)``; periodic work is
    ``async def work(ctx, state)``. Handlers and periodic work of one worker never run
    at the same time, so they share ``state`` without locks.

    On start the worker replays messages up to its saved position with
    ``ctx.is_replay=True`` (emits suppressed) to rebuild ``state``, then handles later
    messages live, one at a time in id order. A live handler that raises or overruns
    its timeout is retried with ``retry`` backoff and dead-lettered after
    ``retry.max_attempts``. With ``replay=False`` the rebuild is skipped.

    When the worker is served again (a restart in the same process), ``state`` starts
    again from a deep copy of the state it was constructed with.
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
    ) -> None:
        if not name.strip():
            raise ConfigurationError("a worker needs a name")
        if handler_timeout <= 0 or periodic_timeout <= 0:
            raise ConfigurationError("handler_timeout and periodic_timeout must be positive")
        if page_capacity < 1:
            raise ConfigurationError("page_capacity must be at least 1")
        self.name = name
        self.description = description
        self.state: S = state
        self._initial_state = copy.deepcopy(state)
        self.handler_timeout = handler_timeout
        self.periodic_timeout = periodic_timeout
        self.retry = retry or Backoff()
        self.replay = replay
        self.services: tuple[ExternalService, ...] = tuple(services)
        self.thresholds = health or HealthThresholds()
        self.page_capacity = page_capacity
        self._routes: dict[str, _Route] = {}
        self._periodic: _Periodic | None = None
        self._metrics = MetricsRecorder()
        self._rt: Runtime | None = None
        self._feed: Feed | None = None
        self._lock = trio.Lock()
        self._wait_scopes: set[trio.CancelScope] = set()
        # The page in hand and the deadline of the handler running under it (see
        # _watchdog); inf while no handler runs.
        self._page_scope: trio.CancelScope | None = None
        self._handling = False  # a page is being handled: the watchdog keeps watch
        self._cursor = 0
        self._deadline = math.inf
        self._busy = trio.Event()
        self._runs = 0
        self._live = False
        self._crashed: str | None = None
        self._crashes = 0
        self._in_flight = 0
        self._retrying: tuple[int, int] | None = None
        self._redrive: trio.MemorySendChannel[_RedriveRequest] | None = None
        self._periodic_runs = 0

    def __repr__(self) -> str:
        retrying = f" retrying={self._retrying[0]}" if self._retrying else ""
        return (
            f"<PatternWorker {self.name!r} routes={sorted(self._routes)} "
            f"position={self.position} in_flight={self._in_flight}{retrying} "
            f"state={self.state!r}>"
        )

    # --- declaration ------------------------------------------------------------------

    @overload
    def on_command(
        self,
        name: str,
        handler: None = None,
        *,
        timeout: float | None = None,
        retry: Backoff | None = None,
    ) -> Callable[[H], H]: ...

    @overload
    def on_command(
        self, name: str, handler: H, *, timeout: float | None = None, retry: Backoff | None = None
    ) -> H: ...

    def on_command(
        self,
        name: str,
        handler: H | None = None,
        *,
        timeout: float | None = None,
        retry: Backoff | None = None,
    ) -> H | Callable[[H], H]:
        """Route commands called ``name`` to ``handler`` (or use as a decorator)."""
        if isinstance(name, type):
            from ._commands import command_name  # noqa: PLC0415 - accepts a class too

            name = command_name(name)

        if timeout is not None and timeout <= 0:
            raise ConfigurationError("a handler timeout must be positive")

        def register(fn: H) -> H:
            if not callable(fn):
                raise ConfigurationError(f"the handler for {name!r} is not callable")
            if name in self._routes:
                raise ConfigurationError(f"worker {self.name!r} already routes {name!r}")
            if self._rt is not None:
                raise ConfigurationError("routes cannot change while the worker runs")
            self._routes[name] = _Route(name, fn, timeout, retry)
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
        self._periodic = _Periodic(work, interval, timeout)

    @property
    def routes(self) -> frozenset[str]:
        return frozenset(self._routes)

    # --- observation --------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._feed.position.value if self._feed is not None else 0

    def metrics(self) -> WorkerMetrics:
        head = self._rt.log.head.value if self._rt is not None else self.position
        return self._metrics.snapshot(position=self.position, head=head)

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            running=self._rt is not None,
            live=self._live,
            position=self.position,
            in_flight=self._in_flight,
            retrying_message=self._retrying[0] if self._retrying else None,
            retry_attempt=self._retrying[1] if self._retrying else 0,
            detaches=self._feed.detaches if self._feed is not None else 0,
            crashes=self._crashes,
        )

    def health(self) -> HealthReport:
        unhealthy: list[str] = []
        degraded: list[str] = []
        if self._crashed is not None:
            unhealthy.append(f"worker task crashed: {self._crashed}")
        if self._rt is not None:
            self._judge(trio.current_time(), unhealthy, degraded)
        if self._retrying is not None:
            degraded.append(f"retrying message {self._retrying[0]} (attempt {self._retrying[1]})")
        if unhealthy:
            return HealthReport(Health.UNHEALTHY, tuple(unhealthy))
        if degraded:
            return HealthReport(Health.DEGRADED, tuple(degraded))
        return HealthReport(Health.HEALTHY)

    def _judge(self, now: float, unhealthy: list[str], degraded: list[str]) -> None:
        """Add the reasons that come from rates, dead letters, services and lag."""
        t = self.thresholds
        _, errors = self._metrics.rates(now)
        if errors >= t.unhealthy_errors_per_minute:
            unhealthy.append(f"error rate {errors:.1f}/min")
        elif errors >= t.degraded_errors_per_minute:
            degraded.append(f"error rate {errors:.1f}/min")
        last = self._metrics.last_dead_letter_at
        if last is not None and now - last < t.dead_letter_window:
            degraded.append(f"dead-lettered a message {now - last:.0f} s ago")
        degraded.extend(
            f"external service {s.name!r} unavailable" for s in self.services if not s.available
        )
        lag = self.metrics().lag
        if lag > t.unhealthy_lag:
            unhealthy.append(f"lag {lag}")
        elif lag > t.degraded_lag:
            degraded.append(f"lag {lag}")

    def info(self) -> dict[str, Any]:
        return {
            "kind": "pattern",
            "description": self.description,
            "routes": sorted(self._routes),
            "periodic_interval": self._periodic.interval if self._periodic else None,
            "services": [s.name for s in self.services],
        }

    # --- running (called by serve) -------------------------------------------------------

    def _prepare(self, rt: Runtime) -> Feed:
        if self._rt is not None:
            raise ConfigurationError(f"worker {self.name!r} is already running")
        if self._runs:
            self.state = copy.deepcopy(self._initial_state)
            self._metrics = MetricsRecorder()
        self._metrics.started_at = trio.current_time()
        self._runs += 1
        self._rt = rt
        self._crashed = None
        self._live = False
        saved = min(rt.saved_positions.get(self.name, 0), rt.log.head.value)
        self._saved = saved
        self._feed = rt.pump.feed(
            self.name, self._routes, 0 if self.replay else saved, self.page_capacity
        )
        rt.flusher.feeds[self.name] = self._feed
        rt.flusher.saved[self.name] = rt.saved_positions.get(self.name, 0)
        return self._feed

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replay, then handle live; never returns unless cancelled or stopped.

        Error handling: handler errors are retried and dead-lettered, never raised. An
        unexpected error in the engine's own loop marks the worker unhealthy, is logged,
        and the loop restarts after a backoff from the last committed point.
        """
        rt = self._rt
        assert rt is not None
        send, receive = trio.open_memory_channel[_RedriveRequest](64)
        self._redrive = send
        try:
            async with trio.open_nursery() as nursery:
                # The watchdog lives as long as the message loop, grace period included.
                watchdog = trio.CancelScope()
                nursery.start_soon(self._watchdog, watchdog)
                nursery.start_soon(self._supervise, rt, watchdog)
                assert self._feed is not None
                # Live once everything up to the saved position is replayed (or skipped).
                await self._feed.position.wait_value(lambda p: p >= self._saved)
                self._live = True
                if self._periodic is not None:
                    nursery.start_soon(self._periodic_loop, rt, self._periodic)
                nursery.start_soon(self._redrive_loop, rt, receive)
                task_status.started()
                await rt.stopping.wait()
                # Waits end at once; a running handler or periodic run finishes first
                # (serve cancels everything when the grace period runs out).
                self._stop()
        finally:
            self._redrive = None
            self._live = False
            if self._feed is not None:
                self._feed.close()
            self._rt = None

    async def _supervise(self, rt: Runtime, watchdog: trio.CancelScope) -> None:
        backoff = Backoff(initial=1.0, max_delay=60.0)
        try:
            while True:
                try:
                    await self._message_loop(rt)
                except _Stop:
                    return
                except Exception as exc:  # noqa: BLE001 - an engine bug must not take the app down silently
                    self._crashes += 1
                    self._crashed = repr(exc)
                    delay = backoff.delay(min(self._crashes, 10))
                    rt.report(WorkerCrashed(self.name, exc, delay))
                    assert self._feed is not None
                    self._feed.rewind()
                else:
                    return
                try:
                    await self._interruptible(rt, trio.sleep, delay)
                except _Stop:
                    return
                self._crashed = None
        finally:
            watchdog.cancel()

    async def _message_loop(self, rt: Runtime) -> None:
        feed = self._feed
        assert feed is not None
        saved = self._saved
        page: Page | None = None  # the page in hand: its routed rows from _cursor on
        indexes: list[int] = []
        while not rt.stopping.is_set():
            # One cancel scope serves the first attempts of page after page, until the
            # watchdog cancels it because a handler overran: the one at _cursor.
            with trio.CancelScope() as scope:
                self._page_scope = scope
                try:
                    while not rt.stopping.is_set():
                        if page is None:
                            try:
                                # Graceful shutdown closes the feed (see _stop): cheaper
                                # than a cancel scope around every wait for a page.
                                page = await feed.next_page()
                            except trio.EndOfChannel:
                                raise _Stop from None
                            indexes = list(page.routed(self._routes, after=feed.position.value))
                            self._cursor = 0
                        async with self._lock:
                            await self._handle_page(rt, feed, page, indexes, saved)
                        feed.advance(page.last)
                        rt.flusher.touch()
                        page = None
                finally:
                    self._page_scope = None
            if scope.cancelled_caught:
                assert page is not None
                index = indexes[self._cursor]
                async with self._lock:
                    await self._timed_out(rt, page, index, live=page.rows[index].id > saved)
                feed.advance(page.rows[index].id)
                self._cursor += 1

    async def _handle_page(
        self, rt: Runtime, feed: Feed, page: Page, indexes: list[int], saved: int
    ) -> None:
        """Handle the routed rows ``indexes[_cursor:]`` of ``page``, in order."""
        rows = page.rows
        routes = self._routes
        scope = self._page_scope
        report = rt.wants_completed()
        self._handling = True
        self._busy.set()
        done = 0
        i = self._cursor
        try:
            while i < len(indexes):
                if rt.stopping.is_set():
                    raise _Stop
                self._cursor = i
                index = indexes[i]
                row = rows[index]
                if row.id <= saved:
                    await self._replay_one(rt, page, index, row)
                elif (message := self._ready(rt, page, index, row)) is None:
                    await self._handle_live(rt, page, index, row, scope=scope)
                else:
                    # The common case, kept short: a first attempt that succeeds.
                    self._in_flight = 1
                    started = trio.current_time()
                    error = await self._attempt(
                        rt, routes[row.name], message, started=started, scope=scope, report=report
                    )
                    self._in_flight = 0
                    if error is None:
                        now = trio.current_time()
                        self._metrics.handled(now, now - started)
                    else:
                        await self._handle_live(rt, page, index, row, first=(error, started))
                done = row.id
                i += 1
            self._cursor = i
        finally:
            # The position moves once per page (and with every commit that carries it),
            # not per message: nothing else reads it in between.
            feed.advance(done)
            self._handling = False
            self._deadline = math.inf

    async def _timed_out(self, rt: Runtime, page: Page, index: int, *, live: bool) -> None:
        """The handler at ``index`` overran under the page scope: the rest of its story."""
        row = page.rows[index]
        limit = self._limit(row.name)
        if live:
            error = HandlerTimeout(self.name, limit, f"handler for {row.name!r}")
            await self._handle_live(
                rt, page, index, row, first=(error, trio.current_time() - limit)
            )
            return
        message = page.message(index, rt.registry)
        timeout = HandlerTimeout(self.name, limit, f"replay of {row.name!r}")
        self._metrics.replayed += 1
        rt.report(Replayed(self.name, message, limit, timeout))

    def _ready(self, rt: Runtime, page: Page, index: int, row: Row) -> Message | None:
        """The decoded message if nothing stands before its first attempt: it decodes,
        the state projection has applied it, and no saved retry state waits for it."""
        if rt.app.projection.position < row.id:
            return None
        retry = rt.retries.get(self.name)
        if retry is not None and retry.message_id == row.id:
            return None
        try:
            return page.message(index, rt.registry)
        except Exception:  # noqa: BLE001 - _handle_live dead-letters it
            return None

    async def _watchdog(self, scope: trio.CancelScope) -> None:
        """Cut off a handler that overruns its timeout under the page scope.

        Handlers only store their deadline (an attribute write); moving a cancel
        scope's deadline per message costs more than the rest of the hot path. This
        task wakes at a running handler's deadline, and otherwise at most once per
        shortest timeout while a page is in hand; between pages it sleeps on an event.
        A handler starting after it went to sleep has a later deadline than its wake-up.
        """
        shortest = min(
            [self.handler_timeout, *(r.timeout for r in self._routes.values() if r.timeout)]
        )
        with scope:
            while True:
                await self._busy.wait()
                while self._handling:
                    now = trio.current_time()
                    if self._deadline <= now and self._page_scope is not None:
                        self._deadline = math.inf
                        self._page_scope.cancel()
                    await trio.sleep_until(min(self._deadline, now + shortest))
                self._busy = trio.Event()

    def _limit(self, name: str) -> float:
        route = self._routes[name]
        return route.timeout if route.timeout is not None else self.handler_timeout

    async def _replay_one(self, rt: Runtime, page: Page, index: int, row: Row) -> None:
        if row.id in rt.dead_letter_ids.get(self.name, ()):
            return  # it never took effect live, so it does not take effect in replay
        try:
            message = page.message(index, rt.registry)
        except Exception:  # noqa: BLE001 - a bad row was dead-lettered when it was live
            return
        route = self._routes[row.name]
        ctx = HandlerContext(rt, self.name, message, is_replay=True, attempt=1)
        started = trio.current_time()
        error: BaseException | None = None
        # As for live handlers: cut off by the watchdog (see _call).
        self._deadline = started + self._limit(row.name)
        try:
            await route.handler(ctx, message.command, self.state)
        except Exception as exc:  # noqa: BLE001 - replay must go on; the live run decided
            error = exc
        self._deadline = math.inf
        self._metrics.replayed += 1
        if rt.hooks:
            rt.report(Replayed(self.name, message, trio.current_time() - started, error))

    async def _handle_live(
        self,
        rt: Runtime,
        page: Page,
        index: int,
        row: Row,
        *,
        redrive: bool = False,
        scope: trio.CancelScope | None = None,
        first: tuple[Exception, float] | None = None,
    ) -> None:
        """Handle one message until it succeeds or is dead-lettered.

        With ``scope`` (the page's), the first attempt runs under it and a timeout
        propagates to the caller. ``first`` is a first attempt the caller already made:
        its error and when it started.
        """
        try:
            message = page.message(index, rt.registry)
        except Exception as exc:  # noqa: BLE001 - bad input in the log: dead-letter, go on
            await self._dead_letter(rt, row, exc, attempts=1, first_failed_at=rt.clock())
            return
        route = self._routes[row.name]
        policy = route.retry or self.retry
        if rt.app.projection.position < row.id:
            # A live handler sees app state at least as new as its message, so what it
            # emits is validated against the state that message produced.
            await rt.wait_applied(row.id)
        attempt, first_failed_at, wait = (1, None, 0.0) if redrive else self._resume(rt, row)
        self._in_flight = 1
        try:
            while True:
                if wait > 0:
                    await self._wait_to_retry(rt, wait)
                error: Exception | None
                if first is not None:
                    (error, started), first = first, None
                else:
                    started = trio.current_time()
                    error = await self._attempt(
                        rt,
                        route,
                        message,
                        attempt=attempt,
                        started=started,
                        redrive=redrive,
                        scope=scope if attempt == 1 else None,
                        report=rt.wants_completed(),
                    )
                now = trio.current_time()
                if error is None:
                    self._metrics.handled(now, now - started)
                    return
                first_failed_at = first_failed_at or rt.clock()
                delay = self._after_failure(
                    rt, row, error, attempt=attempt, policy=policy, duration=now - started
                )
                if delay is None:
                    await self._dead_letter(
                        rt, row, error, attempts=attempt, first_failed_at=first_failed_at
                    )
                    return
                self._retrying = (row.id, attempt)
                self._metrics.retried += 1
                if not isinstance(error, ServiceUnavailable):
                    attempt += 1
                wait = delay
                await self._save_retry(
                    rt,
                    RetryRecord(
                        self.name, row.id, attempt - 1, rt.clock() + delay, first_failed_at
                    ),
                )
        finally:
            self._in_flight = 0
            self._retrying = None

    def _resume(self, rt: Runtime, row: Row) -> tuple[int, float | None, float]:
        """Attempt number, first failure and wait before the first attempt at ``row``.

        If an earlier run (or another process) saved retry state for ``row``, the
        backoff carries on with its attempt count, at the time it chose.
        """
        record = rt.retries.get(self.name)
        if record is None or record.message_id != row.id:
            return 1, None, 0.0
        del rt.retries[self.name]
        self._retrying = (row.id, record.attempts)
        return record.attempts + 1, record.first_failed_at, record.next_attempt_at - rt.clock()

    async def _wait_to_retry(self, rt: Runtime, delay: float) -> None:
        """Sleep ``delay`` seconds without holding the lock (periodic work may run)."""
        self._lock.release()
        try:
            await self._interruptible(rt, trio.sleep, delay)
        finally:
            # Even when cancelled: the caller's `async with` releases it again.
            with trio.CancelScope(shield=True):
                await self._lock.acquire()

    async def _save_retry(self, rt: Runtime, record: RetryRecord) -> None:
        """Keep the retry state with the position: a restart or a takeover by another
        process resumes the backoff instead of starting it over."""
        try:
            await rt.commit(self.name, retries=[record])
        except LeaseLost:
            raise
        except PetrockError as exc:
            # Retrying goes on in memory; only a crash before the retry loses the count.
            _log.warning(
                "petrock.retry_state_not_saved", worker_name=self.name, error_details=repr(exc)
            )

    async def _attempt(
        self,
        rt: Runtime,
        route: _Route,
        message: Message,
        *,
        started: float,
        scope: trio.CancelScope | None,
        report: bool,
        attempt: int = 1,
        redrive: bool = False,
    ) -> Exception | None:
        """Run the handler once and commit its outcome; the error if either failed."""
        if rt.leases is not None:
            await rt.leases.ensure(self.name)
        ctx = HandlerContext(rt, self.name, message, is_replay=False, attempt=attempt)
        limit = self._limit(route.name)
        error = await self._call(route, ctx, message, started + limit, scope)
        if error is not None:
            return error
        if ctx.emitted or redrive:
            error = await self._commit_outcome(rt, message.id, ctx, redrive=redrive)
            if error is not None:
                return error
        if report:
            duration = trio.current_time() - started
            emitted = tuple(ctx.emitted)
            rt.report(HandlerCompleted(self.name, message, attempt, duration, emitted, redrive))
        return None

    async def _call(
        self,
        route: _Route,
        ctx: HandlerContext,
        message: Message,
        deadline: float,
        scope: trio.CancelScope | None,
    ) -> Exception | None:
        """Call the handler, cut off at ``deadline``; the error it raised, if any."""
        error: Exception | None = None
        if scope is not None:
            # Under the page scope: the watchdog cuts the handler off at ``deadline``.
            self._deadline = deadline
            try:
                await route.handler(ctx, message.command, self.state)
            except Exception as exc:  # noqa: BLE001 - every handler failure is retried
                error = exc
            self._deadline = math.inf
            return error
        with trio.move_on_at(deadline) as own:
            try:
                await route.handler(ctx, message.command, self.state)
            except Exception as exc:  # noqa: BLE001 - every handler failure is retried
                error = exc
        if own.cancelled_caught:
            limit = self._limit(message.name)
            return HandlerTimeout(self.name, limit, f"handler for {message.name!r}")
        return error

    def _after_failure(
        self,
        rt: Runtime,
        row: Row,
        error: Exception,
        *,
        attempt: int,
        policy: Backoff,
        duration: float,
    ) -> float | None:
        """Record a failure; the delay before the next attempt, or None to dead-letter."""
        timed_out = isinstance(error, HandlerTimeout)
        unavailable = isinstance(error, ServiceUnavailable)
        requested = isinstance(error, Retry)
        delay: float | None
        if isinstance(error, ServiceUnavailable):
            # The service is known to be down: wait for it without spending attempts.
            delay = error.retry_after or policy.delay(attempt)
        else:
            self._metrics.failure(trio.current_time(), repr(error), timeout=timed_out)
            if (
                isinstance(error, (Permanent, *policy.never_retry))
                or attempt >= policy.max_attempts
            ):
                delay = None
            elif isinstance(error, Retry) and error.delay is not None:
                delay = error.delay
            else:
                delay = policy.delay(attempt)
        rt.report(
            HandlerFailed(
                self.name,
                row.id,
                row.name,
                attempt,
                duration,
                error,
                delay,
                timed_out=timed_out,
                retry_requested=requested,
                service_unavailable=unavailable,
            )
        )
        return delay

    async def _commit_outcome(
        self, rt: Runtime, message_id: int, ctx: HandlerContext, *, redrive: bool
    ) -> Exception | None:
        """Commit a successful run; the error if the commit failed (then it is retried)."""
        try:
            await self._commit_success(rt, message_id, ctx, redrive=redrive)
        except OutcomeUnknown as exc:
            # The commit carried this message's position: if that landed, so did the
            # emits, and handling the message again would emit them twice.
            try:
                landed = (await rt.log.store.positions()).get(self.name, 0) >= message_id
            except StoreError:
                landed = False
            return None if landed and not redrive else exc
        except Exception as exc:  # noqa: BLE001 - a failed commit is retried like a failed handler
            return exc
        return None

    async def _commit_success(
        self, rt: Runtime, message_id: int, ctx: HandlerContext, *, redrive: bool
    ) -> None:
        if redrive:
            await rt.commit(self.name, encoded=ctx.emitted, resolved=[(self.name, message_id)])
            rt.dead_letter_ids.get(self.name, set()).discard(message_id)
        elif ctx.emitted:
            await rt.commit(self.name, encoded=ctx.emitted, positions={self.name: message_id})
            rt.flusher.committed(self.name, message_id)

    async def _dead_letter(
        self, rt: Runtime, row: Row, error: BaseException, *, attempts: int, first_failed_at: float
    ) -> None:
        record = DeadLetterRecord(
            worker=self.name,
            message_id=row.id,
            command_name=row.name,
            error=repr(error),
            attempts=attempts,
            first_failed_at=first_failed_at,
            last_failed_at=rt.clock(),
        )
        await rt.commit(self.name, positions={self.name: row.id}, dead_letters=[record])
        rt.flusher.committed(self.name, row.id)
        rt.dead_letter_ids.setdefault(self.name, set()).add(row.id)
        self._metrics.dead_letter(trio.current_time())
        rt.report(DeadLettered(self.name, row.id, row.name, attempts, error))

    async def _interruptible(self, rt: Runtime, wait: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await wait(*args)`` unless graceful shutdown starts, then raise _Stop."""
        with trio.CancelScope() as scope:
            self._wait_scopes.add(scope)
            if rt.stopping.is_set():
                scope.cancel()
            try:
                return await wait(*args)
            finally:
                self._wait_scopes.discard(scope)
        raise _Stop

    def _stop(self) -> None:
        """Interrupt waits (never running handlers) for graceful shutdown."""
        for scope in self._wait_scopes:
            scope.cancel()
        if self._feed is not None:
            self._feed.close()
        if self._redrive is not None:
            self._redrive.close()

    # --- periodic work and re-drives ----------------------------------------------------

    async def _periodic_loop(self, rt: Runtime, periodic: _Periodic) -> None:
        timeout = periodic.timeout if periodic.timeout is not None else self.periodic_timeout
        next_at = trio.current_time()
        while not rt.stopping.is_set():
            try:
                await self._interruptible(rt, trio.sleep_until, next_at)
            except _Stop:
                return
            started = trio.current_time()
            unavailable = [s.name for s in self.services if not s.available]
            if unavailable:
                self._metrics.periodic_skipped += 1
                rt.report(PeriodicSkipped(self.name, tuple(unavailable)))
            else:
                self._periodic_runs += 1
                async with self._lock:
                    await self._periodic_once(rt, periodic, self._periodic_runs, timeout)
            next_at = started + periodic.interval
            now = trio.current_time()
            while next_at < now:
                next_at += periodic.interval

    async def _periodic_once(
        self, rt: Runtime, periodic: _Periodic, run: int, limit: float
    ) -> None:
        if rt.leases is not None:
            await rt.leases.ensure(self.name)
        ctx = PeriodicContext(rt, self.name, run)
        started = trio.current_time()
        error: Exception | None = None
        with trio.move_on_after(limit) as scope:
            try:
                await periodic.work(ctx, self.state)
                if ctx.emitted:
                    await rt.commit(self.name, encoded=ctx.emitted)
            except Exception as exc:  # noqa: BLE001 - periodic failures are logged and counted
                error = exc
        timed_out = scope.cancelled_caught
        if timed_out:
            error = HandlerTimeout(self.name, limit, "periodic work")
        now = trio.current_time()
        self._metrics.periodic_runs += 1
        if error is None:
            rt.report(PeriodicCompleted(self.name, run, now - started, tuple(ctx.emitted)))
            return
        self._metrics.periodic_failures += 1
        self._metrics.failure(now, repr(error), timeout=timed_out)
        rt.report(PeriodicFailed(self.name, run, now - started, error, timed_out))

    async def run_periodic_now(self) -> None:
        """Run the periodic work once, now, as the engine would (tests, operators)."""
        rt = self._rt
        if rt is None or self._periodic is None:
            raise NotRunning(f"worker {self.name!r} is not running or has no periodic work")
        periodic = self._periodic
        limit = periodic.timeout if periodic.timeout is not None else self.periodic_timeout
        self._periodic_runs += 1
        async with self._lock:
            await self._periodic_once(rt, periodic, self._periodic_runs, limit)

    async def redrive(self, message_id: int) -> None:
        """Handle a dead-lettered message again, live; returns when it is done."""
        if self._redrive is None:
            raise NotRunning(f"worker {self.name!r} is not running")
        request = _RedriveRequest(message_id)
        try:
            await self._redrive.send(request)
        except trio.ClosedResourceError:
            raise NotRunning(f"worker {self.name!r} is stopping") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error

    async def _redrive_loop(
        self, rt: Runtime, receive: trio.MemoryReceiveChannel[_RedriveRequest]
    ) -> None:
        async for request in receive:
            try:
                rows = await rt.log.store.read_after(request.message_id - 1, 1)
                if not rows or rows[0].id != request.message_id:
                    raise LookupError(f"message {request.message_id} is not in the log")  # noqa: TRY301
                row = rows[0]
                if request.message_id not in rt.dead_letter_ids.get(self.name, ()):
                    raise LookupError(  # noqa: TRY301
                        f"message {request.message_id} is not a dead letter of {self.name!r}"
                    )
                if row.name not in self._routes:
                    raise LookupError(f"worker {self.name!r} does not route {row.name!r}")  # noqa: TRY301
                page = Page(row.id - 1, row.id, [row])
                async with self._lock:
                    await self._handle_live(rt, page, 0, row, redrive=True)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                request.error = exc
            finally:
                request.done.set()
