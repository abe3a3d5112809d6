"""analysis/stats.py against oracles (scipy's Welch test, a hand computation), and the verdicts
of `cnnlab experiment` on synthetic per-seed results: each case is built so that a comparison
of means would answer differently from the rule (intervals that must exclude zero)."""

from __future__ import annotations

import math
from dataclasses import astuple

import pytest
from scipy import stats as scipy_stats

from cnnlab.analysis import stats
from cnnlab.tasks import experiment
from cnnlab.tasks.experiment import ExperimentConfig


def test_difference_equals_scipy_welch_interval():
    a, b = [61.2, 60.1, 62.5, 61.9], [58.0, 59.5, 57.1]
    iv = stats.difference(a, b)
    oracle = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert iv.low == pytest.approx(oracle.low) and iv.high == pytest.approx(oracle.high)
    assert iv.estimate == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert iv.n == (4, 3)


def test_difference_by_hand():
    # a = 1 2 3, b = 4 5 6: difference -3; s^2 = 1 each; var = 1/3 + 1/3; df = (2/3)^2 /
    # (2 * (1/3)^2 / 2) = 4; t(0.975, 4) = 2.7764451; half-width 2.7764451 * sqrt(2/3).
    iv = stats.difference([1, 2, 3], [4, 5, 6])
    assert iv.df == pytest.approx(4)
    half = 2.7764451052 * math.sqrt(2 / 3)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((-3, -3 - half, -3 + half))
    assert iv.sign() == -1 and iv.text() == "-3.0 points (95% CI -5.3 to -0.7)"


def test_mean_interval_equals_the_t_interval():
    values = [70.1, 71.3, 69.8, 70.9, 70.4]
    iv = stats.mean_interval(values)
    oracle = scipy_stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5,
                                    scale=scipy_stats.sem(values))
    assert (iv.low, iv.high) == pytest.approx(oracle)


def test_contrast_variance_and_degrees_of_freedom_by_hand():
    # 0.5 * mean(a) + 2 * mean(b): a = 0 2 (s^2 2, n 2), b = 1 2 3 (s^2 1, n 3).
    # var = 0.25 * 2 / 2 + 4 * 1 / 3 = 0.25 + 1.3333; df = var^2 / (0.25^2 / 1 + 1.3333^2 / 2)
    iv = stats.contrast([[0, 2], [1, 2, 3]], [0.5, 2])
    var = 0.25 + 4 / 3
    df = var**2 / (0.25**2 / 1 + (4 / 3) ** 2 / 2)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(var)
    assert iv.estimate == pytest.approx(0.5 * 1 + 2 * 2)
    assert iv.df == pytest.approx(df)
    assert iv.high - iv.estimate == pytest.approx(half)


def test_one_value_gives_no_interval_and_equal_values_no_verdict():
    assert stats.difference([60.0], [55.0, 56.0]) is None
    assert stats.mean_interval([60.0]) is None
    # Every seed the same number: Welch has no answer at zero spread. The point is kept for a
    # table, but it is no evidence: no sign, no verdict (it used to read "held, +5.0 to +5.0").
    point = stats.difference([60.0, 60.0], [55.0, 55.0])
    assert (point.low, point.high) == (5.0, 5.0) and point.zero_spread
    assert point.sign() == 0 and stats.judge([point]) == stats.NO_VERDICT
    assert "no interval" in point.text()
    # One setting without spread is enough: its variance is not small, it is unmeasured.
    half = stats.difference([60.0, 60.0, 60.0], [55.0, 55.4, 54.8])
    assert half.zero_spread and stats.judge([half]) == stats.NO_VERDICT
    one = stats.Claim("one", (stats.Comparison.diff("a - b", "a", "b"),))
    v = stats.decide(one, {"a": [60.0, 60.0], "b": [55.0, 55.0]})
    assert v.status == stats.NO_VERDICT and "same number" in v.sentence


def test_judge_needs_every_part_outside_the_noise():
    up = stats.difference([10, 11, 12], [1, 2, 3])
    down = stats.difference([1, 2, 3], [10, 11, 12])
    noise = stats.difference([5, 9, 1], [4, 6, 3])
    assert stats.judge([up]) == stats.HELD
    assert stats.judge([up, noise]) == stats.UNDECIDED
    assert stats.judge([up, down]) == stats.NOT_HELD
    assert stats.judge([noise]) == stats.UNDECIDED


