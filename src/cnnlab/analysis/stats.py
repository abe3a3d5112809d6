"""Verdicts from per-seed results, by one rule whose error rates are known.

    acc = {"3x3": [61.2, 60.8, 61.9], "5x5": [60.1, 59.8, 61.0], "7x7": [58.0, 58.9, 57.7]}
    claim = Claim("filters", (Comparison.diff("3x3 - 7x7", "3x3", "7x7"),
                              Comparison.diff("5x5 - 7x7", "5x5", "7x7")), combine=ANY)
    decide(claim, acc).status      # "held" / "did not hold" / "undecided" / "no verdict"
    difference(acc["3x3"], acc["7x7"])   # Interval, 95%: a table's "+3.1 (95% CI ...)"

THE RULE (every claim of `cnnlab experiment` and the lab report; `decide`, and `judge` for an
all-parts claim given as intervals):
1. A claim names its comparisons in advance, as data (`Claim`, `Comparison`): each a contrast
   sum(w_i * mean_i) over named settings, and its direction, "greater" or "less" where the
   claim's words are directional (one-sided), "two-sided" where they are not. Never "the best
   setting by its mean": choosing the best of several on the same seeds and then testing it as
   if chosen in advance overstates it (the winner's curse).
2. Each contrast gets Welch's t over seeds (Welch 1947; for a general contrast Satterthwaite
   1946): var = sum(w_i^2 s_i^2 / n_i), df = var^2 / sum((w_i^2 s_i^2 / n_i)^2 / (n_i - 1)).
   Seeds are the replicates: the intervals say how the result would move with other seeds, not
   with another test set (every trial is tested on the same images).
3. ALPHA = 5% is the chance of a verdict of either kind, "held" or "did not hold", when there
   is no true effect (every contrast zero). A claim that can be refuted (one with a directional
   part) spends ALPHA / 2 on "held" and ALPHA / 2 on "did not hold": a one-sided test at 2.5%
   each way, which is exactly "the 95% interval lies wholly on one side of zero", so the
   tables' 95% intervals and a one-part verdict agree. A claim with two-sided parts only cannot
   be refuted without a margin ("no difference" is never shown by a t test), so it spends all
   of ALPHA on "held".
4. Several comparisons in one claim, as its wording demands:
   - ALL ("rises and then flattens", "degrades and the shortcuts fix it"): intersection-union
     (Berger 1982): "held" when every part is shown at its own one-sided ALPHA / 2, with no
     adjustment, which is valid because the claim is false as soon as any one part is, so a
     false "held" needs the false part to pass its own test (size <= ALPHA / 2). Its negation is
     "any part is the other way", so "did not hold" is Holm-Bonferroni (Holm 1979) over the
     parts against the claim at ALPHA / 2 (it fires when the first Holm step rejects: the
     smallest p against the claim <= ALPHA / 2 / m, m the parts with a direction).
   - ANY ("usually 3x3 or 5x5"): Holm-Bonferroni over the parts: "held" when at least one part
     is shown, i.e. its p <= ALPHA / 2 / m at Holm's first step. Its negation is "every part is
     the other way", so "did not hold" is intersection-union: every part against the claim at
     ALPHA / 2.
   - a *guard* part (ALL claims only; "the deeper ResNet is not worse") need not be shown, only
     not refuted: it takes part in "did not hold", not in "held".
   "did not hold" wins over "held" when both would fire (only a guard can make both fire).
5. Zero spread: when every seed of a setting in a contrast gave the same number, Welch has no
   answer (its variance estimate is 0, not small), so: "no verdict", never a zero-width interval
   read as decisive. Fewer than two seeds of a setting: no interval, "no verdict" too.
6. Optional stopping: `looks` counts the verdicts a run has had on a growing set of seeds (1:
   none seen before; `--resume RUN --seeds N` after reading a verdict: 2, ...). Every level is
   divided by `looks` (Bonferroni over looks) and the verdict records `looks`. Had the number
   of looks been fixed in advance at L, every look at ALPHA / L keeps the chance of any false
   verdict along the way <= ALPHA; added one at a time (the first at ALPHA, the second at
   ALPHA / 2, ...) it is <= ALPHA * (1 + 1/2 + ... + 1/L) (7.5% at 2 looks), and lower in fact
   because the looks share seeds (benchmarks/verdict_error_rates.py measures it).

Error rates as tested: tests/test_verdict_error_rates.py runs the rule on TESTED_SIMULATIONS
simulated experiments per claim shape, spread pattern and seed count (3 and 5 seeds, normal
seed-to-seed noise, no true effect) and asserts a false verdict ("held" or "did not hold") in at
most TESTED_FALSE_VERDICT_RATE of them (ALPHA / 2 of each kind) when the settings' spreads are
equal, and at most TESTED_FALSE_VERDICT_RATE_UNEQUAL when they differ up to 3x, up to
Monte-Carlo error (the Wilson interval's low end). The second bound is Welch's own: at 3-5 seeds
with spreads that differ, its t is slightly liberal (measured over 200,000 experiments: 2.7% a
side instead of 2.5% at 3x, 5.3% in all; up to 3.3% a side at 10x); with equal spreads it is
conservative (1.7% a side at 3 seeds). BENCHMARKS.md gives the tables and the power at an effect
of 2 spreads.

Statuses that are not decisions: "not tested" (the settings run cannot refute the claim, e.g. a
filter grid of 3x3 and 5x5 only, for "use 3x3 or 5x5"), "too short to decide" (the runs were
too short for the question: `--quick`, or nets still learning at the end), "no verdict" (one
seed, or zero spread). The sentence of every verdict quotes the numbers it used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LEVEL = 0.95  # two-sided confidence level of every interval a table shows
ALPHA = 0.05  # 1 - LEVEL: the chance of a verdict of either kind when nothing is there
# What tests/test_verdict_error_rates.py asserts with no true effect, over TESTED_SIMULATIONS
# experiments per claim shape, spread pattern and seed count (the numbers a report cites): false
# verdicts of either kind at equal spreads, and where the settings' spreads differ up to 3x.
TESTED_FALSE_VERDICT_RATE = 0.05
TESTED_FALSE_VERDICT_RATE_UNEQUAL = 0.06
TESTED_SIMULATIONS = 4000

HELD = "held"
NOT_HELD = "did not hold"
UNDECIDED = "undecided"
NOT_TESTED = "not tested"
TOO_SHORT = "too short to decide"
NO_VERDICT = "no verdict"
STATUSES = (HELD, NOT_HELD, UNDECIDED, NOT_TESTED, TOO_SHORT, NO_VERDICT)

GREATER, LESS, TWO_SIDED = "greater", "less", "two-sided"
DIRECTIONS = (GREATER, LESS, TWO_SIDED)
ALL, ANY = "all", "any"

# The vectorised rule's answers, one small int per simulated experiment (`decide_many`).
CODE_UNDECIDED, CODE_HELD, CODE_NOT_HELD, CODE_NO_VERDICT = 0, 1, 2, 3
CODES = {CODE_UNDECIDED: UNDECIDED, CODE_HELD: HELD, CODE_NOT_HELD: NOT_HELD,
         CODE_NO_VERDICT: NO_VERDICT}


def _t_quantile(df: float, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval; `n` the seeds behind each group.
    `zero_spread`: some group's seeds all gave the same number, so the interval (narrowed or a
    point) is no evidence: it never decides (`sign` 0, `judge` "no verdict")."""

    estimate: float
    low: float
    high: float
    n: tuple[int, ...]
    df: float | None = None  # degrees of freedom; None when every group had zero spread
    level: float = LEVEL
    zero_spread: bool = False

    def sign(self) -> int:
        """+1 when the interval lies above zero, -1 below, 0 when it holds zero (or rests on a
        setting with zero spread)."""
        if self.zero_spread:
            return 0
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def text(self, unit: str = " points", digits: int = 1) -> str:
        """'+3.2 points (95% CI +1.1 to +5.3)'."""
        f = f"{{:+.{digits}f}}"
        if self.zero_spread:
            return (f"{f.format(self.estimate)}{unit} (no interval: every seed of a setting "
                    "gave the same number)")
        return (f"{f.format(self.estimate)}{unit} ({_pct(self.level)} CI "
                f"{f.format(self.low)} to {f.format(self.high)})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": list(self.n)}


