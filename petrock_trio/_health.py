"""Health: healthy, degraded or unhealthy, with the reasons, and the rules that judge it."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

__all__ = ["Health", "HealthReport", "HealthThresholds", "Signals", "judge"]


class Health(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.UNHEALTHY: 2}


@attrs.frozen
class HealthReport:
    status: Health
    reasons: tuple[str, ...] = ()

    @classmethod
    def worst(cls, reports: Iterable[HealthReport], prefix: Iterable[str] = ()) -> HealthReport:
        """The worst status among ``reports``, with every reason of that status."""
        reports = list(reports)
        status = max((r.status for r in reports), key=lambda s: s.rank, default=Health.HEALTHY)
        names = list(prefix)
        reasons: list[str] = []
        for index, report in enumerate(reports):
            if report.status is status:
                label = f"{names[index]}: " if index < len(names) else ""
                reasons.extend(label + r for r in report.reasons)
        return cls(status, tuple(reasons))

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status.value, "reasons": list(self.reasons)}


@attrs.frozen(kw_only=True)
class HealthThresholds:
    """When a worker stops being healthy.

    Degraded: ``errors_per_minute`` at or above ``degraded_errors_per_minute``, a dead
    letter or a block of the event loop within ``dead_letter_window`` seconds, an open
    circuit on a service it uses, a message retrying, or lag above ``degraded_lag``.
    Unhealthy: its task crashed, or ``errors_per_minute`` at or above
    ``unhealthy_errors_per_minute``, or lag above ``unhealthy_lag``.
    """

    degraded_errors_per_minute: float = 1.0
    unhealthy_errors_per_minute: float = 60.0
    dead_letter_window: float = 300.0
    degraded_lag: int = 10_000
    unhealthy_lag: int = 1_000_000


@attrs.frozen(kw_only=True)
class Signals:
    """What a part's health is judged from, read off it at the moment of asking."""

    crashed: str | None = None  # why its task crashed, while it waits to restart
    errors_per_minute: float = 0.0
    dead_letter_age: float | None = None  # seconds since its last dead letter
    unavailable: tuple[str, ...] = ()  # declared services whose circuit is open
    lag: int = 0
    retrying: tuple[int, int] | None = None  # (message id, attempt)
    # (seconds since, reason) of its last block of the event loop (see _loopwatch)
    blocked: tuple[float, str] | None = None


def judge(signals: Signals, thresholds: HealthThresholds) -> HealthReport:
    """The one set of rules for every kind of part (pattern worker, old-style worker)."""
    t = thresholds
    unhealthy: list[str] = []
    degraded: list[str] = []
    if signals.crashed is not None:
        unhealthy.append(f"worker task crashed: {signals.crashed}")
    errors = signals.errors_per_minute
    if errors >= t.unhealthy_errors_per_minute:
        unhealthy.append(f"error rate {errors:.1f}/min")
    elif errors >= t.degraded_errors_per_minute:
        degraded.append(f"error rate {errors:.1f}/min")
    age = signals.dead_letter_age
    if age is not None and age < t.dead_letter_window:
        degraded.append(f"dead-lettered a message {age:.0f} s ago")
    degraded.extend(_blocked(signals, t))
    degraded.extend(f"external service {name!r} unavailable" for name in signals.unavailable)
    if signals.lag > t.unhealthy_lag:
        unhealthy.append(f"lag {signals.lag}")
    elif signals.lag > t.degraded_lag:
        degraded.append(f"lag {signals.lag}")
    if signals.retrying is not None:
        message_id, attempt = signals.retrying
        degraded.append(f"retrying message {message_id} (attempt {attempt})")
    if unhealthy:
        return HealthReport(Health.UNHEALTHY, tuple(unhealthy))
    if degraded:
        return HealthReport(Health.DEGRADED, tuple(degraded))
    return HealthReport(Health.HEALTHY)


def _blocked(signals: Signals, t: HealthThresholds) -> list[str]:
    """A block of the event loop counts as long as a dead letter does."""
    if signals.blocked is None or signals.blocked[0] >= t.dead_letter_window:
        return []
    since, reason = signals.blocked
    return [f"{reason}, {since:.0f} s ago"]
