"""Retry policy and decisions: exponential backoff on Trio's clock, and what to do after
a failed attempt (retry at, wait for a service, dead-letter)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from datetime import timedelta

import attrs

from ._errors import ConfigurationError, Permanent, Retry, ServiceUnavailable, UnknownCommand

__all__ = ["Backoff", "Decision", "GiveUp", "RetryAt", "WaitForService", "decide", "leaves"]


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


# --- the decision after a failed attempt ------------------------------------------------


@attrs.frozen
class RetryAt:
    """Try again after ``delay`` seconds; the next attempt counts (``requested``: the
    handler asked with :class:`Retry`, an expected condition logged at info level)."""

    delay: float
    requested: bool = False


@attrs.frozen
class WaitForService:
    """A declared service is unavailable: wait ``delay`` seconds without spending an attempt."""

    service: str
    delay: float


@attrs.frozen
class GiveUp:
    """Dead-letter the message now; ``reason`` says why no attempt is left."""

    reason: str


Decision = RetryAt | WaitForService | GiveUp


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, with exception groups flattened.

    A handler that runs a nursery raises its children's errors in a group; steering
    (``Permanent``, ``Retry``, an open circuit) must be seen through it.
    """
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def decide(
    error: BaseException,
    attempt: int,
    policy: Backoff,
    unavailable: Callable[[BaseException], tuple[str, float] | None] = lambda _: None,
) -> Decision:
    """What to do after attempt number ``attempt`` (1-based) failed with ``error``.

    In order: a permanent failure (``Permanent``, a type in ``policy.never_retry``, or
    a programming error such as emitting an unregistered command) gives up at once; an
    unavailable service (``ServiceUnavailable``, or a failure that ``unavailable``
    traces to a declared service whose circuit it opened) waits for it without
    spending the attempt, however long the outage; attempts used up give up; a
    requested retry waits the delay it asked for (the longest, in a group); anything
    else waits the policy's backoff.
    """
    found = leaves(error)
    if any(isinstance(leaf, (Permanent, UnknownCommand, *policy.never_retry)) for leaf in found):
        # Emitting a name, an object or an unregistered class fails every attempt alike.
        unknown = any(isinstance(leaf, UnknownCommand) for leaf in found)
        return GiveUp("programming error: not a command" if unknown else "permanent failure")
    for leaf in found:
        if isinstance(leaf, ServiceUnavailable):
            return WaitForService(leaf.service, leaf.retry_after or policy.delay(1))
        waiting = unavailable(leaf)
        if waiting is not None:
            return WaitForService(*waiting)
    if attempt >= policy.max_attempts:
        return GiveUp(f"{attempt} attempts failed")
    if all(isinstance(leaf, Retry) for leaf in found):
        asked = [leaf.delay for leaf in found if isinstance(leaf, Retry) and leaf.delay is not None]
        return RetryAt(max(asked) if asked else policy.delay(attempt), requested=True)
    return RetryAt(policy.delay(attempt))
