"""``GET /metrics``: prometheus_client's types built from the engine's counters.

Names, labels and values after known runs in virtual time, a registry of the
application's own, OpenMetrics on request, circuits in ``inspect``, and Prometheus's
own linter (promtool) on what a real server serves.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_parse,
)
from prometheus_client.parser import text_string_to_metric_families

import petrock_trio as pt
from petrock_trio._cli import main as cli
from petrock_trio._http_metrics import FAMILIES, family_names
from petrock_trio._partition import stable_hash
from petrock_trio._totals import DURATION_BUCKETS
from petrock_trio.testing import serving
from tests.support import Add, make_app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "workers.md"
EPOCH = 1_000_000.0  # wall time at Trio time zero: small enough for exact differences


@pt.command("metrics-test/sleep")
@attrs.frozen
class Sleep:
    seconds: float
    fail: bool = False


@pt.command("metrics-test/other")
@attrs.frozen
class Other:
    n: int = 0


def openmetrics_families(text: str) -> list[Metric]:
    """prometheus_client's strict OpenMetrics parser (untyped there)."""
    return list(openmetrics_parse(text))  # type: ignore[no-untyped-call]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(asgi: Any, accept: str | None = None) -> httpx.Response:
    """``GET /metrics`` in process, so virtual time stays virtual."""
    headers = {"Accept": accept} if accept is not None else {}
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    return response


def sleeper(
    name: str = "timed", *, retry: pt.Backoff | None = None, services: tuple[Any, ...] = ()
) -> pt.PatternWorker[None]:
    """Sleeps as told; fails when told; times out past 4 s; also routes Other."""
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        name, retry=retry or pt.Backoff(max_attempts=2, initial=1.0), services=services
    )

    @worker.on_command("metrics-test/sleep", timeout=4.0)
    async def on_sleep(ctx: pt.HandlerContext, cmd: Sleep, state: None) -> None:
        await trio.sleep(cmd.seconds)
        if cmd.fail:
            raise ValueError("told to fail")

    @worker.on_command("metrics-test/other")
    async def on_other(ctx: pt.HandlerContext, cmd: Other, state: None) -> None:
        pass

    return worker


def sleeper_app(*workers: pt.PatternWorker[None], **options: Any) -> pt.App:
    app = pt.App(hooks=[], clock=pt.TrioWallClock(EPOCH), **options)
    app.register_command(Sleep)
    app.register_command(Other)
    for worker in workers or (sleeper(),):
        app.register_worker(worker)
    return app


