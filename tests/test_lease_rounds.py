"""Lease rounds of several OS processes at the same moment on one PostgreSQL log.

Every process wants every worker; leases last 2 ms, so they change hands all the
time, and each process commits positions fenced by its leases between rounds. Not
one round or commit may fail: in particular none with PostgreSQL's ``deadlock
detected``. The processes and the figures are tests/lease_rounds.py; `just
lease-rounds` runs the same for longer.
"""

from __future__ import annotations

import pytest
import trio

from tests import lease_rounds

pytest.importorskip("psycopg", reason="psycopg is not installed (the `postgres` extra)")


@pytest.mark.postgres
@pytest.mark.parametrize(("processes", "rounds"), [(2, 1200), (5, 300)])
async def test_simultaneous_lease_rounds_never_deadlock(
    postgres_url: str, processes: int, rounds: int
) -> None:
    report = await trio.to_thread.run_sync(lease_rounds.run, postgres_url, processes, rounds)
    print(report)
    assert report.tally.deadlocks == 0, str(report)
    assert report.tally.errors == []
    assert report.tally.rounds == processes * rounds
    # The rounds raced for real: leases moved often, fenced commits ran between them.
    assert report.tally.takeovers > 5 * len(lease_rounds.WORKERS)
    assert report.tally.commits > 0
