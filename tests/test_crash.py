"""A short run of the kill -9 trials (the long one is `just crash`)."""

from __future__ import annotations

from pathlib import Path

from tests.crash.trials import run_trials


def test_kill_9_trials_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    report = run_trials(6, seed=20261128, directory=str(tmp_path))
    print(report)  # the figures, shown with -s or on failure
    assert report.failures == []
    assert report.kills == 6
    assert report.accepted > 0
    assert report.checks > report.accepted
    assert report.from_snapshot > 0  # restarts replayed from a snapshot, and checked