class TestHandlerSeries:
    """Handler durations are a histogram in seconds; attempts are counted by outcome."""

    async def test_buckets_and_counts_after_a_known_run(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = sleeper_app()
        asgi = pt.http_app(app)
        async with serving(app):
            # Four successes (0, 3 ms, 200 ms, 700 ms), one message failing twice at
            # once, one timing out twice at its 4 s timeout: eight attempts in all.
            for seconds in (0.0, 0.003, 0.2, 0.7):
                await app.execute(Sleep(seconds))
            await app.execute(Sleep(0.0, fail=True))
            await app.execute(Sleep(7.0))
            await app.caught_up()
            samples = parse((await scrape(asgi)).text)
        labels = {"worker": "timed", "command": "metrics-test/sleep"}
        buckets = [
            value(samples, "petrock_handler_duration_seconds_bucket", **labels, le=le)
            for le in [*map(repr, DURATION_BUCKETS), "+Inf"]
        ]
        # le:        .0005 .001 .0025 .005 .01 .025 .05 .1 .25 .5  1  2.5  5  10  30 +Inf
        assert buckets == [3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 6, 6, 8, 8, 8, 8]
        assert value(samples, "petrock_handler_duration_seconds_count", **labels) == 8
        total = value(samples, "petrock_handler_duration_seconds_sum", **labels)
        assert total == pytest.approx(0.003 + 0.2 + 0.7 + 2 * 4.0)
        attempts = {
            dict(key)["outcome"]: n
            for (name, key), n in samples.items()
            if name == "petrock_handler_attempts_total"
            and dict(key)["command"] == labels["command"]
        }
        assert attempts == {"success": 4, "ValueError": 2, "HandlerTimeout": 2}
        assert value(samples, "petrock_handler_retries_total", **labels) == 2
        assert value(samples, "petrock_dead_letters_total", **labels) == 2
        assert value(samples, "petrock_dead_letters_outstanding", worker="timed") == 2
        # A route that has handled nothing shows at zero from the start.
        other = {"worker": "timed", "command": "metrics-test/other"}
        assert value(samples, "petrock_handler_duration_seconds_count", **other) == 0
        assert value(samples, "petrock_handler_attempts_total", **other, outcome="success") == 0

    async def test_counters_keep_counting_across_servings(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        with pt.testing.memory_database() as database:
            app = sleeper_app(database=database)
            asgi = pt.http_app(app)
            for _ in range(2):
                async with serving(app):
                    await app.execute(Sleep(0.01))
                    await app.execute(Sleep(0.01))
                    await app.caught_up()
                    per_serving = app.workers["timed"].metrics().processed
            samples = parse((await scrape(asgi)).text)
        labels = {"worker": "timed", "command": "metrics-test/sleep"}
        assert per_serving == 2  # inspect's figures are the serving's
        assert value(samples, "petrock_handler_attempts_total", **labels, outcome="success") == 4
        assert value(samples, "petrock_handler_duration_seconds_count", **labels) == 4
        assert value(samples, "petrock_replayed_messages_total", worker="timed") == 2

    async def test_no_rates_and_no_quantile_gauges(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = sleeper_app()
        async with serving(app):
            await app.execute(Sleep(0.1))
            await app.caught_up()
            text = (await scrape(pt.http_app(app))).text
        petrock = [line for line in text.splitlines() if "petrock_" in line]
        assert petrock
        assert not [line for line in petrock if "quantile" in line or "per_" in line]


class TestLag:
    """Lag in messages and in seconds: the age of the oldest message not done."""

    async def test_lag_seconds_while_a_handler_runs(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = sleeper_app()
        worker = app.workers["timed"]
        asgi = pt.http_app(app)
        async with serving(app):
            await app.execute(Sleep(3.5))
            await trio.sleep(1)
            # More pages than the pump keeps while the worker holds the first message.
            for n in range(40):
                await app.execute(Other(n))
            await trio.sleep(2)
            metrics = worker.metrics()
            samples = parse((await scrape(asgi)).text)
            await app.caught_up()
            done = worker.metrics()
            after = parse((await scrape(asgi)).text)
        assert (metrics.position, metrics.lag) == (0, 41)
        assert metrics.lag_seconds == pytest.approx(3.0, abs=1e-6)
        assert value(samples, "petrock_worker_lag_messages", worker="timed") == 41
        assert value(samples, "petrock_worker_lag_seconds", worker="timed") == pytest.approx(
            3.0, abs=1e-6
        )
        assert (done.lag, done.lag_seconds) == (0, 0.0)
        assert value(after, "petrock_worker_lag_seconds", worker="timed") == 0

    async def test_a_message_no_page_holds_has_no_known_age(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        store = pt.testing.FaultyStore(pt.stores.open_store(":memory:"))
        app = sleeper_app(store=store)
        async with serving(app):
            await app.caught_up()
            # The pump cannot read it: appended, but in no page anyone holds.
            store.fail_reads(1000)
            await app.log.commit(app.log.new_commit(encoded=[("metrics-test/other", b"{}")]))
            await trio.sleep(1)
            metrics = app.workers["timed"].metrics()
            samples = parse((await scrape(pt.http_app(app))).text)
        assert (metrics.lag, metrics.lag_seconds) == (1, None)
        assert math.isnan(value(samples, "petrock_worker_lag_seconds", worker="timed"))


class LegacyTicker:
    """An old-style worker whose work() fails on every other tick."""

    def __init__(self) -> None:
        self.ticks = 0
        self.last_processed_id = 0

    def info(self) -> pt.WorkerInfo:
        return pt.WorkerInfo("legacy", "fails every other tick")

    async def start(self, app: pt.App) -> None:
        pass

    async def replay(self) -> None:
        pass

    async def work(self) -> None:
        self.ticks += 1
        await trio.sleep(0.2)
        if self.ticks % 2 == 0:
            raise RuntimeError("even tick")

    async def stop(self) -> None:
        pass


class TestPeriodicAndOldStyle:
    """Periodic runs by outcome, skipped included; old-style workers' ticks too."""

    async def test_periodic_runs_by_outcome(self, autojump_clock: trio.testing.MockClock) -> None:
        service = pt.ExternalService("down", failure_threshold=1, reset_timeout=100.0)
        worker = sleeper("periodic", services=(service,))
        runs: list[float] = []

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            runs.append(trio.current_time())
            await trio.sleep(0.3)
            if len(runs) == 2:
                raise KeyError("second run")

        worker.set_periodic_work(work, interval=1.0)
        app = sleeper_app(worker)
        app.register_worker(LegacyTicker(), tick=1.0)
        asgi = pt.http_app(app)

        async def fail() -> None:
            raise OSError("down")

        async with serving(app):
            await trio.sleep(2.5)  # runs at 0, 1, 2
            with pytest.raises(OSError, match="down"):
                await service.call(fail)
            await trio.sleep(2)  # skipped at 3 and 4
            samples = parse((await scrape(asgi)).text)
        periodic = {"worker": "periodic"}
        assert value(samples, "petrock_periodic_runs_total", **periodic, outcome="success") == 2
        assert value(samples, "petrock_periodic_runs_total", **periodic, outcome="KeyError") == 1
        assert value(samples, "petrock_periodic_runs_total", **periodic, outcome="skipped") == 2
        assert value(samples, "petrock_periodic_duration_seconds_count", **periodic) == 3
        assert value(samples, "petrock_periodic_duration_seconds_sum", **periodic) == (
            pytest.approx(0.9)
        )
        # A tick's work() starts 1 s after the last one ended: at 1, 2.2 and 3.4 s; the
        # second fails.
        legacy = {"worker": "legacy"}
        assert value(samples, "petrock_periodic_runs_total", **legacy, outcome="success") == 2
        assert value(samples, "petrock_periodic_runs_total", **legacy, outcome="RuntimeError") == 1
        assert value(samples, "petrock_periodic_duration_seconds_count", **legacy) == 3
        assert value(samples, "petrock_periodic_duration_seconds_sum", **legacy) == (
            pytest.approx(0.6)
        )
        assert value(samples, "petrock_worker_lag_messages", **legacy) == 0
        assert value(samples, "petrock_worker_health", **legacy, status="degraded") == 1


class TestRegistry:
    """``http_app(app, registry=...)`` serves the application's registry, app's metrics added."""

    async def test_the_applications_own_metrics_and_process_series(self) -> None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        orders = Counter("shop_orders", "Orders placed", registry=registry)
        orders.inc(3)
        app, _, _ = make_app()
        asgi = pt.http_app(app, registry=registry)
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
            samples = parse((await scrape(asgi)).text)
        assert value(samples, "shop_orders_total") == 3
        assert value(samples, "process_cpu_seconds_total") >= 0
        assert value(samples, "petrock_up") == 1
        labels = {"worker": "tally", "command": "test/add", "outcome": "success"}
        assert value(samples, "petrock_handler_attempts_total", **labels) == 1
        assert registry.get_sample_value("petrock_handler_attempts_total", labels) == 1

    def test_a_registry_takes_one_app(self) -> None:
        registry = CollectorRegistry()
        first, _, _ = make_app()
        second, _, _ = make_app()
        pt.http_app(first, registry=registry)
        for app in (first, second):
            with pytest.raises(pt.ConfigurationError, match="one app per registry"):
                pt.http_app(app, registry=registry)

    async def test_by_default_an_app_has_a_registry_with_process_series(self) -> None:
        first, _, _ = make_app()
        second, _, _ = make_app()
        pt.http_app(first)
        samples = parse((await scrape(pt.http_app(second))).text)
        assert value(samples, "process_cpu_seconds_total") >= 0
        assert value(samples, "petrock_up") == 0  # not serving


class TestNegotiation:
    """OpenMetrics when the scraper's Accept asks for it, Prometheus text otherwise."""

    async def test_openmetrics_on_request(self, autojump_clock: trio.testing.MockClock) -> None:
        app = sleeper_app()
        asgi = pt.http_app(app)
        async with serving(app):
            await app.execute(Sleep(0.02))
            await app.caught_up()
            accept = "application/openmetrics-text; version=1.0.0, text/plain;q=0.5"
            response = await scrape(asgi, accept)
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        # The strict parser: a histogram's buckets, units, counters named without _total.
        families = {f.name: f for f in openmetrics_families(response.text)}
        histogram = families["petrock_handler_duration_seconds"]
        assert (histogram.type, histogram.unit) == ("histogram", "seconds")
        assert families["petrock_handler_attempts"].type == "counter"
        assert families["petrock_worker_lag_seconds"].unit == "seconds"

    @pytest.mark.parametrize("accept", [None, "text/plain", "*/*", "application/json"])
    async def test_prometheus_text_otherwise(self, accept: str | None) -> None:
        app, _, _ = make_app()
        response = await scrape(pt.http_app(app), accept)
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in response.text


def documented_series() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics table of docs/workers.md: name -> (type, labels)."""
    row = re.compile(r"^\| `(petrock_\w+)` \| (gauge|counter|histogram) \|([^|]*)\|")
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOCS.read_text().splitlines():
        match = row.match(line)
        if match:
            labels = tuple(re.findall(r"`(\w+)`", match.group(3)))
            table[match.group(1)] = (match.group(2), labels)
    return table


class TestNames:
    """Every series is documented with its type and labels, and named with its unit."""

    def test_the_docs_table_matches_the_collector(self) -> None:
        documented = documented_series()
        exposed = {
            name: (family.kind.__name__.removesuffix("MetricFamily").lower(), family.labels)
            for name, family in zip(family_names(), FAMILIES, strict=True)
        }
        assert documented == exposed

    def test_names_say_their_unit(self) -> None:
        for name, family in zip(family_names(), FAMILIES, strict=True):
            assert name.startswith("petrock_")
            if family.unit:
                assert name.endswith(f"_{family.unit}")
            if "duration" in name or "lag_seconds" in name:
                assert family.unit == "seconds"

    async def test_a_scrape_shows_every_family_with_its_labels(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        service = pt.ExternalService("api")
        worker = sleeper(services=(service,))

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            pass

        worker.set_periodic_work(work, interval=1.0)
        # A partitioned worker too, for the per-partition series, taking snapshots.
        parts: pt.PatternWorker[None] = pt.PatternWorker(
            "parts", partitions=2, key=lambda cmd: str(cmd.seconds), snapshot_every=100
        )

        @parts.on_command("metrics-test/sleep")
        async def on_sleep(ctx: pt.HandlerContext, cmd: Sleep, state: None) -> None:
            pass

        app = sleeper_app(worker, parts, leases=True, database=":memory:")
        async with serving(app):
            await app.execute(Sleep(0.0))
            await app.caught_up()
            response = await scrape(pt.http_app(app))
        seen: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name.startswith("petrock_"):
                    seen.setdefault(family.name, set()).update(sample.labels)
        documented = documented_series()
        assert set(seen) == {n.removesuffix("_total") for n in documented}
        for name, (_, labels) in documented.items():
            expected = set(labels) | ({"le"} if documented[name][0] == "histogram" else set())
            assert seen[name.removesuffix("_total")] == expected, name


class TestCircuits:
    """Every declared service's circuit shows in inspect, /inspect, /metrics and the CLI."""

    async def test_circuit_state_in_inspect(self, autojump_clock: trio.testing.MockClock) -> None:
        service = pt.ExternalService("geo", failure_threshold=2, reset_timeout=5.0)
        app = sleeper_app(sleeper("a", services=(service,)), sleeper("b", services=(service,)))
        asgi = pt.http_app(app)

        async def fail() -> None:
            raise OSError("no route")

        async def succeed() -> None:
            pass

        async with serving(app):
            assert app.inspect()["services"]["geo"]["circuit"] == "closed"
            start = trio.current_time()
            for _ in range(2):
                with pytest.raises(OSError, match="no route"):
                    await service.call(fail)
            with pytest.raises(pt.ServiceUnavailable):
                await service.call(succeed)
            await trio.sleep(2)
            opened = app.inspect()["services"]["geo"]
            samples = parse((await scrape(asgi)).text)
            await trio.sleep(3)
            half_open = app.inspect()["services"]["geo"]["circuit"]
            await service.call(succeed)
            closed = app.inspect()["services"]["geo"]
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                served = (await c.get("/inspect")).json()["services"]["geo"]
        assert opened["circuit"] == "open"
        assert (opened["failures"], opened["consecutive_failures"], opened["opened"]) == (2, 2, 1)
        assert (opened["rejected"], opened["workers"]) == (1, ["a", "b"])
        assert opened["last_opened_ago"] == pytest.approx(2.0)
        assert datetime.fromisoformat(opened["last_opened_at"]).timestamp() == pytest.approx(
            EPOCH + start
        )
        assert value(samples, "petrock_service_circuit_state", service="geo", state="open") == 1
        assert value(samples, "petrock_service_circuit_state", service="geo", state="closed") == 0
        calls = {
            outcome: value(samples, "petrock_service_calls_total", service="geo", outcome=outcome)
            for outcome in ("success", "failure", "rejected")
        }
        assert calls == {"success": 0, "failure": 2, "rejected": 1}
        assert value(samples, "petrock_service_circuit_openings_total", service="geo") == 1
        assert half_open == "half_open"
        assert (closed["circuit"], closed["consecutive_failures"], closed["succeeded"]) == (
            "closed",
            0,
            1,
        )
        assert closed["last_opened_at"] == opened["last_opened_at"]
        assert served == {**closed, "last_opened_ago": pytest.approx(closed["last_opened_ago"])}

    def test_two_services_of_one_name_are_refused(self) -> None:
        app = sleeper_app(sleeper("a", services=(pt.ExternalService("geo"),)))
        with pytest.raises(pt.ConfigurationError, match="'geo'"):
            app.register_worker(sleeper("b", services=(pt.ExternalService("geo"),)))
        assert set(app.workers) == {"a"}

    async def test_the_command_line_shows_circuits(self) -> None:
        service = pt.ExternalService("geo", failure_threshold=1, reset_timeout=60.0)
        app = sleeper_app(sleeper(services=(service,)))

        async def fail() -> None:
            raise OSError("no route")

        async with open_server(app) as url:
            with pytest.raises(OSError, match="no route"):
                await service.call(fail)
            result = await trio.to_thread.run_sync(
                partial(CliRunner().invoke, cli, ["inspect", "--url", url])
            )
        assert result.exit_code == 0, result.output
        assert "External services (1)" in result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("│ geo ")]
        assert re.search(r"geo\s*│\s*open\s*│\s*1\s*│\s*1\s*│\s*1\s*│\s*\d+ s ago", line), line


@asynccontextmanager
async def open_server(app: pt.App, **options: Any) -> AsyncIterator[str]:
    """``app`` served with its HTTP API on a real loopback port; yields the URL."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0, **options))
            async with serving(app):
                yield url
            nursery.cancel_scope.cancel()


async def promtool(text: str) -> tuple[int, str]:
    done = await trio.run_process(
        ["promtool", "check", "metrics"],
        stdin=text.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode()


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is absent"
)
class TestPromtool:
    """Prometheus's own linter accepts what a real server serves, every family included."""

    async def test_promtool_accepts_a_served_scrape(self, tmp_path: Path) -> None:
        service = pt.ExternalService("flaky", failure_threshold=1, reset_timeout=60.0)
        worker = sleeper(services=(service,), retry=pt.Backoff(max_attempts=1))

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            pass

        worker.set_periodic_work(work, interval=0.05)
        app = sleeper_app(worker, database=str(tmp_path / "app.db"), leases=True)
        app.register_worker(LegacyTicker(), tick=0.05)

        async def fail() -> None:
            raise OSError("flaky")

        async with open_server(app) as url:
            await app.execute(Sleep(0.01))
            await app.execute(Sleep(0.0, fail=True))
            await app.caught_up()
            with pytest.raises(OSError, match="flaky"):
                await service.call(fail)
            await trio.sleep(0.3)  # periodic runs skipped, legacy ticks failing
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                response = await client.get("/metrics")
        samples = parse(response.text)
        assert value(samples, "petrock_periodic_runs_total", worker="timed", outcome="skipped") > 0
        assert value(samples, "petrock_worker_lease_held", worker="timed") == 1
        dead = {"worker": "timed", "command": "metrics-test/sleep"}
        assert value(samples, "petrock_dead_letters_total", **dead) == 1
        returncode, output = await promtool(response.text)
        assert (returncode, output) == (0, "")

    async def test_promtool_rejects_what_it_should(self) -> None:
        """The check can fail: the old exposition's quantile gauges are refused."""
        bad = (
            "# HELP petrock_worker_handler_time_seconds Handler time quantiles\n"
            "# TYPE petrock_worker_handler_time_seconds gauge\n"
            'petrock_worker_handler_time_seconds{quantile="0.5",worker="w"} 0.1\n'
        )
        returncode, output = await promtool(bad)
        assert returncode != 0
        assert "quantile" in output


class TestPartitions:
    """A partitioned worker shows one lag in seconds: its oldest message's, not a sum."""

    async def test_lag_seconds_is_the_oldest_partitions(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "split", partitions=2, key=lambda cmd: int(cmd.seconds)
        )

        @worker.on_command("metrics-test/sleep")
        async def on_sleep(ctx: pt.HandlerContext, cmd: Sleep, state: None) -> None:
            await trio.sleep(cmd.seconds)

        app = sleeper_app(worker)
        async with serving(app):
            # Two keys that land in different partitions, each holding its message.
            first = next(k for k in range(10, 20) if stable_hash(k) % 2 == 0)
            second = next(k for k in range(10, 20) if stable_hash(k) % 2 == 1)
            await app.execute(Sleep(first))
            await trio.sleep(1)
            await app.execute(Sleep(second))
            await trio.sleep(2)
            metrics = worker.metrics()
            samples = parse((await scrape(pt.http_app(app))).text)
        assert metrics.lag_seconds == pytest.approx(3.0, abs=1e-6)
        assert value(samples, "petrock_worker_lag_seconds", worker="split") == pytest.approx(
            3.0, abs=1e-6
        )

    async def test_leases_held_count_the_partitions_served_here(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        split: pt.PatternWorker[None] = pt.PatternWorker(
            "split", partitions=3, key=lambda cmd: int(cmd.seconds)
        )

        @split.on_command("metrics-test/sleep")
        async def on_sleep(ctx: pt.HandlerContext, cmd: Sleep, state: None) -> None:
            pass

        app = sleeper_app(split, sleeper(), leases=True)
        async with serving(app):
            samples = parse((await scrape(pt.http_app(app))).text)
        assert value(samples, "petrock_worker_lease_held", worker="split") == 3
        assert value(samples, "petrock_worker_lease_held", worker="timed") == 1