# ----------------------------------------------------------------------- experiment verdicts


def row(label: str, setting: dict, test: list[float], train: list[float] | None = None,
        learning: int = 0) -> dict:
    return {"label": label, "setting": setting, "test": test, "train": train or test,
            "seeds": len(test), "test_mean": sum(test) / len(test) if test else None,
            "train_mean": None, "still_learning": learning}


def pooling(two: list[float], four: list[float], learning: int = 0) -> list[dict]:
    return [row("2x2 max", {"pool": 2, "pool_kind": "max"}, two, learning=learning),
            row("4x4 max", {"pool": 4, "pool_kind": "max"}, four)]


def test_clear_win_holds_and_the_same_means_with_a_wide_spread_do_not():
    v = experiment.verdict("pooling", pooling([62.1, 62.4, 61.9], [58.2, 58.0, 58.6]))
    assert v.status == stats.HELD
    assert "+3.9 points (95% CI" in v.sentence and "62.1%" in v.sentence
    # Same means (62.13 vs 58.27), spread over 10 points: a comparison of means says "held".
    v = experiment.verdict("pooling", pooling([57.1, 62.4, 66.9], [52.2, 58.0, 64.6]))
    assert v.status == stats.UNDECIDED


def test_reversed_does_not_hold_and_a_gap_within_the_noise_is_undecided():
    v = experiment.verdict("pooling", pooling([58.2, 58.0, 58.6], [62.1, 62.4, 61.9]))
    assert v.status == stats.NOT_HELD
    # A 0.3-point gain with a 1.7-point spread (the example): undecided, not held.
    v = experiment.verdict("pooling", pooling([60.3, 58.6, 62.0], [60.0, 58.3, 61.7]))
    assert v.status == stats.UNDECIDED
    # ... and a 1-2 std gap against the claim: undecided, not "did not hold".
    v = experiment.verdict("pooling", pooling([59.0, 60.5, 58.4], [60.1, 61.4, 59.5]))
    assert v.status == stats.UNDECIDED


def test_one_seed_gives_no_verdict_even_with_a_large_gap():
    v = experiment.verdict("pooling", pooling([70.0], [40.0]))
    assert v.status == stats.NO_VERDICT and not v.intervals


def test_a_net_still_learning_makes_a_clear_result_too_short_to_decide():
    v = experiment.verdict("pooling", pooling([62.1, 62.4, 61.9], [58.2, 58.0, 58.6],
                                              learning=2))
    assert v.status == stats.TOO_SHORT
    assert "2x2 max had not stopped learning" in v.sentence and "\u201cheld\u201d" in v.sentence
    # One seed of three just over the plateau rule does not veto the other two.
    v = experiment.verdict("pooling", pooling([62.1, 62.4, 61.9], [58.2, 58.0, 58.6],
                                              learning=1))
    assert v.status == stats.HELD


def test_quick_filters_grid_is_not_tested_whatever_the_runs_say():
    config = ExperimentConfig(experiments=("filters",), quick=True)
    g = experiment.grid("filters", config)
    assert [s["kernel"] for s in g.settings] == [3, 5]
    rows = [row("3x3", {"kernel": 3}, [80.0, 81.0, 80.5]),
            row("5x5", {"kernel": 5}, [40.0, 41.0, 40.5])]
    for quick in (True, False):
        v = experiment.verdict("filters", rows, quick=quick)
        assert v.status == stats.NOT_TESTED and "the full grid adds 7x7" in v.sentence
    # With 7x7 in the grid the same numbers decide.
    rows.append(row("7x7", {"kernel": 7}, [60.0, 61.0, 60.5]))
    assert experiment.verdict("filters", rows).status == stats.HELD
    rows[-1] = row("7x7", {"kernel": 7}, [90.0, 91.0, 90.5])
    assert experiment.verdict("filters", rows).status == stats.NOT_HELD


def test_quick_is_too_short_to_decide():
    v = experiment.verdict("pooling", pooling([62.1, 62.4, 61.9], [58.2, 58.0, 58.6]),
                           quick=True)
    assert v.status == stats.TOO_SHORT


def depth_rows(per_depth: dict[int, list[float]]) -> list[dict]:
    return [row(f"{d} layers", {"depth": d}, acc) for d, acc in per_depth.items()]


