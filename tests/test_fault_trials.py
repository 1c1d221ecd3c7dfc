"""The fault trials in short (the long run is `just faults`): nothing acknowledged is
lost, health shows each fault, and the app recovers from the ones it can."""

from __future__ import annotations

import pytest
import trio

from tests.faults.trial import Row, run

pytestmark = pytest.mark.slow  # real time: a served app and HTTP clients for seconds

SECONDS = 2.0
THRESHOLDS = {"store_degraded_after": 0.5, "store_unhealthy_after": 1.5}


def trial(name: str) -> Row:
    (row,) = trio.run(lambda: run([name], SECONDS, **THRESHOLDS))
    print(row.line())  # the figures, shown with -s or on failure
    if row.skipped is not None:
        pytest.skip(row.skipped)
    assert row.tried > 0
    assert row.lost == 0
    return row


def test_lock_held() -> None:
    row = trial("lock-held")
    assert "degraded" in row.health or "unhealthy" in row.health
    assert row.recovery is not None


def test_file_deleted() -> None:
    row = trial("file-deleted")
    assert "unhealthy" in row.health


def test_corrupt_rows() -> None:
    row = trial("corrupt-rows")
    assert row.recovery is not None


def test_disk_full() -> None:
    row = trial("disk-full")
    assert "degraded" in row.health or "unhealthy" in row.health
    assert row.recovery is not None


@pytest.mark.postgres
def test_postgres_stopped() -> None:
    row = trial("pg-stopped")
    assert "degraded" in row.health or "unhealthy" in row.health
    assert row.recovery is not None
