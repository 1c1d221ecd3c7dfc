"""What a worker did since the process started: the totals Prometheus exposes.

Duration buckets and outcome counters per command, retries, dead letters, replays and
periodic runs by outcome. An app holds one :class:`Totals`; every run of a worker
(each serving, each lease takeover, each partition) adds to the same
:class:`WorkerTotals`, so the counters only grow while the process lives. Recording is
an increment and, for a duration, one bisect into fixed bounds: nothing allocated per
message (``_metrics.MetricsRecorder`` records into it).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Mapping
from typing import Final

import attrs

__all__ = [
    "DURATION_BUCKETS",
    "SKIPPED",
    "SUCCESS",
    "CommandCounts",
    "CommandTotals",
    "Histogram",
    "Totals",
    "WorkerCounts",
    "WorkerTotals",
    "outcome",
]

DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
"""Upper bounds (seconds) of the duration buckets: fine below a millisecond, where a
trivial handler lands, up to the 5 s default handler timeout and the 30 s periodic one
(a run cut off at its timeout falls in that bound's bucket, or the next one)."""

SUCCESS: Final = "success"
"""The outcome of an attempt or periodic run that succeeded; failures are named by
their exception's type (``HandlerTimeout`` for a timeout)."""

SKIPPED: Final = "skipped"
"""The outcome of a periodic run skipped while a declared service was unavailable."""


@attrs.frozen
class Histogram:
    """Durations counted into :data:`DURATION_BUCKETS`: ``counts`` per bucket (not
    cumulative), the last one above the largest bound; ``sum`` of all, in seconds."""

    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count at or below it) per bucket, ending with +Inf."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Durations:
    """A histogram being filled, in place."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> Histogram:
        return Histogram(tuple(self.counts), self.sum)


@attrs.frozen
class CommandCounts:
    """One worker's totals for one command: every live attempt's duration, attempts by
    outcome, retries scheduled and messages dead-lettered."""

    durations: Histogram
    outcomes: Mapping[str, int]
    retries: int
    dead_lettered: int


@attrs.frozen
class WorkerCounts:
    """One worker's totals since the process started (a snapshot of :class:`WorkerTotals`)."""

    commands: Mapping[str, CommandCounts]
    replayed: int
    periodic: Mapping[str, int]  # runs by outcome, ``skipped`` included
    periodic_durations: Histogram


class CommandTotals:
    """One worker's counters for one command, in place."""

    __slots__ = ("dead_lettered", "durations", "outcomes", "retries")

    def __init__(self) -> None:
        self.durations = Durations()
        # Seeded: a success, the common case, is one increment without a lookup miss.
        self.outcomes: dict[str, int] = {SUCCESS: 0}
        self.retries = 0
        self.dead_lettered = 0

    def snapshot(self) -> CommandCounts:
        return CommandCounts(
            self.durations.snapshot(), dict(self.outcomes), self.retries, self.dead_lettered
        )


class WorkerTotals:
    """One worker's counters since the process started, shared by all its runs."""

    __slots__ = ("commands", "periodic", "periodic_durations", "replayed")

    def __init__(self) -> None:
        self.commands: dict[str, CommandTotals] = {}
        self.replayed = 0
        self.periodic: dict[str, int] = {}
        self.periodic_durations = Durations()

    def command(self, name: str) -> CommandTotals:
        totals = self.commands.get(name)
        if totals is None:
            totals = self.commands[name] = CommandTotals()
        return totals

    def snapshot(self) -> WorkerCounts:
        return WorkerCounts(
            commands={name: c.snapshot() for name, c in self.commands.items()},
            replayed=self.replayed,
            periodic=dict(self.periodic),
            periodic_durations=self.periodic_durations.snapshot(),
        )


class Totals:
    """The totals of every worker of one app, by worker name, and the ids of the dead
    letters each has in the store (the serving's own set, handed over by it)."""

    __slots__ = ("_workers", "dead_letter_ids")

    def __init__(self) -> None:
        self._workers: dict[str, WorkerTotals] = {}
        self.dead_letter_ids: Mapping[str, Collection[int]] = {}

    def __repr__(self) -> str:
        return f"<Totals workers={sorted(self._workers)}>"

    def of(self, worker: str) -> WorkerTotals:
        totals = self._workers.get(worker)
        if totals is None:
            totals = self._workers[worker] = WorkerTotals()
        return totals

    def snapshot(self) -> dict[str, WorkerCounts]:
        return {name: totals.snapshot() for name, totals in self._workers.items()}

    def outstanding(self) -> dict[str, int]:
        """Dead letters not resolved, by worker (as of the last serving, once it ended)."""
        return {name: len(ids) for name, ids in list(self.dead_letter_ids.items())}


def outcome(error: BaseException | None) -> str:
    return SUCCESS if error is None else type(error).__name__
