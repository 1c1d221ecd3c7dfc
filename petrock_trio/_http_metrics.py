"""The Prometheus metrics of ``/metrics``: a collector over the app's snapshots.

The only module that imports prometheus_client: the engine keeps plain counters
(``_totals``, ``_metrics``) and this collector turns them into prometheus_client's
metric families at each scrape, so that nothing is recorded twice and the engine
never depends on the exporter. Counters count from the start of the process, never
reset while it lives, and nothing here is a rate: Prometheus computes rates.

The collector reads the app on the thread that scrapes: the app's own ``/metrics``
runs on its Trio loop; a registry handed to :func:`app_registry` must be scraped
there too (through that endpoint).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ._app import App
from ._errors import ConfigurationError
from ._health import Health
from ._partition import split_name
from ._services import Circuit
from ._totals import DURATION_BUCKETS, SKIPPED, SUCCESS, CommandCounts, Histogram, WorkerCounts

__all__ = ["AppCollector", "CollectorRegistry", "app_registry", "exposition", "family_names"]

_NAN: Final = float("nan")
_INF: Final = float("inf")


@attrs.frozen
class _Family:
    """One metric family's name, type, help text, labels and unit."""

    kind: type[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]
    name: str
    doc: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    def new(self) -> Any:
        return self.kind(self.name, self.doc, labels=list(self.labels), unit=self.unit)


_G, _C, _H = GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
_W, _WC = ("worker",), ("worker", "command")

# Every series, in the order a scrape shows them (docs/workers.md has the same table).
UP: Final = _Family(_G, "petrock_up", "1 while the app is serving")
HEAD: Final = _Family(_G, "petrock_log_head", "Id of the last committed message")
PROJECTION: Final = _Family(
    _G, "petrock_projection_position", "Id of the last message applied to state"
)
PROJECTION_ERRORS: Final = _Family(_C, "petrock_projection_errors", "Apply functions that raised")
HEALTH: Final = _Family(_G, "petrock_health", "1 for the app's health status", ("status",))
WORKER_HEALTH: Final = _Family(
    _G, "petrock_worker_health", "1 for the worker's health status", ("worker", "status")
)
POSITION: Final = _Family(
    _G, "petrock_worker_position", "Id of the last message the worker is done with", _W
)
LAG: Final = _Family(
    _G,
    "petrock_worker_lag_messages",
    "Messages between the worker's position and the log head",
    _W,
    "messages",
)
LAG_SECONDS: Final = _Family(
    _G,
    "petrock_worker_lag_seconds",
    "Age of the oldest message after the worker's position (0 caught up, NaN not known)",
    _W,
    "seconds",
)
SNAPSHOT_AGE: Final = _Family(
    _G,
    "petrock_snapshot_age_seconds",
    "Age of the worker's latest snapshot, its oldest partition's (NaN before the first)",
    _W,
    "seconds",
)
OUTSTANDING: Final = _Family(
    _G, "petrock_dead_letters_outstanding", "Dead letters not resolved (in the store)", _W
)
LEASE: Final = _Family(
    _G,
    "petrock_worker_lease_held",
    "Leases of the worker this process holds: 1 or 0, or its partitions held here",
    _W,
)
_WP = ("worker", "partition")
PARTITION_POSITION: Final = _Family(
    _G, "petrock_partition_position", "A partition's position (partitioned workers)", _WP
)
PARTITION_LAG: Final = _Family(
    _G,
    "petrock_partition_lag_messages",
    "Messages between a partition's position and the log head",
    _WP,
    "messages",
)
PARTITION_HERE: Final = _Family(
    _G, "petrock_partition_running", "1 for a partition that runs in this process", _WP
)
DURATION: Final = _Family(
    _H,
    "petrock_handler_duration_seconds",
    "Live attempts' handler time, commit included, whatever their outcome",
    _WC,
    "seconds",
)
ATTEMPTS: Final = _Family(
    _C,
    "petrock_handler_attempts",
    "Live attempts by outcome: success, or the failure's exception type",
    ("worker", "command", "outcome"),
)
RETRIES: Final = _Family(
    _C, "petrock_handler_retries", "Retries scheduled (waits for a service included)", _WC
)
DEAD_LETTERS: Final = _Family(_C, "petrock_dead_letters", "Messages dead-lettered", _WC)
REPLAYED: Final = _Family(_C, "petrock_replayed_messages", "Messages replayed at start-up", _W)
PERIODIC: Final = _Family(
    _C,
    "petrock_periodic_runs",
    "Periodic runs by outcome: success, skipped, or the failure's exception type",
    ("worker", "outcome"),
)
PERIODIC_DURATION: Final = _Family(
    _H,
    "petrock_periodic_duration_seconds",
    "Periodic runs' time (an old-style worker's work() included), skipped runs excluded",
    _W,
    "seconds",
)
CIRCUIT: Final = _Family(
    _G, "petrock_service_circuit_state", "1 for the circuit's state", ("service", "state")
)
CALLS: Final = _Family(
    _C,
    "petrock_service_calls",
    "Calls through the breaker by outcome: success, failure, rejected (circuit open)",
    ("service", "outcome"),
)
OPENINGS: Final = _Family(
    _C, "petrock_service_circuit_openings", "Times the circuit opened", ("service",)
)
CONSECUTIVE: Final = _Family(
    _G,
    "petrock_service_consecutive_failures",
    "Failures since the last success",
    ("service",),
)
FAMILIES: Final = (
    UP,
    HEAD,
    PROJECTION,
    PROJECTION_ERRORS,
    HEALTH,
    WORKER_HEALTH,
    POSITION,
    LAG,
    LAG_SECONDS,
    SNAPSHOT_AGE,
    OUTSTANDING,
    LEASE,
    PARTITION_POSITION,
    PARTITION_LAG,
    PARTITION_HERE,
    DURATION,
    ATTEMPTS,
    RETRIES,
    DEAD_LETTERS,
    REPLAYED,
    PERIODIC,
    PERIODIC_DURATION,
    CIRCUIT,
    CALLS,
    OPENINGS,
    CONSECUTIVE,
)

