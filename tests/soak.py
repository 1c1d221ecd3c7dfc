"""Load and soak: 100 workers, sustained appends, periodic work, then shutdown under load.

Run it:  python -m tests.soak [SECONDS]   (or `just soak`; a 5-second run is in the suite)

Samples once a second: resident memory, the number of Trio tasks, the largest lag.
Then stops the app gracefully while appends are still coming, serves it again, and
checks that nothing was lost or duplicated: every accepted command is in the log,
every echo worker emitted exactly one echo per message it routes, and every counting
worker's state equals the number of messages it routes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, Echoed, Note

WORKERS = 100
ECHOERS = 10
RATE = 20.0  # adds and notes per second, each
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@attrs.define
class Count:
    seen: int = 0


def rss_mib() -> float:
    with Path("/proc/self/statm").open() as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


def task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def build(database: str) -> pt.App:
    """Ten echo workers emit one Echoed per Add; 45 count echoes; 45 count notes."""
    app = pt.App(database=database, shutdown_grace=5.0)
    for cls in (Add, Echoed, Note):
        app.register_command(cls)
    for n in range(WORKERS):
        worker: pt.PatternWorker[Count] = pt.PatternWorker(f"w{n:03}", state=Count())
        if n < ECHOERS:
            worker.on_command("test/add", _echo)
        elif n % 2:
            worker.on_command("test/echoed", _count)
        else:
            worker.on_command("test/note", _count)
        if n % 25 == 0:
            worker.set_periodic_work(_tick, interval=0.5)
        app.register_worker(worker)
    return app


async def _echo(ctx: pt.HandlerContext, cmd: Add, state: Count) -> None:
    state.seen += 1
    ctx.emit(Echoed(ctx.message.id, ctx.worker_name))


async def _count(ctx: pt.HandlerContext, cmd: Any, state: Count) -> None:
    state.seen += 1


async def _tick(ctx: pt.PeriodicContext, state: Count) -> None:
    await trio.lowlevel.checkpoint()


@attrs.define
class SoakReport:
    seconds: float = 0.0
    accepted: int = 0
    samples: list[tuple[float, float, int, int]] = attrs.Factory(list)  # t, rss, tasks, lag
    failures: list[str] = attrs.Factory(list)

    def __str__(self) -> str:
        first, last = self.samples[0], self.samples[-1]
        max_lag = max(s[3] for s in self.samples)
        verdict = (
            "nothing lost or duplicated" if not self.failures else f"{len(self.failures)} FAILED"
        )
        return (
            f"{WORKERS} workers, {self.seconds:.0f} s: {self.accepted} commands accepted "
            f"({self.accepted / self.seconds:,.0f}/s), max lag {max_lag}, RSS {first[1]:.1f} -> "
            f"{last[1]:.1f} MiB, tasks {first[2]} -> {last[2]}: {verdict}"
        )


async def soak(database: str, seconds: float) -> SoakReport:
    report = SoakReport(seconds=seconds)
    app = build(database)
    accepted: list[int] = []

    async def append_forever(make: Any) -> None:
        next_at = trio.current_time()
        while True:
            try:
                message = await app.execute(make())
            except pt.NotRunning:
                return
            accepted.append(message.id)
            next_at += 1 / RATE
            await trio.sleep_until(next_at)

    async with serving(app):
        start = trio.current_time()
        async with trio.open_nursery() as load:
            load.start_soon(append_forever, lambda: Add("soak"))
            load.start_soon(append_forever, lambda: Note("soak"))
            while trio.current_time() - start < seconds:
                await trio.sleep(1.0)
                lag = max(w.metrics().lag for w in app.workers.values())
                report.samples.append((trio.current_time() - start, rss_mib(), task_count(), lag))
            app.stop()  # graceful shutdown while the appenders are still going
    report.accepted = len(accepted)
    await _verify(report, database, accepted)
    return report


async def _verify(report: SoakReport, database: str, accepted: list[int]) -> None:
    app = build(database)
    async with serving(app):
        await app.caught_up()
        async with pt.open_log(database, commands=[Add, Echoed, Note]) as log:
            messages = await log.read_after(0, 10_000_000)
        counts = Counter(m.name for m in messages)
        ids = {m.id for m in messages}
        missing = set(accepted) - ids
        if missing:
            report.failures.append(f"{len(missing)} accepted commands are not in the log")
        echoes = Counter(
            (m.command.key, m.command.source_id) for m in messages if m.name == "test/echoed"
        )
        if any(count != 1 for count in echoes.values()):
            report.failures.append("an add was echoed twice by the same worker")
        if len(echoes) != ECHOERS * counts["test/add"]:
            report.failures.append(f"{len(echoes)} echoes for {counts['test/add']} adds")
        routed = {"test/add": counts["test/add"], "test/echoed": counts["test/echoed"]}
        routed["test/note"] = counts["test/note"]
        for worker in app.workers.values():
            assert isinstance(worker, pt.PatternWorker)
            (name,) = worker.routes
            if worker.state.seen != routed[name]:
                report.failures.append(
                    f"{worker.name} counted {worker.state.seen} of {routed[name]} {name}"
                )


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as directory:
        report = trio.run(soak, str(Path(directory) / "soak.db"), seconds)
    print(report)
    for t, rss, tasks, lag in report.samples[:: max(1, len(report.samples) // 10)]:
        print(f"  t={t:6.1f}s rss={rss:7.1f} MiB tasks={tasks} lag={lag}")
    for failure in report.failures:
        print(f"  FAILED: {failure}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
