"""Per-worker metrics: counters, sliding-window rates and handler-time percentiles.

Everything is measured on Trio's clock. Recording is a few attribute updates on the
hot path; percentiles are computed only when a snapshot is taken.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

__all__ = ["MetricsRecorder", "WorkerMetrics"]


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

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


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
    """Collects one worker's metrics.

    Rates count events in the last ``window`` seconds (whole seconds, on Trio's clock).
    Messages per second divide by the window, or by the time since the worker started
    while that is shorter (at least one second); errors per minute are the errors in
    the window, per minute of window. Handler-time statistics cover the last ``samples``
    handler runs.
    """

    def __init__(self, *, window: float = 60.0, samples: int = 1024) -> None:
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
        self._processed = _Window(window)
        self._errors = _Window(window)
        self._times: deque[float] = deque(maxlen=samples)

    def handled(self, now: float, duration: float) -> None:
        self.processed += 1
        self._processed.add(now)
        self._times.append(duration)

    def failure(self, now: float, error: str, *, timeout: bool = False) -> None:
        self.failed += 1
        self.timeouts += timeout
        self.last_error = error
        self._errors.add(now)

    def dead_letter(self, now: float) -> None:
        self.dead_lettered += 1
        self.last_dead_letter_at = now

    def rates(self, now: float) -> tuple[float, float]:
        """(messages per second, errors per minute) over the sliding window.

        Throughput divides by the time the window covers so far, so a worker that just
        started reports its real rate. Errors are not extrapolated: one error in the
        first second is one error, not sixty a minute.
        """
        span = max(1.0, min(self.window, now - self.started_at))
        return self._processed.count(now) / span, self._errors.count(now) * 60.0 / self.window

    def snapshot(self, *, position: int, head: int) -> WorkerMetrics:
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
        )
