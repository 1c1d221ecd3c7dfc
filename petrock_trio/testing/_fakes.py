"""Fakes for external services: scripted failures, latency, outages and flaky rates."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .._errors import ConfigurationError

__all__ = ["FakeCall", "FakeService", "FakeServiceError"]


class FakeServiceError(Exception):
    """What a :class:`FakeService` raises when it is scripted to fail."""


@attrs.frozen
class FakeCall:
    """One call of a :class:`FakeService`: when (``at``, Trio time), with what, and how
    it ended (``outcome``: ``"ok"``, ``"error"``, or ``"hang"`` for a call that never
    returned)."""

    at: float
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outcome: str


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


class FakeService:
    """A stand-in for an external dependency, driven by Trio's clock.

    ``respond(*args, **kwargs)`` computes the answer (sync or async), after a fixed
    ``latency``. Failures are scripted, and each call is recorded in ``calls``:

    - availability: ``down()`` (every call fails), ``outage(seconds)`` (every call
      fails for that long, on Trio's clock) and ``hang()`` (calls never return:
      timeouts must cut them off). The latest of the three wins, so an outage after
      ``down()`` ends when the outage does; ``up()`` ends any of them.
    - per call: ``fail_next(n)`` fails the next ``n`` calls, ``flaky(rate, seed)`` a
      repeatable share of them. ``up()`` clears these too: after it every call answers.
    """

    def __init__(
        self,
        respond: Callable[..., Any] | None = None,
        *,
        latency: float = 0.0,
        error: Callable[[], Exception] = lambda: FakeServiceError("scripted failure"),
    ) -> None:
        _require(latency >= 0, f"latency must not be negative, not {latency!r}")
        self.respond = respond or (lambda *_, **__: None)
        self.latency = latency
        self.error = error
        self.calls: list[FakeCall] = []
        self._fail_next = 0
        # Failing until this Trio time (inf: down until up()); None: no outage.
        self._down_until: float | None = None
        self._hang = False
        self._flaky_rate = 0.0
        self._random = random.Random(0)  # noqa: S311 - test fixture, not crypto

    def __repr__(self) -> str:
        return f"<FakeService calls={len(self.calls)} available={self.available}>"

    # --- scripting --------------------------------------------------------------------

    def fail_next(self, count: int = 1) -> None:
        """Fail the next ``count`` calls (on top of any already scripted)."""
        _require(count >= 0, f"fail_next needs a count of at least 0, not {count!r}")
        self._fail_next += count

    def outage(self, seconds: float) -> None:
        """Fail every call for the next ``seconds`` of Trio time, whatever came before."""
        _require(seconds >= 0, f"an outage lasts 0 seconds or more, not {seconds!r}")
        self._down_until = trio.current_time() + seconds
        self._hang = False

    def down(self) -> None:
        """Fail every call until ``up()`` (or a later ``outage`` or ``hang``)."""
        self._down_until = math.inf
        self._hang = False

    def up(self) -> None:
        """Answer every call from now on: ends ``down``, ``outage`` and ``hang``, and
        drops pending ``fail_next`` failures and the ``flaky`` rate."""
        self._down_until = None
        self._hang = False
        self._fail_next = 0
        self._flaky_rate = 0.0

    def hang(self) -> None:
        """Make calls never return until ``up()`` (or a later ``down`` or ``outage``)."""
        self._hang = True
        self._down_until = None

    def flaky(self, rate: float, seed: int = 0) -> None:
        """Fail a random ``rate`` of calls (repeatably, from ``seed``)."""
        _require(0.0 <= rate <= 1.0, f"the flaky rate is between 0 and 1, not {rate!r}")
        self._flaky_rate = rate
        self._random.seed(seed)

    @property
    def available(self) -> bool:
        """Whether a call now would get through ``down``/``outage``/``hang`` (per-call
        scripts aside)."""
        if self._hang:
            return False
        if self._down_until is None:
            return True
        try:
            now = trio.current_time()
        except RuntimeError:  # outside Trio: only an outage without end says no
            return self._down_until != math.inf
        return now >= self._down_until

    # --- calling ----------------------------------------------------------------------

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Answer with ``respond(*args, **kwargs)`` or fail as scripted; recorded in
        ``calls`` with the Trio time the call began."""
        now = trio.current_time()
        if self._hang:
            self.calls.append(FakeCall(now, args, kwargs, "hang"))
            await trio.sleep_forever()
        if self.latency:
            await trio.sleep(self.latency)
        failing = not self.available or self._fail_next > 0
        if not failing and self._flaky_rate:
            failing = self._random.random() < self._flaky_rate
        if failing:
            self._fail_next = max(0, self._fail_next - 1)
            self.calls.append(FakeCall(now, args, kwargs, "error"))
            raise self.error()
        self.calls.append(FakeCall(now, args, kwargs, "ok"))
        result = self.respond(*args, **kwargs)
        if isinstance(result, Awaitable):
            result = await result
        return result

    def outcomes(self) -> list[str]:
        """The outcome of every call so far, in order."""
        return [c.outcome for c in self.calls]