def test_depth_needs_the_rise_and_the_fall_of_the_gain_outside_the_noise():
    base = {1: [30.0, 30.5, 29.8], 2: [40.0, 40.2, 39.9], 3: [46.0, 45.5, 46.2],
            4: [50.0, 50.3, 49.8], 6: [51.0, 51.2, 50.9], 8: [51.5, 51.9, 51.2]}
    v = experiment.verdict("depth", depth_rows(base))
    assert v.status == stats.HELD
    assert "+6.64 points per layer" in v.sentence  # (50.03 - 30.10) / 3 layers, by hand
    # A gain per layer that grows after 4 layers (8 points a layer against 6.7): did not hold.
    steady = {**base, 6: [66.0, 66.3, 65.8], 8: [82.0, 82.1, 81.8]}
    v = experiment.verdict("depth", depth_rows(steady))
    assert v.status == stats.NOT_HELD
    # The depth grid of --quick (1, 2, 4) cannot see beyond 4 layers: not tested.
    quick = {d: base[d] for d in (1, 2, 4)}
    assert experiment.verdict("depth", depth_rows(quick)).status == stats.NOT_TESTED


def residual_rows(train_acc: dict[str, list[float]]) -> list[dict]:
    # every net past the doubling test (test_residual_plateau.py covers the other cases)
    return [row(m, {"model": m}, acc, train=acc) | {"plateau": {"status": "plateaued"}}
            for m, acc in train_acc.items()]


def test_residual_degradation_and_shortcuts_by_the_rule():
    fig6 = {"plain20": [60.0, 60.5, 59.8], "resnet20": [62.0, 62.3, 61.9],
            "plain56": [50.0, 50.6, 49.7], "resnet56": [64.0, 64.2, 63.8]}
    v = experiment.verdict("residual", residual_rows(fig6))
    assert v.status == stats.HELD
    assert "plain-56 minus plain-20: +10.0 points" in v.sentence
    # The deeper ResNet trains worse than the shallower outside the noise: did not hold.
    worse = {**fig6, "resnet56": [55.0, 55.2, 54.9]}
    assert experiment.verdict("residual", residual_rows(worse)).status == stats.NOT_HELD
    # No degradation: plain-56 as good as plain-20 within the noise: undecided.
    flat = {**fig6, "plain56": [57.0, 61.0, 63.0]}
    assert experiment.verdict("residual", residual_rows(flat)).status == stats.UNDECIDED


def test_gradient_verdict_uses_every_seed():
    rows = [{"setting": {"model": m}, "label": m, "grad_init": [[2.0, 1.0]] * 3,
             "grad_epoch1": g} for m, g in (
                 ("plain56", [[0.5, 0.01, 1.0], [0.5, 0.012, 1.0], [0.5, 0.009, 1.0]]),
                 ("resnet56", [[0.5, 0.05, 1.0], [0.5, 0.06, 1.0], [0.5, 0.04, 1.0]]))]
    v = experiment.gradient_verdict(rows)
    assert v.status == stats.HELD and "over 3 seeds" in v.sentence
    # One seed against the claim among three: the interval holds 1x, undecided.
    rows[1]["grad_epoch1"][0] = [0.5, 0.001, 1.0]
    assert experiment.gradient_verdict(rows).status == stats.UNDECIDED


def test_trials_cut_by_the_budget_are_left_out_and_named(tmp_path):
    from cnnlab.runs import RunDir

    config = ExperimentConfig(experiments=("pooling",))
    g = experiment.grid("pooling", config)
    base = experiment.base_train(config, g)
    rows, n = [], 0
    for s, accs in zip(g.settings, ([0.62, 0.63, 0.61], [0.60, 0.61, 0.62],
                                     [0.55, 0.56, 0.54], [0.50, 0.51, 0.52]), strict=True):
        for seed, a in enumerate(accs):
            cut = s == {"pool": 4, "pool_kind": "max"} and seed == 2
            rows.append({"number": n, "state": "COMPLETE", "params": {**s, "seed": seed},
                         "metric_test_accuracy": 0.99 if cut else a,
                         "metric_train_accuracy": a, "params_count": 1, "metric_macs": 2,
                         "epochs": 6, "metric_steps": 100 if cut else 234,
                         "stopped": "time-limit" if cut else "completed",
                         "metric_train_seconds": 1.0, "metric_plateau_share": 0.05,
                         "metric_still_learning": False, "retried": False, "run_dir": None})
            n += 1
    res = experiment.summarise(g, config, base, rows, RunDir(tmp_path))
    by = {r["label"]: r for r in res["rows"]}
    assert by["4x4 max"]["seeds"] == 2 and by["4x4 max"]["cut"] == 1
    assert by["4x4 max"]["test_mean"] == pytest.approx(55.5)  # not pulled up by the cut 99%
    assert res["excluded"] == ["4x4 max seed 2 (stopped by the time-limit after 100 steps)"]
    assert res["verdict"]["excluded"] == res["excluded"]
    assert res["verdict"]["status"] == stats.HELD
    assert by["2x2 max"]["test_ci"] == pytest.approx(
        (stats.mean_interval([62, 63, 61]).high - stats.mean_interval([62, 63, 61]).low) / 2)


