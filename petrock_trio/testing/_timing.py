"""Assertions about timing on Trio's clock: intervals, delays, timeouts."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

__all__ = ["assert_delays", "assert_times"]


def _close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=tolerance)


def assert_times(
    times: Sequence[float],
    expected: Sequence[float],
    *,
    start: float = 0.0,
    tolerance: float = 1e-9,
) -> None:
    """Each of ``times``, measured from ``start``, equals ``expected`` (same length).

    Under MockClock the clock is exact, so the default tolerance only absorbs float
    rounding.
    """
    actual = [t - start for t in times]
    if len(actual) != len(expected) or not all(
        _close(a, e, tolerance) for a, e in zip(actual, expected, strict=False)
    ):
        raise AssertionError(f"times {_fmt(actual)} != expected {_fmt(expected)}")


def assert_delays(
    times: Sequence[float], expected: Sequence[float], *, tolerance: float = 1e-9
) -> None:
    """The gaps between consecutive ``times`` equal ``expected`` (retry delays, intervals)."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if len(gaps) != len(expected) or not all(
        _close(g, e, tolerance) for g, e in zip(gaps, expected, strict=False)
    ):
        raise AssertionError(f"delays {_fmt(gaps)} != expected {_fmt(expected)}")


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
