"""Old-style workers (info/start/replay/work/stop) run on a tick beside pattern workers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, make_app


class CountingLegacyWorker:
    """The old shape: the worker reads the log itself and tracks its own position."""

    def __init__(self) -> None:
        self.app: pt.App | None = None
        self.last_processed_id = 0
        self.seen: list[int] = []
        self.ticks: list[float] = []
        self.calls: list[str] = []

    def info(self) -> pt.WorkerInfo:
        return pt.WorkerInfo("legacy-counter", "counts adds the old way")

    async def start(self, app: pt.App) -> None:
        self.calls.append("start")
        self.app = app

    async def replay(self) -> None:
        self.calls.append("replay")

    async def work(self) -> None:
        assert self.app is not None
        self.ticks.append(trio.current_time())
        for message in await self.app.log.read_after(self.last_processed_id):
            if message.name == "test/add":
                self.seen.append(message.id)
            self.last_processed_id = message.id

    async def stop(self) -> None:
        self.calls.append("stop")


class TestLegacyWorkers:
    """The engine calls start, replay, then work every tick, and stop at shutdown."""

    async def test_runs_beside_pattern_workers(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, calls = make_app()
        legacy = CountingLegacyWorker()
        app.register_worker(legacy, tick=0.5)
        async with serving(app):
            start = trio.current_time()
            await app.execute(Add("a"))
            await trio.sleep(1.6)
            report = app.inspect()
        assert legacy.calls == ["start", "replay", "stop"]
        assert [t - start for t in legacy.ticks] == [0.5, 1.0, 1.5]
        assert legacy.seen == [1]
        assert calls.live == [("a", 1)]
        assert report["workers"]["legacy-counter"]["kind"] == "legacy"
        assert report["workers"]["legacy-counter"]["position"] == 2
        assert report["workers"]["legacy-counter"]["metrics"]["periodic_runs"] == 3

    async def test_failing_work_is_counted_not_fatal(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        class Broken(CountingLegacyWorker):
            async def work(self) -> None:
                self.ticks.append(trio.current_time())
                raise RuntimeError("boom")

        app, _, _ = make_app()
        broken = Broken()
        app.register_worker(broken, tick=1.0)
        async with serving(app):
            await trio.sleep(3.5)
            health = app.workers["legacy-counter"].health()
            metrics = app.workers["legacy-counter"].metrics()
        assert len(broken.ticks) == 3
        assert metrics.periodic_failures == 3
        assert health.status is pt.Health.DEGRADED

    def test_rejects_other_objects(self) -> None:
        app = pt.App()
        with pytest.raises(pt.ConfigurationError, match="neither"):
            app.register_worker(object())  # type: ignore[arg-type]