# ------------------------------------------------------------------ the rule as data: decide


def claim(*parts, combine=stats.ALL):
    return stats.Claim("c", tuple(parts), combine)


def test_decide_one_sided_agrees_with_the_95_interval_and_scipy():
    # One directional part: held at one-sided 2.5%, i.e. scipy's Welch p (alternative
    # "greater") <= 0.025, i.e. the 95% interval above zero.
    a, b = [61.2, 60.1, 62.5, 61.9], [58.0, 59.5, 57.1]
    up = claim(stats.Comparison.diff("a - b", "a", "b"))
    v = stats.decide(up, {"a": a, "b": b})
    p = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert v.status == stats.HELD and v.p_values["a - b"]["for"] == pytest.approx(p)
    assert v.intervals["a - b"].level == pytest.approx(0.95)
    assert v.intervals["a - b"].low == pytest.approx(stats.difference(a, b).low)
    # The claim the other way round: refuted, by the same numbers.
    down = claim(stats.Comparison.diff("a - b", "a", "b", stats.LESS))
    assert stats.decide(down, {"a": a, "b": b}).status == stats.NOT_HELD
    # Two-sided: all of ALPHA on "held"; a difference can never be refuted.
    two = claim(stats.Comparison.diff("a - b", "a", "b", stats.TWO_SIDED))
    assert astuple(stats.levels(two)) == pytest.approx((0.05, 0.0))
    assert stats.decide(two, {"a": a, "b": b}).status == stats.HELD
    assert stats.decide(two, {"a": [1, 2, 3], "b": [1.1, 2.2, 2.9]}).status == stats.UNDECIDED


def test_levels_follow_the_rule():
    g = stats.Comparison.diff
    assert astuple(stats.levels(claim(g("x", "a", "b")))) == pytest.approx((0.025, 0.025))
    # ALL: each part at 2.5% (intersection-union), "did not hold" by Holm over the 3 parts.
    three = claim(g("x", "a", "b"), g("y", "a", "c"), g("z", "c", "b", guard=True))
    assert astuple(stats.levels(three)) == pytest.approx((0.025, 0.025 / 3))
    # ANY: "held" by Holm over 2 parts, "did not hold" when both are against (IUT).
    either = claim(g("x", "a", "c"), g("y", "b", "c"), combine=stats.ANY)
    assert astuple(stats.levels(either)) == pytest.approx((0.0125, 0.025))
    # Looks: Bonferroni over looks.
    assert astuple(stats.levels(either, looks=2)) == pytest.approx((0.00625, 0.0125))
    with pytest.raises(ValueError, match="looks"):
        stats.levels(either, looks=0)


def test_two_looks_need_a_clearer_result():
    # p ~ 0.02 one-sided: held at the first look (2.5%), undecided at the second (1.25%).
    a, b = [3.0, 5.0, 4.2, 6.1], [2.0, 3.1, 1.9, 3.3]
    up = claim(stats.Comparison.diff("a - b", "a", "b"))
    p = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert 0.0125 < p < 0.025
    assert stats.decide(up, {"a": a, "b": b}).status == stats.HELD
    v = stats.decide(up, {"a": a, "b": b}, looks=2)
    assert v.status == stats.UNDECIDED and v.looks == 2 and "2 looks" in v.rule
    assert v.as_dict()["looks"] == 2


def test_judge_is_the_all_rule_with_holm_for_did_not_hold():
    # A part 95% below zero refutes a one-part claim, but not a three-part one unless it is
    # below at 2.5% / 3 (Holm's first step).
    a, b = [3.0, 5.0, 4.2, 6.1], [2.0, 3.1, 1.9, 3.3]
    below = stats.difference(b, a)  # one-sided p ~ 0.02 below zero
    up = stats.difference([10, 11, 12], [1, 2, 3])
    assert below.sign() == -1 and stats.judge([below]) == stats.NOT_HELD
    assert stats.judge([up, up, below]) == stats.UNDECIDED
    assert stats.judge([up, stats.difference([1, 2, 3], [10, 11, 12])]) == stats.NOT_HELD


