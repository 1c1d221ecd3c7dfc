"""Testing workers: harness, fakes, fault injection, timing assertions, throughput.

A worker's business logic is tested in a few lines, deterministically, with no
database server, HTTP service or real time::

    async def test_greets(autojump_clock):
        async with worker_harness(worker, commands=[SendGreeting, GreetingSent]) as h:
            await h.send(SendGreeting("Ada"))
            assert h.emitted == [GreetingSent("Ada", "Hello, Ada!")]

Hypothesis strategies live in :mod:`petrock_trio.testing.strategies`; the pytest
plugin (fixtures ``petrock_harness``, ``petrock_database``, ``fake_service``) is
registered automatically when petrock_trio is installed.
"""

from __future__ import annotations

from ._fakes import FakeCall as FakeCall
from ._fakes import FakeService as FakeService
from ._fakes import FakeServiceError as FakeServiceError
from ._faults import FaultyStore as FaultyStore
from ._harness import HandlerCall as HandlerCall
from ._harness import WorkerHarness as WorkerHarness
from ._harness import worker_harness as worker_harness
from ._running import memory_database as memory_database
from ._running import serving as serving
from ._running import wait_until as wait_until
from ._throughput import Throughput as Throughput
from ._throughput import assert_throughput as assert_throughput
from ._throughput import measure_throughput as measure_throughput
from ._timing import assert_delays as assert_delays
from ._timing import assert_times as assert_times

__all__ = [
    "FakeCall",
    "FakeService",
    "FakeServiceError",
    "FaultyStore",
    "HandlerCall",
    "Throughput",
    "WorkerHarness",
    "assert_delays",
    "assert_throughput",
    "assert_times",
    "measure_throughput",
    "memory_database",
    "serving",
    "wait_until",
    "worker_harness",
]
