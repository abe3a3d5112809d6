"""Binomial intervals for error rates measured on a few test photos.

With 24 test photos one photo is 4.17 points, so "20.8% top-1 error" alone hides how little it
pins down. The Wilson score interval (Wilson 1927) is the usual choice for a proportion from a
small sample: unlike the textbook normal ("Wald") interval it never leaves [0, 1] and it does
not collapse to zero width at 0 or n errors (Brown, Cai & DasGupta 2001, "Interval estimation
for a binomial proportion", recommend it for n < 40).

    wilson(5, 24)   # (0.0924..., 0.4047...): 5 wrong of 24 is anywhere from 9% to 40%
"""

from __future__ import annotations

import math

LEVEL = 0.95  # two-sided confidence level


def _z(level: float) -> float:
    """The standard normal quantile of a two-sided `level` (1.959964 for 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n, as fractions in [0, 1]."""
    if n <= 0:
        raise ValueError(f"n must be positive, not {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], not {k} of {n}")
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp float rounding only: at k = 0 the low end is exactly 0, at k = n the high end 1.
    return max(0.0, centre - half), min(1.0, centre + half)


def error_interval(wrong: int, n: int, level: float = LEVEL) -> dict:
    """An error rate with its Wilson interval, in percent, as results.json stores it."""
    low, high = wilson(wrong, n, level)
    return {"wrong": wrong, "n": n, "error": 100.0 * wrong / n, "low": 100.0 * low,
            "high": 100.0 * high, "level": level, "method": "wilson"}
