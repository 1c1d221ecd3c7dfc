"""Per-worker metrics: counters, sliding-window rates and handler-time percentiles.

Everything is measured on Trio's clock. Recording is a few attribute updates on the
hot path; percentiles are computed only when a snapshot is taken.

A :class:`MetricsRecorder` belongs to one run of a worker (what ``worker.metrics()``
shows); it also adds to the worker's ``_totals.WorkerTotals``, which count from the
start of the process across all its runs (what Prometheus exposes).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._totals import DURATION_BUCKETS, SKIPPED, SUCCESS, WorkerTotals, outcome

__all__ = ["MetricsRecorder", "PageLike", "WorkerMetrics", "lag_seconds"]


@attrs.frozen
class WorkerMetrics:
    """A snapshot of one worker's metrics; times are seconds."""

    processed: int
    failed: int
    retried: int
    dead_lettered: int
    replayed: int
    messages_per_second: float
    errors_per_minute: float
    handler_time_avg: float
    handler_time_p50: float
    handler_time_p95: float
    lag: int
    position: int
    periodic_runs: int
    periodic_failures: int
    periodic_skipped: int
    timeouts: int
    last_error: str | None = None
    # Age of the oldest message after the position (0 when caught up); None when no
    # page at hand holds it (see lag_seconds).
    lag_seconds: float | None = 0.0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# --- lag in seconds ----------------------------------------------------------------------


class PageLike(Protocol):
    """What :func:`lag_seconds` reads of a page (``_message.Page``): ids in
    ``(after, last]``, rows ``(id, timestamp, ...)`` in id order."""

    @property
    def after(self) -> int: ...

    @property
    def last(self) -> int: ...

    @property
    def rows(self) -> Sequence[tuple[Any, ...]]: ...  # (id, timestamp, ...) per row


def _row_id(row: tuple[int, float, str, bytes]) -> int:
    return row[0]


def lag_seconds(
    position: int,
    head: int,
    now: float,
    in_hand: PageLike | None,
    recent: Callable[[int], PageLike | None],
) -> float | None:
    """Seconds since the oldest message after ``position`` was appended; 0 when caught up.

    Computed when asked (a scrape, ``inspect``), from timestamps already in memory, no
    store read: the page the worker holds (a message it is handling or waiting to
    retry), else the pump's recent page holding ``position + 1`` (``recent``). None
    when neither does: the pump has not read the message yet (it was appended a moment
    ago) or the worker is far behind, between two pages it reads itself. ``now`` and
    the rows' timestamps are the app's wall clock; clock skew between processes is
    clamped to 0.
    """
    if position >= head:
        return 0.0
    for page in (in_hand, recent(position)):
        if page is None or not page.after <= position < page.last:
            continue
        rows = page.rows
        index = bisect_right(rows, position, key=_row_id)
        if index < len(rows):
            timestamp: float = rows[index][1]
            return max(0.0, now - timestamp)
    return None


# --- one run's recorder ------------------------------------------------------------------


