"""Throughput of a worker over a real SQLite log, for benchmarks and floor checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from .._app import App, Feature
from .._commands import command_name
from .._open import open_log
from .._worker import PatternWorker
from ._running import serving

__all__ = ["Throughput", "assert_throughput", "measure_throughput"]


@attrs.frozen
class Throughput:
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return f"{self.messages} messages in {self.seconds:.3f} s: {self.per_second:,.0f} msg/s"


async def measure_throughput(
    worker_factory: Callable[[], PatternWorker[Any]],
    commands: Sequence[object],
    *,
    count: int,
    directory: str | Path,
    batch: int = 1000,
    feature: Feature | None = None,
) -> Throughput:
    """Fill a fresh SQLite log with ``count`` commands (cycling through ``commands``),
    then time a new app whose only worker comes from ``worker_factory`` until it has
    handled them all live (and what they emitted).

    A ``feature`` registers the commands instead, with their state and apply functions,
    so that what the worker emits passes its ``validate`` (if the feature registers the
    worker too, the factory's worker must be that one).

    Run it on the real clock (not under MockClock): the figure is wall time measured by
    Trio's clock, start-up included.
    """
    database = str(Path(directory) / f"throughput-{count}.db")
    classes = {command_name(c): type(c) for c in commands}
    async with open_log(database, commands=classes.values()) as log:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            await log.append(*(commands[(start + i) % len(commands)] for i in range(size)))
    app = App(database=database)
    if feature is not None:
        feature.register(app)
    else:
        for cls in classes.values():
            app.register_command(cls)
    worker = worker_factory()
    if worker.name not in app.workers:
        app.register_worker(worker)
    started = trio.current_time()
    async with serving(app):
        await app.caught_up()
        seconds = trio.current_time() - started
    return Throughput(count, seconds)


def assert_throughput(result: Throughput, minimum: float = 100.0) -> None:
    """Fail unless ``result`` reaches ``minimum`` messages per second (the floor every
    worker must beat is 100)."""
    if result.per_second < minimum:
        raise AssertionError(f"throughput {result} is below the minimum of {minimum:,.0f} msg/s")
