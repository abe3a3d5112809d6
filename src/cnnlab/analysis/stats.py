"""Verdicts from per-seed results: intervals over seeds, and "held" only outside the noise.

    acc = {"3x3": [61.2, 60.8, 61.9], "7x7": [58.0, 58.9, 57.7]}     # percent, one per seed
    gap = difference(acc["3x3"], acc["7x7"])                          # Interval, 95%
    gap.sign()        # +1: the interval lies above zero; -1 below; 0 it holds zero
    judge([gap])      # "held" / "did not hold" / "undecided"

The rule every experiment's verdict follows (cnnlab experiment, the lab report):
- each part of a claim is a *contrast* of the settings' means (a difference, a difference of
  gains, ...) with a 95% confidence interval over seeds: Welch's t with the
  Welch-Satterthwaite degrees of freedom, which does not assume the settings' spreads are equal
  (Welch 1947; for a general contrast Satterthwaite 1946). Seeds are the replicates: the
  intervals say how much the result would move with other seeds, not how it would move with
  another test set (the test set is the same for every trial);
- a part *agrees* with the claim when its interval lies wholly on the claim's side of zero,
  *disagrees* when it lies wholly on the other side, and is *inside the noise* otherwise;
- the claim "held" when every part agrees, "did not hold" when any part disagrees, else
  "undecided". Means alone never decide;
- fewer than two seeds of a setting: no interval, hence no verdict (and no ± in a table).

Statuses that are not decisions: "not tested" (the settings run cannot refute the claim, e.g. a
filter grid of 3x3 and 5x5 only, for "use 3x3 or 5x5"), "too short to decide" (the runs were
too short for the question: `--quick`, or nets still learning at the end), "no verdict" (one
seed). The sentence of every verdict quotes the numbers it used.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

LEVEL = 0.95  # two-sided confidence level of every interval

HELD = "held"
NOT_HELD = "did not hold"
UNDECIDED = "undecided"
NOT_TESTED = "not tested"
TOO_SHORT = "too short to decide"
NO_VERDICT = "no verdict"
STATUSES = (HELD, NOT_HELD, UNDECIDED, NOT_TESTED, TOO_SHORT, NO_VERDICT)


def _t_quantile(df: float, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval; `n` the seeds behind each group."""

    estimate: float
    low: float
    high: float
    n: tuple[int, ...]
    df: float | None = None  # degrees of freedom; None when every group had zero spread
    level: float = LEVEL

    def sign(self) -> int:
        """+1 when the interval lies above zero, -1 below, 0 when it holds zero."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def text(self, unit: str = " points", digits: int = 1) -> str:
        """'+3.2 points (95% CI +1.1 to +5.3)'."""
        f = f"{{:+.{digits}f}}"
        return (f"{f.format(self.estimate)}{unit} ({round(100 * self.level)}% CI "
                f"{f.format(self.low)} to {f.format(self.high)})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": list(self.n)}


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The mean with its t interval (sample std / sqrt(n)); None for fewer than two values."""
    return contrast([values], [1.0], level)


def contrast(groups: Sequence[Sequence[float]], weights: Sequence[float],
             level: float = LEVEL) -> Interval | None:
    """sum(w_i * mean_i) over independent groups, with Welch-Satterthwaite's interval.

    Variance of the estimate: sum(w_i^2 s_i^2 / n_i); degrees of freedom:
    var^2 / sum((w_i^2 s_i^2 / n_i)^2 / (n_i - 1)). A group with weight 0 is ignored. None when
    a weighted group has fewer than two values (no spread to measure: no interval)."""
    if len(groups) != len(weights):
        raise ValueError("one weight per group")
    est, var, denom, ns = 0.0, 0.0, 0.0, []
    for values, w in zip(groups, weights, strict=True):
        if w == 0:
            continue
        values = [float(v) for v in values]
        if len(values) < 2:
            return None
        ns.append(len(values))
        s2 = statistics.variance(values)
        term = w * w * s2 / len(values)
        est += w * statistics.fmean(values)
        var += term
        denom += term * term / (len(values) - 1)
    if not ns:
        raise ValueError("every weight is zero")
    if var == 0:  # every seed gave the same number (deterministic runs): a point
        return Interval(est, est, est, tuple(ns), None, level)
    df = var * var / denom
    half = _t_quantile(df, level) * math.sqrt(var)
    return Interval(est, est - half, est + half, tuple(ns), df, level)


def difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval | None:
    """mean(a) - mean(b) with Welch's interval."""
    return contrast([a, b], [1.0, -1.0], level)


def judge(parts: Sequence[Interval]) -> str:
    """HELD when every part's interval lies above zero (each part oriented so that the claim
    predicts a positive value), NOT_HELD when any lies below, else UNDECIDED."""
    signs = [p.sign() for p in parts]
    if any(s < 0 for s in signs):
        return NOT_HELD
    if signs and all(s > 0 for s in signs):
        return HELD
    return UNDECIDED


@dataclass
class Verdict:
    """One claim's answer: its status, the sentence (which quotes its numbers), the intervals
    it rests on (by name), and the trials left out of it with the reason."""

    status: str
    sentence: str
    intervals: dict[str, Interval] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "sentence": self.sentence,
                "intervals": {k: v.as_dict() for k, v in self.intervals.items()},
                "excluded": list(self.excluded)}