def _pct(level: float) -> str:
    """0.95 -> '95%', 0.975 -> '97.5%', 0.98333 -> '98.3%', 0.0125 -> '1.25%'."""
    return f"{100 * level:.3g}%"


# ------------------------------------------------------------------------ Welch, vectorised


def _welch(groups: Sequence[np.ndarray], weights: Sequence[float]):
    """sum(w_i * mean_i) over groups shaped (experiments, seeds_i), with Welch-Satterthwaite's
    variance and degrees of freedom, per experiment. Returns (estimate, variance, df, zero,
    ns); `zero` marks experiments where some weighted group has zero spread (df is then that
    of the other groups, or nan when all have zero spread)."""
    est = var = denom = 0.0
    zero = False
    ns = []
    for values, w in zip(groups, weights, strict=True):
        n = values.shape[1]
        ns.append(n)
        s2 = values.var(axis=1, ddof=1)
        term = w * w * s2 / n
        est = est + w * values.mean(axis=1)
        var = var + term
        denom = denom + term * term / (n - 1)
        # max == min is exact; a variance of identical floats can be 1e-34, not 0.
        zero = zero | (values.max(axis=1) == values.min(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(var > 0, var * var / np.where(denom > 0, denom, 1.0), np.nan)
    return est, var, df, zero, tuple(ns)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """The mean with its t interval (sample std / sqrt(n)); None for fewer than two values."""
    return contrast([values], [1.0], level)


def contrast(groups: Sequence[Sequence[float]], weights: Sequence[float],
             level: float = LEVEL) -> Interval | None:
    """sum(w_i * mean_i) over independent groups, with Welch-Satterthwaite's interval.

    Variance of the estimate: sum(w_i^2 s_i^2 / n_i); degrees of freedom:
    var^2 / sum((w_i^2 s_i^2 / n_i)^2 / (n_i - 1)). A group with weight 0 is ignored. None when
    a weighted group has fewer than two values (no spread to measure: no interval). A group
    whose values are all equal gives `zero_spread` (and a point when every group is so)."""
    if len(groups) != len(weights):
        raise ValueError("one weight per group")
    used = [(np.asarray(g, dtype=float).reshape(1, -1), float(w))
            for g, w in zip(groups, weights, strict=True) if w != 0]
    if not used:
        raise ValueError("every weight is zero")
    if any(g.shape[1] < 2 for g, _ in used):
        return None
    est, var, df, zero, ns = _welch([g for g, _ in used], [w for _, w in used])
    e, v, d = float(est[0]), float(var[0]), float(df[0])
    if v == 0:  # every seed gave the same number (deterministic runs): a point
        return Interval(e, e, e, ns, None, level, True)
    half = _t_quantile(d, level) * math.sqrt(v)
    return Interval(e, e - half, e + half, ns, d, level, bool(zero[0]))


def difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval | None:
    """mean(a) - mean(b) with Welch's interval."""
    return contrast([a, b], [1.0, -1.0], level)


# ------------------------------------------------------------------------------ the claims


@dataclass(frozen=True)
class Comparison:
    """One part of a claim: sum(weights[s] * mean(s)) over named settings, in a direction the
    claim predicts. `guard`: the claim needs it not refuted rather than shown."""

    name: str
    weights: Mapping[str, float]
    direction: str = GREATER
    guard: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"comparison {self.name!r}: direction {self.direction!r} is not "
                             f"one of {', '.join(DIRECTIONS)}")
        if not any(w != 0 for w in self.weights.values()):
            raise ValueError(f"comparison {self.name!r}: every weight is zero")
        if self.guard and self.direction == TWO_SIDED:
            raise ValueError(f"comparison {self.name!r}: a guard needs a direction to refute")

    @classmethod
    def diff(cls, name: str, a: str, b: str, direction: str = GREATER,
             guard: bool = False) -> Comparison:
        """mean(a) - mean(b)."""
        return cls(name, {a: 1.0, b: -1.0}, direction, guard)


@dataclass(frozen=True)
class Claim:
    """A claim as data: its comparisons, named before the results are seen, and how they
    combine: ALL (every part must hold; intersection-union) or ANY (at least one; Holm)."""

    name: str
    comparisons: tuple[Comparison, ...]
    combine: str = ALL

    def __post_init__(self) -> None:
        if self.combine not in (ALL, ANY):
            raise ValueError(f"claim {self.name!r}: combine must be {ALL!r} or {ANY!r}")
        if not self.comparisons:
            raise ValueError(f"claim {self.name!r} has no comparisons")
        if len({c.name for c in self.comparisons}) < len(self.comparisons):
            raise ValueError(f"claim {self.name!r}: two comparisons share a name")
        if not any(not c.guard for c in self.comparisons):
            raise ValueError(f"claim {self.name!r}: every comparison is a guard")
        if self.combine == ANY and any(c.guard for c in self.comparisons):
            raise ValueError(f"claim {self.name!r}: guards belong to ALL claims")

    @property
    def settings(self) -> tuple[str, ...]:
        """Every setting some comparison weighs, in order of first mention."""
        seen: dict[str, None] = {}
        for c in self.comparisons:
            seen.update((s, None) for s, w in c.weights.items() if w != 0)
        return tuple(seen)


@dataclass(frozen=True)
class Levels:
    """The one-sided level each test of a claim's parts is run at (`levels`)."""

    shown: float    # a part counts as shown when its p (two-sided p for two-sided parts) <= this
    refuted: float  # a part counts as against the claim when its p against <= this (0: never)


def levels(claim: Claim, looks: int = 1, alpha: float = ALPHA) -> Levels:
    """The rule's levels: ALPHA split between "held" and "did not hold" (rule 3), adjusted for
    several parts (rule 4) and for looks (rule 6)."""
    if not isinstance(looks, int) or looks < 1:
        raise ValueError(f"looks must be a whole number >= 1, not {looks!r}")
    directional = [c for c in claim.comparisons if c.direction != TWO_SIDED]
    shown = [c for c in claim.comparisons if not c.guard]
    a_refute = alpha / 2 if directional else 0.0
    a_hold = (alpha - a_refute) / looks
    a_refute /= looks
    if claim.combine == ALL:  # IUT for "held", Holm's first step for "did not hold"
        return Levels(a_hold, a_refute / max(1, len(directional)))
    refutable = all(c.direction != TWO_SIDED for c in shown)
    return Levels(a_hold / len(shown), a_refute if refutable else 0.0)


def _p_values(est, var, df, direction: str):
    """(p for the claim's direction, p against it) per experiment; nan where var is 0. For a
    two-sided part p_for is the two-sided p and p_against is nan (it cannot be refuted)."""
    from scipy.stats import t

    with np.errstate(divide="ignore", invalid="ignore"):
        tt = est / np.sqrt(var)
    upper, lower = t.sf(tt, df), t.cdf(tt, df)
    if direction == GREATER:
        return upper, lower
    if direction == LESS:
        return lower, upper
    return np.minimum(1.0, 2 * np.minimum(upper, lower)), np.full_like(upper, np.nan)


def _combine(claim: Claim, p_for: dict[str, np.ndarray], p_against: dict[str, np.ndarray],
             lv: Levels) -> np.ndarray:
    """Rule 4 on arrays of p-values: the status code per experiment (nan p never passes)."""
    parts = claim.comparisons
    shown = [c for c in parts if not c.guard]
    directional = [c for c in parts if c.direction != TWO_SIDED]
    ok = {c.name: p_for[c.name] <= lv.shown for c in shown}
    bad = {c.name: p_against[c.name] <= lv.refuted for c in directional}
    n = len(next(iter(p_for.values())))
    if claim.combine == ALL:
        held = np.logical_and.reduce([ok[c.name] for c in shown])
        refuted = (np.logical_or.reduce([bad[c.name] for c in directional])
                   if directional else np.zeros(n, bool))
    else:
        held = np.logical_or.reduce([ok[c.name] for c in shown])
        refuted = (np.logical_and.reduce([bad[c.name] for c in shown])
                   if lv.refuted > 0 else np.zeros(n, bool))
    return np.where(refuted, CODE_NOT_HELD, np.where(held, CODE_HELD, CODE_UNDECIDED))


def _arrays(claim: Claim, samples: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """samples[setting] as float arrays shaped (experiments, seeds); one experiment may be
    given as a flat list."""
    arrays = {}
    for s in claim.settings:
        if s not in samples:
            raise ValueError(f"claim {claim.name!r}: no results for setting {s!r}")
        a = np.asarray(samples[s], dtype=float)
        arrays[s] = a.reshape(1, -1) if a.ndim == 1 else a
        if not np.isfinite(arrays[s]).all():
            raise ValueError(f"claim {claim.name!r}: setting {s!r} has a non-finite value")
    return arrays


def _tests(claim: Claim, arrays: dict[str, np.ndarray]):
    """Every part's (p for, p against) per experiment, and where some setting has zero
    spread."""
    p_for, p_against, zero = {}, {}, False
    for c in claim.comparisons:
        names = [s for s, w in c.weights.items() if w != 0]
        est, var, df, z, _ = _welch([arrays[s] for s in names], [c.weights[s] for s in names])
        p_for[c.name], p_against[c.name] = _p_values(est, var, df, c.direction)
        zero = zero | z
    return p_for, p_against, zero


def decide_many(claim: Claim, samples: Mapping[str, Any], looks: int = 1,
                alpha: float = ALPHA) -> np.ndarray:
    """The rule on many experiments at once: samples[setting] shaped (experiments, seeds);
    returns a status code per experiment (CODES). `decide` runs this on one experiment, so a
    simulation of this function tests what the verdicts use."""
    lv = levels(claim, looks, alpha)
    arrays = _arrays(claim, samples)
    n = next(iter(arrays.values())).shape[0]
    if any(a.shape[1] < 2 for a in arrays.values()):
        return np.full(n, CODE_NO_VERDICT)
    p_for, p_against, zero = _tests(claim, arrays)
    return np.where(zero, CODE_NO_VERDICT, _combine(claim, p_for, p_against, lv))


def _holm(p: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values (Holm 1979): reject part i at level a when adjusted_i <= a."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [1.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def _rule_text(claim: Claim, lv: Levels, looks: int) -> str:
    """How this claim was decided, in one sentence (the levels are one-sided)."""
    m = sum(not c.guard for c in claim.comparisons)
    if claim.combine == ALL:
        text = (f"held when {'each of the ' + str(m) + ' parts' if m > 1 else 'the comparison'}"
                f" is shown at one-sided {_pct(lv.shown)}"
                + (" (intersection-union)" if m > 1 else ""))
        if lv.refuted:
            many = len(claim.comparisons) > 1
            text += (f"; did not hold when {'any part' if many else 'it'} is against the claim "
                     f"at {_pct(lv.refuted)}" + (" (Holm)" if many else ""))
    else:
        text = f"held when either part is shown at one-sided {_pct(lv.shown)} (Holm over {m})"
        if lv.refuted:
            text += f"; did not hold when every part is against the claim at {_pct(lv.refuted)}"
    if looks > 1:
        text += f"; levels divided by {looks} looks (seeds added after a verdict was seen)"
    return text


def _p_table(claim: Claim, p_for, p_against) -> dict[str, dict[str, float | None]]:
    """Each part's p-values, and the Holm-adjusted ones of the family rule 4 runs: the "for"
    tests of an ANY claim, the "against" tests of an ALL claim."""
    out = {c.name: {"for": float(p_for[c.name][0]),
                    "against": None if np.isnan(p_against[c.name][0])
                    else float(p_against[c.name][0])} for c in claim.comparisons}
    key = "for" if claim.combine == ANY else "against"
    family = [c.name for c in claim.comparisons if out[c.name][key] is not None]
    for name, adj in zip(family, _holm([out[n][key] for n in family]), strict=True):
        out[name][f"{key}_holm"] = adj
    return out


def decide(claim: Claim, samples: Mapping[str, Sequence[float]], looks: int = 1,
           alpha: float = ALPHA, digits: int = 1, unit: str = " points") -> Verdict:
    """The claim's verdict from per-seed results (samples[setting] = one value per seed), by
    the module's rule. The sentence quotes every part's estimate and interval (at the level
    its "held" test used) and the rule; callers may replace the sentence with their own
    wording, keeping `intervals`, `rule`, `looks` and `p_values`."""
    lv = levels(claim, looks, alpha)
    code = int(decide_many(claim, samples, looks, alpha)[0])
    rule = _rule_text(claim, lv, looks)
    intervals, parts = {}, []
    for c in claim.comparisons:
        names = [s for s, w in c.weights.items() if w != 0]
        level = 1 - (lv.shown if c.direction == TWO_SIDED else 2 * lv.shown)
        iv = contrast([samples[s] for s in names], [c.weights[s] for s in names], level)
        if iv is not None:
            intervals[c.name] = iv
            parts.append(f"{c.name}: {iv.text(unit, digits)}")
    if code == CODE_NO_VERDICT:
        why = ("a setting has fewer than two seeds" if len(intervals) < len(claim.comparisons)
               else "every seed of a setting gave the same number, and Welch's t has no answer "
               "at zero spread")
        return Verdict(NO_VERDICT, f"no verdict: {why}" + (f" ({'; '.join(parts)})."
                                                            if parts else "."),
                       intervals, looks=looks, rule=rule)
    p_for, p_against, _ = _tests(claim, _arrays(claim, samples))
    return Verdict(CODES[code], "; ".join(parts) + f" ({rule}).", intervals, looks=looks,
                   rule=rule, p_values=_p_table(claim, p_for, p_against))


def judge(parts: Sequence[Interval], looks: int = 1) -> str:
    """The rule for an ALL claim given as intervals, each oriented so that the claim predicts
    a positive value: HELD when every interval lies above zero (at its level / looks), NOT_HELD
    when one lies below at Holm's level, NO_VERDICT when one rests on zero spread, else
    UNDECIDED. With one part: its interval above zero, below zero, or holding it."""
    if not parts:
        return UNDECIDED
    if any(p.zero_spread or p.df is None for p in parts):
        return NO_VERDICT
    claim = Claim("judge", tuple(Comparison(str(i), {str(i): 1.0}) for i in range(len(parts))))
    lv = levels(claim, looks, round(1 - parts[0].level, 12))
    p_for, p_against = {}, {}
    for i, p in enumerate(parts):
        se = (p.high - p.estimate) / _t_quantile(p.df, p.level)
        p_for[str(i)], p_against[str(i)] = _p_values(
            np.array([p.estimate]), np.array([se * se]), np.array([p.df]), GREATER)
    return CODES[int(_combine(claim, p_for, p_against, lv)[0])]


@dataclass
class Verdict:
    """One claim's answer: its status, the sentence (which quotes its numbers), the intervals
    it rests on (by name), the trials left out of it with the reason, the looks it was decided
    at (rule 6), the rule's sentence and each part's p-values."""

    status: str
    sentence: str
    intervals: dict[str, Interval] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    looks: int = 1
    rule: str = ""
    p_values: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "sentence": self.sentence,
                "intervals": {k: v.as_dict() for k, v in self.intervals.items()},
                "excluded": list(self.excluded), "looks": self.looks, "rule": self.rule,
                "p_values": {k: dict(v) for k, v in self.p_values.items()}}
