"""The eventsourcing side of bench_peer.py (imported only when the library is installed)."""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import ProcessApplication


class Counter(Aggregate):
    @event("Bumped")
    def bump(self, n: int) -> None:
        pass


class Upstream(Application[Any]):
    log_section_size = 1000  # the library's default is 10


class Downstream(ProcessApplication[Any]):
    pull_section_size = 1000  # the library's default is 10

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: Any) -> None:
        """The trivial handler: nothing to do, nothing to collect."""
