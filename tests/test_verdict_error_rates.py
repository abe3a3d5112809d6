"""Simulation as the oracle for analysis/stats.py's verdict rule: thousands of simulated
experiments with normal seed-to-seed noise and a known truth, run through the very function the
verdicts use (`stats.decide_many`; `decide` is checked to agree with it). With no true effect a
verdict of either kind is false; the rule promises at most ALPHA / 2 of each ("held", "did not
hold"), ALPHA in all, when the settings' spreads are equal. Where they differ (up to 3x here)
Welch's t is a little liberal at 3-5 seeds (2.7% a side, measured over 200,000 experiments), so
those cells are held to TESTED_FALSE_VERDICT_RATE_UNEQUAL (3% a side). Monte-Carlo tolerance: a
cell passes when the Wilson 95% interval of its observed rate reaches down to the bound (at
4,000 experiments and a true 2.5% the observed rate lies within about +-0.5 points of it; every
bound is at least 3 standard errors above the rate measured over 200,000).

The claim shapes are the lab's claims as `Claim` specs (the ones `cnnlab experiment` decides
with); `benchmarks/verdict_error_rates.py` prints the same simulation as tables (and the power
at an effect of 2 spreads) for BENCHMARKS.md.

    python -m pytest -n 0 -q tests/test_verdict_error_rates.py     # a few seconds
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.analysis import stats
from cnnlab.analysis.binomial import wilson

Comparison, Claim = stats.Comparison, stats.Claim
N = stats.TESTED_SIMULATIONS  # simulated experiments per shape, spread pattern and seed count
SEEDS = (3, 5)


# ---------------------------------------------------------------- the lab's claims, as specs


def one_difference() -> Claim:
    """One directional difference (the gradient claim, ResNet vs the plain CNN)."""
    return Claim("one difference", (Comparison.diff("a - b", "a", "b"),))


def depth_claim(deep: int = 8) -> Claim:
    """"Accuracy rises with depth, and the gain per added layer drops after 3-4 layers": both
    must hold (ALL). Settings: test accuracy of the 1-, 4- and deepest-layer nets."""
    w = 1 / (deep - 4)
    return Claim("depth", (
        Comparison.diff("gain_1_to_4", "depth4", "depth1"),
        # per-layer gain 1->4 minus per-layer gain 4->deep: (a4-a1)/3 - (ad-a4)/(deep-4)
        Comparison("gain_per_layer_drop",
                   {"depth1": -1 / 3, "depth4": 1 / 3 + w, f"depth{deep}": -w}),
    ), stats.ALL)


def filters_claim() -> Claim:
    """"Usually 3x3 or 5x5": either beating 7x7 at an equal parameter budget (ANY, Holm)."""
    return Claim("filters", (Comparison.diff("3x3_minus_7x7", "3x3", "7x7"),
                             Comparison.diff("5x5_minus_7x7", "5x5", "7x7")), stats.ANY)


def pooling_claim() -> Claim:
    """"Pooling is usually 2x2, or 4x4 for large inputs", on 32x32 (small) inputs: the mean of
    the 2x2 settings minus the mean of the 4x4 settings, fixed before the results."""
    return Claim("pooling", (Comparison("2x2_minus_4x4", {
        "2x2 max": 0.5, "2x2 avg": 0.5, "4x4 max": -0.5, "4x4 avg": -0.5}),))


def residual_claim(lo: int = 20, hi: int = 56) -> Claim:
    """He et al.'s Fig. 6 on training error (percent): the deeper plain net trains worse
    (degradation), the ResNet of its depth better (the shortcuts), and the deeper ResNet not
    worse than the shallower (a guard: refutes, need not be shown)."""
    return Claim("residual", (
        Comparison.diff("degradation", f"plain{hi}", f"plain{lo}"),
        Comparison.diff("shortcuts", f"plain{hi}", f"resnet{hi}"),
        Comparison.diff("resnet_deeper_gain", f"resnet{lo}", f"resnet{hi}", guard=True),
    ), stats.ALL)


SHAPES = {"one difference": one_difference, "depth (ALL, 2 parts)": depth_claim,
          "filters (ANY, Holm)": filters_claim, "pooling (contrast)": pooling_claim,
          "residual (ALL + guard)": residual_claim}


def spread_patterns(settings: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Seed-to-seed spread (std) per setting, in units of the smallest: Welch's t does not
    care about the scale, only about how the settings' spreads differ."""
    k = len(settings)
    return {"equal": dict.fromkeys(settings, 1.0),
            "last 3x": {s: 3.0 if i == k - 1 else 1.0 for i, s in enumerate(settings)},
            "1 to 3": {s: 1.0 + 2.0 * i / (k - 1) for i, s in enumerate(settings)}}


