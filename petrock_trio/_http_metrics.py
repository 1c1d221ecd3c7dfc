"""The Prometheus metrics of the HTTP API's ``/metrics``: a collector over ``app.inspect()``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ._app import App
from ._health import Health

__all__ = ["AppCollector"]


class AppCollector:
    """Prometheus metrics built from ``app.inspect()`` at each scrape."""

    _COUNTERS: Final = {
        "processed": "Messages handled live",
        "failed": "Failed handler or periodic runs",
        "retried": "Retries scheduled",
        "dead_lettered": "Messages given up on",
        "replayed": "Messages replayed at start-up",
        "timeouts": "Handler or periodic runs that timed out",
        "periodic_runs": "Periodic work runs",
        "periodic_failures": "Periodic work runs that failed",
        "periodic_skipped": "Periodic work runs skipped while a service was unavailable",
    }
    _GAUGES: Final = {
        "messages_per_second": "Live messages handled per second (sliding window)",
        "errors_per_minute": "Errors per minute (sliding window)",
        "lag": "Messages between the worker's position and the log head",
        "position": "Id of the last message the worker is done with",
    }

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        report = self.app.inspect()
        yield _gauge("petrock_up", "1 while the app is serving", 1.0 if report["running"] else 0.0)
        yield _gauge("petrock_log_head", "Id of the last committed message", report["head"] or 0)
        projection = report["projection"]
        yield _gauge(
            "petrock_projection_position",
            "Id of the last message applied to state",
            projection["position"],
        )
        errors = CounterMetricFamily("petrock_projection_errors", "Apply functions that raised")
        errors.add_metric([], projection["errors"])
        yield errors
        yield _health_family("petrock_health", "1 for the app's current health status", [], report)

        workers: dict[str, Any] = report["workers"]
        counters = {
            key: CounterMetricFamily(f"petrock_worker_{key}", text, labels=["worker"])
            for key, text in self._COUNTERS.items()
        }
        gauges = {
            key: GaugeMetricFamily(f"petrock_worker_{key}", text, labels=["worker"])
            for key, text in self._GAUGES.items()
        }
        average = GaugeMetricFamily(
            "petrock_worker_handler_time_avg_seconds",
            "Mean handler time over recent runs",
            labels=["worker"],
        )
        quantiles = GaugeMetricFamily(
            "petrock_worker_handler_time_seconds",
            "Handler time quantiles over recent runs",
            labels=["worker", "quantile"],
        )
        health = GaugeMetricFamily(
            "petrock_worker_health",
            "1 for the worker's current health status",
            labels=["worker", "status"],
        )
        for name, info in workers.items():
            metrics = info["metrics"]
            for key, family in counters.items():
                family.add_metric([name], metrics[key])
            for key, gauge in gauges.items():
                gauge.add_metric([name], metrics[key])
            average.add_metric([name], metrics["handler_time_avg"])
            quantiles.add_metric([name, "0.5"], metrics["handler_time_p50"])
            quantiles.add_metric([name, "0.95"], metrics["handler_time_p95"])
            for status in Health:
                current = info["health"]["status"] == status.value
                health.add_metric([name, status.value], 1.0 if current else 0.0)
        yield from counters.values()
        yield from gauges.values()
        yield average
        yield quantiles
        yield health
        leases = report.get("leases")
        if leases is not None:
            # With several processes, which of them runs each worker: 1 here, 0 elsewhere.
            held = GaugeMetricFamily(
                "petrock_worker_lease_held",
                "1 while this process holds the worker's lease (runs it)",
                labels=["worker"],
            )
            for name in workers:
                held.add_metric([name], 1.0 if name in leases["held"] else 0.0)
            yield held


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _health_family(
    name: str, text: str, labels: list[str], report: Mapping[str, Any]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[*labels, "status"])
    for status in Health:
        current = report["health"]["status"] == status.value
        family.add_metric([status.value], 1.0 if current else 0.0)
    return family
