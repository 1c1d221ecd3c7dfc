"""Retry policy: exponential backoff measured on Trio's clock."""

from __future__ import annotations

import random
import warnings
from datetime import timedelta

import attrs

from ._errors import ConfigurationError

__all__ = ["Backoff"]


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@attrs.frozen(kw_only=True)
class Backoff:
    """How a failed handler is retried.

    Attempt ``n`` (1-based) that fails waits
    ``min(initial * factor ** (n - 1), max_delay)`` seconds before attempt ``n + 1``,
    multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` when ``jitter`` is set.
    The defaults give 1, 2, 4, 8, 16, 30, 30 s between eight attempts. After
    ``max_attempts`` failed attempts the message is dead-lettered. Exceptions whose type
    is in ``never_retry`` (and :class:`Permanent`) dead-letter at once.
    Durations are seconds (``float``) or ``timedelta``.
    """

    initial: float = attrs.field(default=1.0, converter=_seconds)
    factor: float = 2.0
    max_delay: float = attrs.field(default=30.0, converter=_seconds)
    max_attempts: int = 8
    jitter: float = 0.0
    never_retry: tuple[type[BaseException], ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.initial < 0 or self.max_delay < 0 or self.factor < 1:
            raise ConfigurationError("initial and max_delay must be >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")
        if self.max_attempts > 1 and self.initial == 0:
            warnings.warn(
                "Backoff(initial=0) retries in a tight loop; in tests use Trio's MockClock",
                stacklevel=3,
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        base = min(self.initial * self.factor ** (attempt - 1), self.max_delay)
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - not crypto
        return base

    def delays(self) -> list[float]:
        """Every delay this policy waits, in order (without jitter)."""
        return [
            min(self.initial * self.factor ** (n - 1), self.max_delay)
            for n in range(1, self.max_attempts)
        ]