class _Window:
    """Event counts in one-second buckets over the last ``window`` seconds."""

    __slots__ = ("buckets", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.buckets: deque[list[int]] = deque()

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += count
        else:
            buckets.append([second, count])
            self._prune(now)

    def _prune(self, now: float) -> None:
        # A bucket for second s covers [s, s + 1); keep those overlapping (now - window, now].
        oldest = int(now - self.window) + 1 if self.window >= 1 else int(now)
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()

    def count(self, now: float) -> int:
        self._prune(now)
        return sum(b[1] for b in self.buckets)


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


class MetricsRecorder:
    """Collects one run's metrics, and adds to the worker's ``totals``.

    Rates count events in the last ``window`` seconds (whole seconds, on Trio's clock).
    Messages per second divide by the window, or by the time since the worker started
    while that is shorter (at least one second); errors per minute are the errors in
    the window, per minute of window. Handler-time statistics cover the last ``samples``
    handler runs.
    """

    def __init__(
        self, *, window: float = 60.0, samples: int = 1024, totals: WorkerTotals | None = None
    ) -> None:
        self.window = window
        # Set by the worker when it starts serving; construction happens outside Trio.
        self.started_at = 0.0
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.replayed = 0
        self.timeouts = 0
        self.periodic_runs = 0
        self.periodic_failures = 0
        self.periodic_skipped = 0
        self.last_error: str | None = None
        self.last_dead_letter_at: float | None = None
        # The worker's totals in its app (a run hands them over); standalone otherwise.
        self.totals = WorkerTotals() if totals is None else totals
        self._processed = _Window(window)
        self._errors = _Window(window)
        self._times: deque[float] = deque(maxlen=samples)

    def handled(self, now: float, duration: float, command: str | None = None) -> None:
        """A live message handled (``command`` names it; an old-style tick has none)."""
        self.processed += 1
        self._processed.add(now)
        self._times.append(duration)
        if command is not None:
            # Inlined Durations.observe: this runs once per live message.
            totals = self.totals.commands.get(command) or self.totals.command(command)
            durations = totals.durations
            durations.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
            durations.sum += duration
            totals.outcomes[SUCCESS] += 1

    def failed_attempt(self, command: str, duration: float, error: BaseException) -> None:
        """A live attempt at ``command`` failed (its duration and its error's type)."""
        totals = self.totals.command(command)
        totals.durations.observe(duration)
        name = outcome(error)
        totals.outcomes[name] = totals.outcomes.get(name, 0) + 1

    def failure(self, now: float, error: str, *, timeout: bool = False) -> None:
        self.failed += 1
        self.timeouts += timeout
        self.last_error = error
        self._errors.add(now)

    def retry(self, command: str) -> None:
        self.retried += 1
        self.totals.command(command).retries += 1

    def dead_letter(self, now: float, command: str) -> None:
        self.dead_lettered += 1
        self.last_dead_letter_at = now
        self.totals.command(command).dead_lettered += 1

    def replay(self) -> None:
        self.replayed += 1
        self.totals.replayed += 1

    def periodic_run(self, duration: float, error: BaseException | None) -> None:
        """A periodic run (or an old-style worker's ``work()``) ended."""
        self.periodic_runs += 1
        self.periodic_failures += error is not None
        totals = self.totals
        totals.periodic_durations.observe(duration)
        name = outcome(error)
        totals.periodic[name] = totals.periodic.get(name, 0) + 1

    def periodic_skip(self) -> None:
        self.periodic_skipped += 1
        periodic = self.totals.periodic
        periodic[SKIPPED] = periodic.get(SKIPPED, 0) + 1

    def rates(self, now: float) -> tuple[float, float]:
        """(messages per second, errors per minute) over the sliding window.

        Throughput divides by the time the window covers so far, so a worker that just
        started reports its real rate. Errors are not extrapolated: one error in the
        first second is one error, not sixty a minute.
        """
        span = max(1.0, min(self.window, now - self.started_at))
        return self._processed.count(now) / span, self._errors.count(now) * 60.0 / self.window

    def snapshot(
        self, *, position: int, head: int, lag_seconds: float | None = 0.0
    ) -> WorkerMetrics:
        try:
            per_second, per_minute = self.rates(trio.current_time())
        except RuntimeError:  # outside Trio: no clock, no window
            per_second, per_minute = 0.0, 0.0
        times = sorted(self._times)
        return WorkerMetrics(
            processed=self.processed,
            failed=self.failed,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            replayed=self.replayed,
            messages_per_second=per_second,
            errors_per_minute=per_minute,
            handler_time_avg=sum(times) / len(times) if times else 0.0,
            handler_time_p50=_percentile(times, 0.50),
            handler_time_p95=_percentile(times, 0.95),
            lag=max(0, head - position),
            position=position,
            periodic_runs=self.periodic_runs,
            periodic_failures=self.periodic_failures,
            periodic_skipped=self.periodic_skipped,
            timeouts=self.timeouts,
            last_error=self.last_error,
            lag_seconds=lag_seconds,
        )