def test_a_guard_refutes_but_need_not_be_shown():
    g = stats.Comparison.diff
    c = claim(g("up", "a", "b"), g("not worse", "c", "d", guard=True))
    clear = {"a": [10, 11, 12], "b": [1, 2, 3]}
    assert stats.decide(c, {**clear, "c": [5, 7, 6], "d": [6, 5, 7]}).status == stats.HELD
    assert stats.decide(c, {**clear, "c": [1, 2, 3], "d": [10, 11, 12]}).status == \
        stats.NOT_HELD
    with pytest.raises(ValueError, match="guards belong to ALL"):
        claim(g("x", "a", "b"), g("y", "a", "c", guard=True), combine=stats.ANY)


def test_bad_specs_and_samples_are_clear_errors():
    g = stats.Comparison.diff
    with pytest.raises(ValueError, match="direction"):
        g("x", "a", "b", "up")
    with pytest.raises(ValueError, match="no results for setting 'b'"):
        stats.decide(claim(g("x", "a", "b")), {"a": [1, 2]})
    with pytest.raises(ValueError, match="non-finite"):
        stats.decide(claim(g("x", "a", "b")), {"a": [1, 2], "b": [1, float("nan")]})
    v = stats.decide(claim(g("x", "a", "b")), {"a": [1.0], "b": [1, 2]})
    assert v.status == stats.NO_VERDICT and "fewer than two seeds" in v.sentence


# The audit cases against `cnnlab experiment`'s claims (issue 26): both said "held" before the
# claims went through `stats.decide` (a union of two tests; the best setting by its mean).


def test_experiment_mixed_filters_case_is_not_held_by_a_union():
    rows = [row("3x3", {"kernel": 3}, [63.0, 65.0, 64.2, 66.1]),
            row("5x5", {"kernel": 5}, [55.0, 55.6, 54.8, 55.3]),
            row("7x7", {"kernel": 7}, [62.0, 63.1, 61.9, 63.3])]
    assert experiment.verdict("filters", rows).status == stats.UNDECIDED


def test_experiment_pooling_is_not_the_best_by_mean():
    rows = [row("2x2 max", {"pool": 2, "pool_kind": "max"}, [62.1, 62.4, 61.9]),
            row("2x2 avg", {"pool": 2, "pool_kind": "avg"}, [54.0, 54.3, 53.8]),
            row("4x4 max", {"pool": 4, "pool_kind": "max"}, [58.2, 58.0, 58.4]),
            row("4x4 avg", {"pool": 4, "pool_kind": "avg"}, [57.9, 58.3, 58.1])]
    assert experiment.verdict("pooling", rows).status == stats.UNDECIDED


def test_seeds_added_after_a_verdict_count_as_a_second_look(tmp_path):
    """Rule 6 in the experiment: a summary after `--resume RUN --seeds N` (more seeds than the
    verdict already written) is a second look, and every level is halved; re-summarising the
    same seeds is not a new look. Borderline data: held at one look, not at two."""
    from cnnlab.runs import RunDir
    from cnnlab.tasks.experiment.tables import looks

    run = RunDir(tmp_path)
    assert looks(run, 3) == 1
    run.write_json("results.json", {"seeds": 3, "quick": False,
                                    "verdict": {"status": "undecided", "looks": 1}})
    assert looks(run, 3) == 1 and looks(run, 5) == 2
    run.write_json("results.json", {"seeds": 5, "quick": False,
                                    "verdict": {"status": "held", "looks": 2}})
    assert looks(run, 6) == 3
    # 2x2 beats 4x4 with p between 0.0125 and 0.025 one-sided: held at 1 look, not at 2.
    rows = pooling([60.0, 62.0, 61.0, 63.0], [58.5, 60.5, 59.0, 60.0])
    one, two = (experiment.verdict("pooling", rows, looks=k) for k in (1, 2))
    p = one.p_values["2x2_minus_4x4"]["for"]
    assert 0.0125 < p < 0.025, p
    assert (one.status, one.looks, two.status, two.looks) == (stats.HELD, 1, stats.UNDECIDED, 2)