_EMPTY: Final = Histogram((0,) * (len(DURATION_BUCKETS) + 1), 0.0)
_NOTHING: Final = WorkerCounts({}, 0, {}, _EMPTY)  # a worker that has not run here


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    # ``le`` as prometheus_client writes its own histograms' bounds: 0.005, 1.0, +Inf.
    return [("+Inf" if b == _INF else repr(b), n) for b, n in histogram.cumulative()]


class AppCollector:
    """Prometheus metrics built from the app's snapshots at each scrape: ``inspect()``
    for positions, lag, health, leases and circuits; ``app.totals`` for counters and
    histograms."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> Iterable[Metric]:
        # Names without samples: a registry refuses a second collector of the same
        # names, and registering calls no app code.
        return [family.new() for family in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        app = self.app
        report = app.inspect()
        families = {family.name: family.new() for family in FAMILIES}
        families[UP.name].add_metric([], 1.0 if report["running"] else 0.0)
        families[HEAD.name].add_metric([], report["head"] or 0)
        families[PROJECTION.name].add_metric([], report["projection"]["position"])
        families[PROJECTION_ERRORS.name].add_metric([], report["projection"]["errors"])
        _health(families[HEALTH.name], [], report["health"]["status"])
        workers: dict[str, Any] = report["workers"]
        _worker_gauges(families, workers, app.totals.outstanding(), report.get("leases"))
        counts = app.totals.snapshot()
        for name, info in workers.items():
            _worker_counts(families, name, info, counts.get(name, _NOTHING))
        _services(families, report.get("services") or {})
        if report.get("leases") is None:
            del families[LEASE.name]
        return families.values()


def _health(family: Any, labels: list[str], status: str) -> None:
    for health in Health:
        family.add_metric([*labels, health.value], 1.0 if status == health.value else 0.0)


def _worker_gauges(
    families: Mapping[str, Any],
    workers: Mapping[str, Any],
    outstanding: Mapping[str, int],
    leases: Mapping[str, Any] | None,
) -> None:
    # Leases are held by stored name: the worker's, or one per partition.
    held = Counter(split_name(stored)[0] for stored in (leases or {}).get("held", ()))
    for name, info in workers.items():
        metrics = info["metrics"]
        _health(families[WORKER_HEALTH.name], [name], info["health"]["status"])
        families[POSITION.name].add_metric([name], metrics["position"])
        families[LAG.name].add_metric([name], metrics["lag"])
        lag = metrics.get("lag_seconds")
        families[LAG_SECONDS.name].add_metric([name], _NAN if lag is None else lag)
        families[OUTSTANDING.name].add_metric([name], outstanding.get(name, 0))
        snapshot = info.get("snapshot")  # workers that take snapshots only
        if snapshot is not None:
            age = snapshot["age_seconds"]
            families[SNAPSHOT_AGE.name].add_metric([name], _NAN if age is None else age)
        if leases is not None:
            # With several processes, which of them runs each worker (or how many of its
            # partitions): 1 here, 0 elsewhere.
            families[LEASE.name].add_metric([name], held.get(name, 0))
        for part in info.get("partitions", ()):
            labels = [name, str(part["partition"])]
            families[PARTITION_POSITION.name].add_metric(labels, part["position"])
            families[PARTITION_LAG.name].add_metric(labels, part["lag"])
            # Served here when inspect has its health (the others are only known by lease).
            families[PARTITION_HERE.name].add_metric(labels, part["health"] is not None)


def _worker_counts(
    families: Mapping[str, Any], name: str, info: Mapping[str, Any], counts: WorkerCounts
) -> None:
    # Every route shows from the start, at zero: a rate needs the series before the
    # first message (and an absent series hides a worker that never handled one).
    commands: dict[str, CommandCounts | None] = dict.fromkeys(info.get("routes", ()))
    commands.update(counts.commands)
    for command, c in sorted(commands.items()):
        labels = [name, command]
        durations = c.durations if c is not None else _EMPTY
        families[DURATION.name].add_metric(labels, _buckets(durations), durations.sum)
        outcomes = c.outcomes if c is not None else {SUCCESS: 0}
        for outcome, n in sorted(outcomes.items()):
            families[ATTEMPTS.name].add_metric([*labels, outcome], n)
        families[RETRIES.name].add_metric(labels, c.retries if c is not None else 0)
        families[DEAD_LETTERS.name].add_metric(labels, c.dead_lettered if c is not None else 0)
    families[REPLAYED.name].add_metric([name], counts.replayed)
    if info.get("periodic_interval") is None and info.get("kind") != "legacy":
        return
    seeded = {SUCCESS: 0} if info.get("kind") == "legacy" else {SUCCESS: 0, SKIPPED: 0}
    for outcome, n in sorted({**seeded, **counts.periodic}.items()):
        families[PERIODIC.name].add_metric([name, outcome], n)
    durations = counts.periodic_durations
    families[PERIODIC_DURATION.name].add_metric([name], _buckets(durations), durations.sum)


def _services(families: Mapping[str, Any], services: Mapping[str, Any]) -> None:
    for name, s in sorted(services.items()):
        for circuit in Circuit:
            current = 1.0 if s["circuit"] == circuit.value else 0.0
            families[CIRCUIT.name].add_metric([name, circuit.value], current)
        calls = families[CALLS.name]
        calls.add_metric([name, "success"], s["succeeded"])
        calls.add_metric([name, "failure"], s["failures"])
        calls.add_metric([name, "rejected"], s["rejected"])
        families[OPENINGS.name].add_metric([name], s["opened"])
        families[CONSECUTIVE.name].add_metric([name], s["consecutive_failures"])


def app_registry(app: App, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """``registry`` with ``app``'s metrics added. Without one, a registry of the app's
    own, with the ``process_*``, ``python_info`` and ``python_gc_*`` series that
    prometheus_client's default registry has (none of its global state is shared).

    Raises :class:`ConfigurationError` when ``registry`` has petrock metrics already
    (another app's, or this app's from an earlier ``http_app``).
    """
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    try:
        registry.register(AppCollector(app))
    except ValueError as exc:  # prometheus_client's DuplicateTimeseries
        raise ConfigurationError(
            f"this registry has petrock metrics already ({exc}): one app per registry"
        ) from exc
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type: OpenMetrics when the scraper asks for it in
    its ``Accept`` header, else Prometheus text (prometheus_client's negotiation)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def family_names() -> Iterator[str]:
    """The names of the series this collector exposes (the docs' table is checked
    against them)."""
    for family in FAMILIES:
        yield family.name + ("_total" if family.kind is CounterMetricFamily else "")
