"""The pytest plugin (registered through the ``pytest11`` entry point): fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._fakes import FakeService
from ._harness import worker_harness
from ._running import memory_database


@pytest.fixture
def petrock_database() -> Iterator[str]:
    """A URL of an in-memory database that outlives app restarts within the test."""
    with memory_database() as url:
        yield url


@pytest.fixture
def petrock_harness() -> Callable[..., Any]:
    """``petrock_trio.testing.worker_harness``: ``async with petrock_harness(worker, ...) as h``."""
    return worker_harness


@pytest.fixture
def fake_service() -> Callable[..., FakeService]:
    """Builds :class:`FakeService` instances: ``fake_service(respond, latency=...)``."""
    return FakeService
