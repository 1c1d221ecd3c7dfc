"""Three processes on one PostgreSQL log, one killed with kill -9 (the long run is
`just cluster`)."""

from __future__ import annotations

import random

import pytest

from tests.cluster.node import LEASE_TTL
from tests.cluster.trial import Report, fresh_log, run_trial
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("freeze", [False, True], ids=["kill-9", "freeze"])
def test_every_command_handled_once_per_worker_across_the_cluster(
    postgres_server: PostgresServer, freeze: bool
) -> None:
    report = Report()
    run_trial(fresh_log(postgres_server.url("petrock")), random.Random(2026), report, freeze=freeze)
    print(report)  # the figures, shown with -s or on failure
    assert report.failures == []
    assert report.commands > 0
    assert report.echoes == 6 * report.commands
    (failover,) = report.freeze_failovers if freeze else report.failovers
    if freeze:
        # A frozen holder keeps its connection: the others wait for its lease to expire,
        # at most one renewal interval (ttl / 5) after the freeze began.
        assert LEASE_TTL * 0.75 <= failover < LEASE_TTL * 3
    else:
        # A killed holder's connection is gone: no wait for expiry.
        assert failover < LEASE_TTL
