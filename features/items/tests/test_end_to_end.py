"""End to end on a real SQLite file with the real HTTP summariser on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

import petrock_trio as pt
from features.items import (
    CreateItem,
    HttpSummarizer,
    ItemsFeature,
    SummarizerService,
    serve_summarizer,
)
from features.items.summarizer import extractive_summary
from petrock_trio.testing import serving, wait_until

ROOT = Path(__file__).resolve().parents[3]
TEXT = (
    "Trio makes concurrency structured. Every task lives in a nursery. "
    "The weather was pleasant. Nurseries make concurrency easy to reason about."
)


async def wait_for_status(feature: ItemsFeature, name: str, status: str) -> None:
    def reached() -> bool:
        item = feature.state.get(name)
        return item is not None and item.summary_status == status

    await wait_until(reached, timeout=15)


async def test_create_to_summary_over_http(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        service = SummarizerService()
        url = await nursery.start(serve_summarizer, service)
        assert url.startswith("http://127.0.0.1:")
        feature = ItemsFeature(summarizer=HttpSummarizer(url))
        app = pt.App(database=str(tmp_path / "items.db"))
        app.register_feature(feature)
        async with serving(app):
            await app.execute(CreateItem("trio", "about trio", TEXT))
            await wait_for_status(feature, "trio", "ready")
            page = feature.state.list(query="trio")
        nursery.cancel_scope.cancel()
    assert page.total == 1
    assert page.items[0].summary == extractive_summary(TEXT)
    assert "weather" not in page.items[0].summary
    assert service.calls == 1


async def test_outage_over_http_then_recovery(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        service = SummarizerService(failing=True)
        url = await nursery.start(serve_summarizer, service)
        feature = ItemsFeature(
            summarizer=HttpSummarizer(url),
            service=pt.ExternalService("summarizer", failure_threshold=2, reset_timeout=0.2),
        )
        app = pt.App(database=str(tmp_path / "items.db"))
        app.register_feature(feature)

        def unavailable() -> bool:
            return any("unavailable" in reason for reason in app.health().reasons)

        async with serving(app):
            await app.execute(CreateItem("a", content="One sentence. Another one."))
            await wait_until(unavailable, timeout=15)
            assert app.health().status is pt.Health.DEGRADED
            service.failing = False
            await wait_for_status(feature, "a", "ready")
            # The circuit closed; the failed calls still count in the error rate for
            # a minute, so the worker stays degraded for that reason only.
            await wait_until(lambda: not unavailable(), timeout=15)
            assert all("error rate" in r for r in app.health().reasons)
        nursery.cancel_scope.cancel()
    assert service.calls >= 3  # two failures opened the circuit, a probe answered


def test_legacy_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "examples/legacy_summary_worker.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "summary: Old workers poll." in result.stdout


def test_code_reduction_is_at_least_80_percent() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/loc.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert "reduction:" in result.stdout
    assert "(target: at least 80%)" in result.stdout
