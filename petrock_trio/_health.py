"""Health: healthy, degraded or unhealthy, with the reasons."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

__all__ = ["Health", "HealthReport", "HealthThresholds"]


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
    letter within ``dead_letter_window`` seconds, an open circuit on a service it uses,
    a message retrying, or lag above ``degraded_lag``. Unhealthy: its task crashed, or
    ``errors_per_minute`` at or above ``unhealthy_errors_per_minute``, or lag above
    ``unhealthy_lag``.
    """

    degraded_errors_per_minute: float = 1.0
    unhealthy_errors_per_minute: float = 60.0
    dead_letter_window: float = 300.0
    degraded_lag: int = 10_000
    unhealthy_lag: int = 1_000_000
