"""A short load and soak run (the long one is `just soak`)."""

from __future__ import annotations

from pathlib import Path

import structlog

from tests.soak import soak


async def test_short_soak(tmp_path: Path) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    report = await soak(str(tmp_path / "soak.db"), seconds=5)
    print(report)
    assert report.failures == []
    assert report.accepted > 50
    tasks = [tasks for _, _, tasks, _ in report.samples]
    assert tasks[0] == tasks[-1]  # no task leaks under load
    assert max(lag for _, _, _, lag in report.samples) < 1000
