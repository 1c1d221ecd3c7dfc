"""Old-style workers (start / replay / work / stop), run beside pattern workers on a tick.

This is the shape of Petrock's ``Worker`` interface: the worker owns its loop over the
log, its position and its context. petrock_trio runs such workers unchanged so that a
feature can migrate one worker at a time; new workers should be ``PatternWorker``.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from ._health import HealthReport, HealthThresholds, Signals, judge
from ._logging import get_logger
from ._metrics import MetricsRecorder, WorkerMetrics, lag_seconds
from ._runtime import Runtime

__all__ = ["LegacyRunner", "OldStyle", "WorkerInfo"]

_log = get_logger("petrock_trio.worker")


@attrs.frozen
class WorkerInfo:
    name: str
    description: str = ""


class OldStyle(Protocol):
    """What the runner calls (``LegacyWorker`` in ``_app`` is the public, typed form)."""

    def info(self) -> WorkerInfo: ...

    async def start(self, app: Any, /) -> None: ...

    async def replay(self) -> None: ...

    async def work(self) -> None: ...

    async def stop(self) -> None: ...


# Old-style workers are judged by the same rules, on what they report: crashes and errors.
_THRESHOLDS = HealthThresholds()


class LegacyRunner:
    """Runs one :class:`LegacyWorker`: start, replay, then ``work()`` every ``tick`` seconds."""

    def __init__(
        self, worker: OldStyle, app: object, *, tick: float = 1.0, timeout: float = 30.0
    ) -> None:
        self.worker = worker
        # What ``start(app)`` receives: the worker owns its loop over the app's log.
        self.app = app
        info = worker.info()
        self.name = info.name
        self.description = info.description
        self.tick = tick
        self.timeout = timeout
        self._metrics = MetricsRecorder()
        self._rt: Runtime | None = None
        self._crashed: str | None = None
        self._stop_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<LegacyRunner {self.name!r} tick={self.tick} worker={self.worker!r}>"

    @property
    def position(self) -> int:
        return int(getattr(self.worker, "last_processed_id", 0))

    def metrics(self) -> WorkerMetrics:
        rt, position = self._rt, self.position
        if rt is None:
            return self._metrics.snapshot(position=position, head=position)
        head = rt.log.head.value
        # It reads the log itself: only the pump's recent pages can date its lag.
        lag = lag_seconds(position, head, rt.clock(), None, rt.pump.recent_page)
        return self._metrics.snapshot(position=position, head=head, lag_seconds=lag)

    def health(self) -> HealthReport:
        errors = self._metrics.rates(trio.current_time())[1] if self._rt is not None else 0.0
        return judge(Signals(crashed=self._crashed, errors_per_minute=errors), _THRESHOLDS)

    def replay_progress(self) -> tuple[int, int]:
        return self.position, self.position

    def info(self) -> dict[str, Any]:
        return {"kind": "legacy", "description": self.description, "tick": self.tick}

    def prepare(self, rt: Runtime) -> LegacyRunner:
        """Ready for one serving; the runner is its own run."""
        self._rt = rt
        self._metrics = MetricsRecorder(totals=rt.totals.of(self.name))
        self._metrics.started_at = trio.current_time()
        return self

    def stop(self) -> None:
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, replay, tick; never returns unless cancelled or stopped.

        Error handling: an error from ``work()`` is logged and counted; the next tick
        runs as usual. An error from ``start()`` or ``replay()`` marks it unhealthy.
        """
        rt = self._rt
        assert rt is not None
        try:
            try:
                await self.worker.start(self.app)
                await self.worker.replay()
            except Exception as exc:  # noqa: BLE001 - reported as unhealthy, app goes on
                self._crashed = repr(exc)
                _log.exception(
                    "petrock.worker_crashed", worker_name=self.name, error_details=repr(exc)
                )
                task_status.started()
                return
            task_status.started()
            while not rt.stopping.is_set():
                # Only the wait between ticks is interrupted by graceful shutdown; a
                # running work() finishes (serve cancels it when the grace runs out).
                with trio.CancelScope() as self._stop_scope:
                    await trio.sleep(self.tick)
                if self._stop_scope.cancelled_caught:
                    break
                await self._tick()
        finally:
            self._stop_scope = None
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
                try:
                    await self.worker.stop()
                except Exception as exc:  # noqa: BLE001 - shutdown goes on
                    _log.warning(
                        "petrock.worker_stop_failed",
                        worker_name=self.name,
                        error_details=repr(exc),
                        exc_info=exc,
                    )
            self._rt = None

    async def _tick(self) -> None:
        started = trio.current_time()
        error: Exception | None = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                await self.worker.work()
            except Exception as exc:  # noqa: BLE001 - counted and logged
                error = exc
        now = trio.current_time()
        if scope.cancelled_caught:
            error = TimeoutError(f"work() took longer than {self.timeout:g} s")
        self._metrics.periodic_run(now - started, error)
        if error is None:
            self._metrics.handled(now, now - started)
            return
        self._metrics.failure(now, repr(error))
        # work() is the old-style worker's periodic work: logged as periodic work is.
        _log.error(
            "petrock.legacy_work_failed",
            worker_name=self.name,
            command_type="periodic",
            run=self._metrics.periodic_runs,
            execution_time=round((now - started) * 1000, 3),
            timed_out=scope.cancelled_caught,
            error_details=repr(error),
            exc_info=error,
        )