def means_for(claim: Claim, targets: dict[str, float]) -> dict[str, float]:
    """Setting means whose contrasts equal `targets` (by comparison name): the least-norm
    solution of W m = t (every shape here has settings to spare, so it is exact)."""
    settings = claim.settings
    w = np.array([[c.weights.get(s, 0.0) for s in settings] for c in claim.comparisons])
    t = np.array([targets[c.name] for c in claim.comparisons])
    m = np.linalg.pinv(w) @ t
    assert np.allclose(w @ m, t)
    return dict(zip(settings, m, strict=True))


def simulate(claim: Claim, means: dict[str, float], sigma: dict[str, float], seeds: int,
             n: int, rng: np.random.Generator, looks: int = 1) -> np.ndarray:
    """n experiments, `seeds` seeds per setting, normal noise: the rule's status codes."""
    samples = {s: means[s] + sigma[s] * rng.standard_normal((n, seeds)) for s in claim.settings}
    return stats.decide_many(claim, samples, looks)


def null_rates(claim: Claim, seeds: int, sigma: dict[str, float], rng) -> tuple[int, int]:
    """(false "held", false "did not hold") of N experiments with every setting's mean 0."""
    codes = simulate(claim, dict.fromkeys(claim.settings, 0.0), sigma, seeds, N, rng)
    return int((codes == stats.CODE_HELD).sum()), int((codes == stats.CODE_NOT_HELD).sum())


def within(k: int, n: int, rate: float) -> bool:
    """The observed k of n is consistent with a true rate <= `rate` (Wilson 95% low end)."""
    return wilson(k, n)[0] <= rate


def check_null(claim: Claim, seed: int = 26) -> list[str]:
    """Every cell (spread pattern x seeds) of the no-effect simulation: the cells that break
    the rule's promise (empty when it holds)."""
    rng = np.random.default_rng(seed)
    bad = []
    for seeds in SEEDS:
        for pattern, sigma in spread_patterns(claim.settings).items():
            bound = (stats.TESTED_FALSE_VERDICT_RATE if pattern == "equal"
                     else stats.TESTED_FALSE_VERDICT_RATE_UNEQUAL)
            held, refuted = null_rates(claim, seeds, sigma, rng)
            if not (within(held, N, bound / 2) and within(refuted, N, bound / 2)
                    and within(held + refuted, N, bound)):
                bad.append(f"{claim.name}, {seeds} seeds, spreads {pattern}: held {held}, "
                           f"did not hold {refuted} of {N}")
    return bad


# ------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("shape", list(SHAPES))
def test_no_true_effect_gives_a_false_verdict_in_at_most_5_percent(shape):
    assert check_null(SHAPES[shape]()) == []


@pytest.mark.parametrize("shape,targets", [
    # Intersection-union at its least favourable point: every other part surely true, the
    # last exactly zero. A false "held" then rests on that one part's own 2.5% test.
    ("depth (ALL, 2 parts)", {"gain_1_to_4": 20.0, "gain_per_layer_drop": 0.0}),
    ("residual (ALL + guard)", {"degradation": 20.0, "shortcuts": 0.0,
                                "resnet_deeper_gain": 0.0}),
    # Holm for ANY: one part far below zero, the other exactly zero.
    ("filters (ANY, Holm)", {"3x3_minus_7x7": -20.0, "5x5_minus_7x7": 0.0}),
])
def test_a_claim_false_by_one_part_is_held_in_at_most_2_5_percent(shape, targets):
    claim = SHAPES[shape]()
    rng = np.random.default_rng(7)
    for seeds in SEEDS:
        codes = simulate(claim, means_for(claim, targets), dict.fromkeys(claim.settings, 1.0),
                         seeds, N, rng)
        held = int((codes == stats.CODE_HELD).sum())
        assert within(held, N, stats.ALPHA / 2), (seeds, held)


def test_decide_gives_the_simulated_rule_experiment_by_experiment():
    rng = np.random.default_rng(3)
    for make in SHAPES.values():
        claim = make()
        means = means_for(claim, {c.name: 1.5 * rng.standard_normal()
                                  for c in claim.comparisons})
        for _ in range(15):
            samples = {s: list(means[s] + rng.standard_normal(3)) for s in claim.settings}
            code = int(stats.decide_many(claim, samples)[0])
            assert stats.decide(claim, samples).status == stats.CODES[code]


