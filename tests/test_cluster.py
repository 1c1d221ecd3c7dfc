"""Three processes on one PostgreSQL log, one killed with kill -9 or frozen (the long
run is `just cluster`). One trial of each kind, shared by the tests of this module."""

from __future__ import annotations

import random

import attrs
import pytest

from tests.cluster.node import EMITTING, LEASE_TTL, PARTITION_NAMES
from tests.cluster.trial import Report, fresh_log, run_trial
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres


@attrs.frozen
class Trial:
    report: Report
    freeze: bool

    @property
    def kind(self) -> str:
        return "freeze" if self.freeze else "kill -9"


@pytest.fixture(scope="module", params=[False, True], ids=["kill-9", "freeze"])
def trial(request: pytest.FixtureRequest, postgres_server: PostgresServer) -> Trial:
    freeze: bool = request.param
    report = Report()
    run_trial(fresh_log(postgres_server.url("petrock")), random.Random(2026), report, freeze=freeze)
    print(report)  # the figures, shown with -s
    return Trial(report, freeze)


def test_every_command_handled_once_per_worker_across_the_cluster(trial: Trial) -> None:
    report = trial.report
    assert report.failures == [], str(report)
    assert report.commands > 0
    # The partitioned worker echoes every Add once too.
    assert report.echoes == (len(EMITTING) + 1) * report.commands
    # Every worker's live handlings were counted; the struck node held some of them.
    figures = report.figures[trial.kind]
    assert all(f.handled == report.commands for w, f in figures.items() if w not in PARTITION_NAMES)
    assert sum(figures[p].handled for p in PARTITION_NAMES) == report.commands
    assert sum(f.failovers for f in figures.values()) > 0
    (failover,) = report.freeze_failovers if trial.freeze else report.failovers
    if trial.freeze:
        # A frozen holder keeps its connection: the others wait for its lease to expire,
        # at most one renewal interval (ttl / 5) after the freeze began.
        assert LEASE_TTL * 0.75 <= failover < LEASE_TTL * 3
    else:
        # A killed holder's connection is gone: no wait for expiry.
        assert failover < LEASE_TTL


def test_at_most_one_message_rehandled_per_worker_per_failover(trial: Trial) -> None:
    """docs/scaling.md: side effects repeat for at most one message per worker per
    failover, for the workers that emit nothing as well as the others (three per
    partition of the partitioned worker, whose commits are written behind its loop)."""
    assert trial.report.rehandling == [], str(trial.report)


def test_partitions_move_and_are_handled_once(trial: Trial) -> None:
    """The struck node's partitions of the partitioned worker go to the others."""
    moved = trial.report.partition_failovers
    assert moved, "the struck node held partitions"
    assert set(moved) <= set(PARTITION_NAMES)
    for times in moved.values():
        (failover,) = times
        if trial.freeze:
            # Its membership expires first; then the others' shares cover its partitions.
            assert failover < LEASE_TTL * 3
        else:
            # Its membership lease is free at once (connection gone): about two rounds.
            assert failover < LEASE_TTL
