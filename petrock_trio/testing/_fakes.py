"""Fakes for external services: scripted failures, latency, outages and flaky rates."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

__all__ = ["FakeCall", "FakeService", "FakeServiceError"]


class FakeServiceError(Exception):
    """What a :class:`FakeService` raises when it is scripted to fail."""


@attrs.frozen
class FakeCall:
    at: float  # Trio time of the call
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outcome: str  # "ok", "error" or "hang"


class FakeService:
    """A stand-in for an external dependency, driven by Trio's clock.

    ``respond(*args, **kwargs)`` computes the answer (sync or async). Failures are
    scripted: ``fail_next(n)``, ``outage(seconds)`` (down until then, measured on
    Trio's clock), ``down()`` / ``up()``, ``flaky(rate, seed)``, a fixed ``latency``,
    or ``hang()`` (calls never return: timeouts must cut them off). Every call is
    recorded in ``calls``.
    """

    def __init__(
        self,
        respond: Callable[..., Any] | None = None,
        *,
        latency: float = 0.0,
        error: Callable[[], Exception] = lambda: FakeServiceError("scripted failure"),
    ) -> None:
        self.respond = respond or (lambda *_, **__: None)
        self.latency = latency
        self.error = error
        self.calls: list[FakeCall] = []
        self._fail_next = 0
        self._down_until: float | None = None
        self._down = False
        self._hang = False
        self._flaky_rate = 0.0
        self._random = random.Random(0)  # noqa: S311 - test fixture, not crypto

    def __repr__(self) -> str:
        return f"<FakeService calls={len(self.calls)} available={self.available}>"

    # --- scripting --------------------------------------------------------------------

    def fail_next(self, count: int = 1) -> None:
        self._fail_next += count

    def outage(self, seconds: float) -> None:
        """Fail every call for the next ``seconds`` of Trio time."""
        self._down_until = trio.current_time() + seconds

    def down(self) -> None:
        self._down = True

    def up(self) -> None:
        self._down = False
        self._down_until = None
        self._hang = False

    def hang(self) -> None:
        self._hang = True

    def flaky(self, rate: float, seed: int = 0) -> None:
        """Fail a random ``rate`` of calls (repeatably, from ``seed``)."""
        self._flaky_rate = rate
        self._random.seed(seed)

    @property
    def available(self) -> bool:
        if self._down or self._hang:
            return False
        try:
            now = trio.current_time()
        except RuntimeError:
            return self._down_until is None
        return self._down_until is None or now >= self._down_until

    # --- calling ----------------------------------------------------------------------

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
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
        return [c.outcome for c in self.calls]