def test_the_check_fails_when_the_rule_is_a_comparison_of_means(monkeypatch):
    """Breaking the rule breaks the test: "held" when the means point the claim's way, else
    "did not hold", is wrong in nearly every null experiment."""

    def by_means(claim, samples, looks=1, alpha=stats.ALPHA):
        est = np.stack([sum(w * np.asarray(samples[s]).mean(axis=1)
                            for s, w in c.weights.items()) for c in claim.comparisons])
        agree = (est > 0).all(axis=0) if claim.combine == stats.ALL else (est > 0).any(axis=0)
        return np.where(agree, stats.CODE_HELD, stats.CODE_NOT_HELD)

    monkeypatch.setattr(stats, "decide_many", by_means)
    for make in SHAPES.values():
        assert len(check_null(make())) == len(SEEDS) * 3  # every cell


def test_the_check_fails_without_holm(monkeypatch):
    """Each part at 2.5% with no adjustment (the old filters rule: held when 3x3 or 5x5 beats
    7x7 at 95%; the old "did not hold" when any part lies below): too many false verdicts."""
    plain = stats.levels

    def unadjusted(claim, looks=1, alpha=stats.ALPHA):
        lv = plain(claim, looks, alpha)
        return stats.Levels(alpha / 2 / looks, alpha / 2 / looks if lv.refuted else 0.0)

    monkeypatch.setattr(stats, "levels", unadjusted)
    assert check_null(filters_claim())  # the union of two 2.5% tests: false "held" ~4%
    assert check_null(residual_claim())  # any of three parts below: false "did not hold"


def test_adding_seeds_after_a_verdict_stays_within_the_stated_bound():
    """Optional stopping: 3 seeds, then 2 more when undecided. With the second look at
    ALPHA / 2 (looks=2) the false verdicts stay within ALPHA * (1 + 1/2), the module's bound;
    reading both looks at ALPHA gives more."""
    claim, rng = one_difference(), np.random.default_rng(11)
    five = {s: rng.standard_normal((N, 5)) for s in claim.settings}
    first = stats.decide_many(claim, {s: v[:, :3] for s, v in five.items()})
    rates = {}
    for looks in (1, 2):
        second = stats.decide_many(claim, five, looks)
        final = np.where(first == stats.CODE_UNDECIDED, second, first)
        rates[looks] = int(np.isin(final, (stats.CODE_HELD, stats.CODE_NOT_HELD)).sum())
    assert within(rates[2], N, stats.ALPHA * 1.5)
    assert rates[2] < rates[1]


# --------------------------------------------------------------------------- audit cases


def test_mixed_filters_case_is_no_longer_held_by_a_union():
    # 3x3 - 7x7 just above zero at 95% (p ~ 0.02 one-sided), 5x5 - 7x7 clearly below: the old
    # union of two 95% tests said "held"; Holm over the two parts needs p <= 1.25%.
    acc = {"3x3": [63.0, 65.0, 64.2, 66.1], "7x7": [62.0, 63.1, 61.9, 63.3],
           "5x5": [55.0, 55.6, 54.8, 55.3]}
    assert stats.difference(acc["3x3"], acc["7x7"]).sign() == 1
    assert stats.difference(acc["5x5"], acc["7x7"]).sign() == -1
    v = stats.decide(filters_claim(), acc)
    assert v.status == stats.UNDECIDED
    assert 0.0125 < v.p_values["3x3_minus_7x7"]["for"] < 0.025
    assert v.p_values["3x3_minus_7x7"]["for_holm"] > 0.025


def test_pooling_is_the_contrast_named_in_advance_not_the_best_by_mean():
    # The best 2x2 (max, 62%) beats the best 4x4 (58%) clearly; the 2x2 settings together do
    # not beat the 4x4 settings: choosing the best by its mean would say "held".
    acc = {"2x2 max": [62.1, 62.4, 61.9], "2x2 avg": [54.0, 54.3, 53.8],
           "4x4 max": [58.2, 58.0, 58.4], "4x4 avg": [57.9, 58.3, 58.1]}
    assert stats.difference(acc["2x2 max"], acc["4x4 max"]).sign() == 1
    v = stats.decide(pooling_claim(), acc)
    assert v.status == stats.UNDECIDED
    assert v.intervals["2x2_minus_4x4"].estimate == pytest.approx(0.0, abs=0.1)


def test_zero_spread_is_no_verdict_whatever_the_gap():
    acc = {"a": [60.0, 60.0, 60.0], "b": [55.0, 55.0, 55.0]}
    v = stats.decide(one_difference(), acc)
    assert v.status == stats.NO_VERDICT and not v.p_values
    codes = stats.decide_many(one_difference(), {"a": np.full((4, 3), 60.0),
                                                 "b": np.full((4, 3), 55.0)})
    assert (codes == stats.CODE_NO_VERDICT).all()
