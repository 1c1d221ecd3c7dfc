"""What a worker's declaration shows of its runs: one run, or one per partition.

A partitioned worker is one worker to its users: its position is the lowest of its
partitions' (everything up to it is done for every key), its lag the largest, its
health the worst, its counters the sums. Partitions served by another process
(leases) are not here; :meth:`RunGroup.partitions` lists the ones that are.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import attrs

from ._errors import NotRunning
from ._health import Health, HealthReport
from ._metrics import MetricsRecorder, WorkerMetrics

__all__ = ["RunGroup", "RunView", "Shown", "WorkerStatistics"]

S = TypeVar("S")


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


class RunView(Protocol):
    """What the declaration shows of one run (see ``_run.WorkerRun``)."""

    state: Any
    partition: int

    @property
    def position(self) -> int: ...

    def metrics(self) -> WorkerMetrics: ...

    def statistics(self) -> WorkerStatistics: ...

    def health(self) -> HealthReport: ...

    def replay_progress(self) -> tuple[int, int]: ...

    def describe(self) -> dict[str, Any]: ...

    async def run_periodic_now(self) -> None: ...

    async def redrive(self, message_id: int, ticket: Any = None) -> None: ...

    async def owner_of(self, message_id: int) -> int: ...

    async def snapshot_now(self) -> dict[str, Any]: ...


# Merging partitions' metrics: the lowest position, the largest lag and handler
# times (the slowest partition is what an operator looks for), the sum of the rest.
_LOWEST = frozenset({"position"})
_LARGEST = frozenset(
    {"lag", "lag_seconds", "handler_time_avg", "handler_time_p50", "handler_time_p95"}
)


def merge_metrics(snapshots: list[WorkerMetrics]) -> WorkerMetrics:
    if len(snapshots) == 1:
        return snapshots[0]
    merged: dict[str, Any] = {}
    for field in attrs.fields(WorkerMetrics):
        values = [getattr(s, field.name) for s in snapshots]
        if field.name in _LOWEST:
            merged[field.name] = min(values)
        elif field.name in _LARGEST:
            # A lag in seconds no page holds (None) leaves the known ones to decide.
            known = [v for v in values if v is not None]
            merged[field.name] = max(known) if known else None
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            merged[field.name] = sum(values)
        else:
            merged[field.name] = next((v for v in values if v is not None), values[0])
    return WorkerMetrics(**merged)


def _partitions(indexes: list[int]) -> str:
    if len(indexes) == 1:
        return f"partition {indexes[0]}"
    return f"partitions {', '.join(map(str, indexes))}"


class RunGroup:
    """The runs of one worker in this process, by partition."""

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.count = partitions
        self.runs: dict[int, RunView] = {}

    def __repr__(self) -> str:
        return f"<RunGroup {self.name!r} partitions={sorted(self.runs)}/{self.count}>"

    def attach(self, run: RunView) -> None:
        self.runs[run.partition] = run

    def detach(self, run: RunView) -> None:
        if self.runs.get(run.partition) is run:
            del self.runs[run.partition]

    def _sorted(self) -> list[RunView]:
        return [self.runs[i] for i in sorted(self.runs)]

    @property
    def state(self) -> Any:
        """The state of an unpartitioned worker; the states by partition otherwise."""
        if self.count == 1:
            run = self.runs.get(0)
            return None if run is None else run.state
        return {i: run.state for i, run in sorted(self.runs.items())}

    @property
    def position(self) -> int:
        return min((run.position for run in self.runs.values()), default=0)

    def metrics(self) -> WorkerMetrics:
        runs = self._sorted()
        if not runs:
            return MetricsRecorder().snapshot(position=0, head=0)
        return merge_metrics([run.metrics() for run in runs])

    def statistics(self) -> WorkerStatistics:
        stats = [run.statistics() for run in self._sorted()]
        if not stats:
            return WorkerStatistics(False, False, 0, 0, None, 0, 0, 0)  # noqa: FBT003
        if len(stats) == 1:
            return stats[0]
        retrying = [s for s in stats if s.retrying_message is not None]
        return WorkerStatistics(
            running=any(s.running for s in stats),
            live=all(s.live for s in stats),
            position=min(s.position for s in stats),
            in_flight=sum(s.in_flight for s in stats),
            retrying_message=retrying[0].retrying_message if retrying else None,
            retry_attempt=max((s.retry_attempt for s in retrying), default=0),
            detaches=sum(s.detaches for s in stats),
            crashes=sum(s.crashes for s in stats),
        )

    def health(self) -> HealthReport:
        runs = self._sorted()
        if not runs:
            return HealthReport(Health.HEALTHY)
        if self.count == 1:
            return runs[0].health()
        reports = [(run.partition, run.health()) for run in runs]
        status = max((r.status for _, r in reports), key=lambda s: s.rank)
        # One line per reason, naming the partitions that have it: an open circuit
        # degrades every partition, and sixteen lines that say so help nobody.
        by_reason: dict[str, list[int]] = {}
        for partition, report in reports:
            if report.status is status:
                for reason in report.reasons:
                    by_reason.setdefault(reason, []).append(partition)
        return HealthReport(
            status, tuple(f"{_partitions(ps)}: {reason}" for reason, ps in by_reason.items())
        )

    def replay_progress(self) -> tuple[int, int]:
        progress = [run.replay_progress() for run in self._sorted()]
        if not progress:
            return 0, 0
        return min(p[0] for p in progress), max(p[1] for p in progress)

    def partitions(self) -> list[dict[str, Any]]:
        """Per partition served here: position, lag, health, what it is doing."""
        return [run.describe() for run in self._sorted()]

    async def run_periodic_now(self) -> None:
        """Run the periodic work of every partition served here, one after another."""
        runs = self._sorted()
        if not runs:
            raise NotRunning(f"worker {self.name!r} is not running")
        for run in runs:
            await run.run_periodic_now()

    async def redrive(self, message_id: int, ticket: Any = None) -> None:
        """Re-drive ``message_id`` on the partition its key belongs to (``ticket``, a
        ``RedriveTicket``, follows it)."""
        runs = self._sorted()
        if not runs:
            raise NotRunning(f"worker {self.name!r} is not running")
        owner = await runs[0].owner_of(message_id)
        run = self.runs.get(owner)
        if run is None:
            raise NotRunning(
                f"partition {owner} of worker {self.name!r} is served by another process"
            )
        await run.redrive(message_id, ticket)

    async def snapshot_now(self) -> list[dict[str, Any]]:
        runs = self._sorted()
        if not runs:
            raise NotRunning(f"worker {self.name!r} is not running")
        return [await run.snapshot_now() for run in runs]


class Shown(Generic[S]):
    """What a worker's declaration shows of its current runs (a base of PatternWorker:
    the declaration itself stays about routes and options)."""

    name: str
    partitions: int
    periodic: object | None
    _state: S
    _current: RunGroup

    def attach(self, run: RunView) -> None:
        """Show ``run`` as (a partition of) this worker's current run (called by the run)."""
        self._current.attach(run)
        if self.partitions == 1:
            self._state = run.state

    def detach(self, run: RunView) -> None:
        self._current.detach(run)

    @property
    def state(self) -> S:
        """The current run's state (between runs, the last run's); for a partitioned
        worker, the states of the partitions served here, by partition."""
        if self.partitions == 1 and not self._current.runs:
            return self._state
        state: S = self._current.state
        return state

    def partition_states(self) -> dict[int, S]:
        """The state of each partition served here (``{0: state}`` when unpartitioned)."""
        if self.partitions == 1:
            return {0: self.state}
        return {i: run.state for i, run in sorted(self._current.runs.items())}

    @property
    def position(self) -> int:
        return self._current.position

    def metrics(self) -> WorkerMetrics:
        return self._current.metrics()

    def statistics(self) -> WorkerStatistics:
        return self._current.statistics()

    def health(self) -> HealthReport:
        return self._current.health()

    def replay_progress(self) -> tuple[int, int]:
        """(replayed up to, the position replay goes to) of the current run."""
        return self._current.replay_progress()

    def partition_details(self) -> list[dict[str, Any]]:
        """Each partition served here: position, lag, health."""
        return self._current.partitions()

    async def run_periodic_now(self) -> None:
        """Run the periodic work once, now, as the engine would (tests, operators)."""
        if self.periodic is None:
            raise NotRunning(f"worker {self.name!r} has no periodic work")
        await self._current.run_periodic_now()

    async def redrive(self, message_id: int, ticket: Any = None) -> None:
        """Handle a dead-lettered message again, live; returns when it is done.

        ``ticket`` (a ``RedriveTicket``) is told when it starts running; see
        ``App.start_redrive``, which returns at once."""
        await self._current.redrive(message_id, ticket)

    async def snapshot_now(self) -> list[dict[str, Any]]:
        """Save the state of each partition served here now, after the message it is
        handling (a message waiting to retry: once it is done); each snapshot as
        inspect shows it. Raises :class:`NotRunning` when no partition runs here."""
        return await self._current.snapshot_now()
