"""The residual claim's plateau check (the doubling test) and He et al.'s Fig. 6 band, against
hand-computed values: curves made by hand that have plateaued, are still learning, or are stuck
at chance; the band is the 95% t interval of the mean over seeds, not the seeds' range."""

from __future__ import annotations

import math

import pytest

from cnnlab.analysis import stats
from cnnlab.tasks import experiment
from cnnlab.tasks.experiment import ExperimentConfig
from cnnlab.tasks.experiment.learning import (
    AT_CHANCE,
    LEARNING,
    PLATEAUED,
    UNKNOWN,
    doubling_test,
    error_band,
)

T975_DF2 = 4.302652729911275  # t quantile 0.975 at 2 degrees of freedom (tables; scipy agrees)


def curve(errors_pct: list[float], every: int = 100) -> list[list[float]]:
    """[step, training accuracy (fraction), test accuracy] points, one per `every` steps."""
    return [[every * (i + 1), 1 - e / 100, 0.0] for i, e in enumerate(errors_pct)]


def test_t_quantile_is_the_tables_value():
    scipy_stats = pytest.importorskip("scipy.stats")
    assert scipy_stats.t.ppf(0.975, 2) == pytest.approx(T975_DF2)


def test_plateaued_when_doubling_the_steps_changes_the_error_within_the_noise():
    # error at S = 200 and 2S = 400: drops 0.5, -0.3, 0.2 points
    curves = [curve([70, 40.5, 38, 40.0]), curve([72, 39.7, 37, 40.0]),
              curve([71, 40.2, 39, 40.0])]
    p = doubling_test(curves, classes=10)
    assert (p.status, p.half_step, p.end_step, p.seeds) == (PLATEAUED, 200, 400, 3)
    # by hand: mean 0.1333, sample sd sqrt(0.32667 / 2) = 0.40415, se 0.23333
    mean, se = 0.4 / 3, math.sqrt(((0.5 - 0.4 / 3) ** 2 + (-0.3 - 0.4 / 3) ** 2
                                   + (0.2 - 0.4 / 3) ** 2) / 2 / 3)
    assert p.drop.estimate == pytest.approx(mean)
    assert p.drop.low == pytest.approx(mean - T975_DF2 * se)
    assert p.drop.low == pytest.approx(-0.8706, abs=1e-4)
    assert p.final_error == pytest.approx(40.0)
    assert p.text().startswith("plateaued: training error 40.0% at step 400, -0.1 points")


def test_still_learning_when_the_drop_lies_above_the_noise():
    curves = [curve([80, 60.0, 57, 55.0]), curve([80, 61.0, 57, 55.5]),
              curve([80, 60.5, 57, 54.8])]
    p = doubling_test(curves, classes=10)
    assert p.status == LEARNING
    assert p.drop.estimate == pytest.approx((5.0 + 5.5 + 5.7) / 3)
    assert p.drop.low > 0


def test_a_flat_curve_at_chance_is_no_plateau():
    # plain-56 at 10 classes, flat at 89-90% error: no drop, but at chance (accuracy < 20%)
    curves = [curve([90, 89.9, 90, 90.1]), curve([90, 90.2, 90, 89.8]),
              curve([90, 89.5, 90, 89.6])]
    assert doubling_test(curves, classes=10).status == AT_CHANCE
    # the same error with 2 classes (chance 50%) is well above chance ... and still flat
    assert doubling_test([curve([20, 10.5, 10, 10.0]), curve([20, 9.5, 10, 10.2]),
                          curve([20, 10.1, 10, 10.1])], classes=2).status == PLATEAUED


def test_fewer_than_three_seeds_give_no_plateau_check():
    p = doubling_test([curve([70, 40, 40, 40]), curve([70, 41, 40, 40])], classes=10)
    assert p.status == UNKNOWN and p.drop is None
    assert "needs 3" in p.text()


def test_the_band_is_the_95_percent_t_interval_of_the_mean():
    band = error_band([curve([10.0, 50.0]), curve([12.0, 50.0]), curve([14.0, 50.0])])
    assert band["steps"] == [100, 200]
    # by hand: errors 10, 12, 14 -> mean 12, sd 2, half-width 4.3027 * 2 / sqrt(3) = 4.968
    half = T975_DF2 * 2 / math.sqrt(3)
    assert band["mean"][0] == pytest.approx(12.0)
    assert band["low"][0] == pytest.approx(12.0 - half) and half == pytest.approx(4.968, 1e-3)
    assert band["high"][0] == pytest.approx(12.0 + half)  # the range would be 10 .. 14
    assert band["low"][1] == band["high"][1] == pytest.approx(50.0)  # equal seeds: a point
    one = error_band([curve([30.0])])
    assert one["low"] == one["high"] == one["mean"] == [pytest.approx(30.0)]


# --------------------------------------------------------------- through summarise and verdict


def trial_rows(g, curves_by_model: dict[str, list[list[float]]]) -> list[dict]:
    """Completed trials as the study stores them: per seed, the final accuracies and the
    training-error curve (points every 100 steps)."""
    rows = []
    plan = [(s, seed) for s in g.settings for seed in range(len(curves_by_model[s["model"]]))]
    for n, (s, seed) in enumerate(plan):
        errs = curves_by_model[s["model"]][seed]
        acc = 1 - errs[-1] / 100
        rows.append({"number": n, "state": "COMPLETE", "params": {**s, "seed": seed},
                     "metric_test_accuracy": acc, "metric_train_accuracy": acc,
                     "params_count": 1, "metric_macs": 2, "epochs": 4, "metric_steps": 400,
                     "stopped": "completed", "metric_train_seconds": 1.0,
                     "metric_plateau_share": 0.05, "metric_still_learning": False,
                     "retried": False, "run_dir": None, "metric_grad_init": [2.0, 1.0],
                     "metric_grad_epoch1": [0.5, 1.0], "metric_curve": curve(errs),
                     "metric_loss_curve": [[10, 2.0]]})
    return rows


FIG6 = {  # training error (%) at steps 100..400, three seeds each; every net flat from 200
    "plain20": [[70, 40.0, 40.2, 40.1], [70, 41.0, 40.8, 41.2], [70, 40.4, 40.6, 40.3]],
    "resnet20": [[70, 35.0, 35.1, 34.9], [70, 36.0, 35.8, 36.1], [70, 35.5, 35.2, 35.4]],
    "plain56": [[85, 55.0, 55.3, 55.2], [85, 56.0, 56.4, 55.8], [85, 55.4, 55.1, 55.6]],
    "resnet56": [[70, 33.0, 33.1, 32.9], [70, 34.0, 33.8, 34.1], [70, 33.5, 33.4, 33.6]],
}


def summarised(tmp_path, curves_by_model, classes: int = 10):
    """The study's summary of these curves, its design set to `classes` classes (the chance
    margin of the doubling test: the hand-made errors above are for 10 classes)."""
    from dataclasses import replace
    from unittest import mock

    from cnnlab.runs import RunDir
    from cnnlab.tasks.experiment.designs import DESIGNS
    from cnnlab.tasks.experiment.tables import summarise

    design = replace(DESIGNS["residual"], classes=classes)
    with mock.patch.dict(DESIGNS, {"residual": design}):
        config = ExperimentConfig(experiments=("residual",))
        g = experiment.grid("residual", config)
        return summarise(g, config, experiment.base_train(config, g),
                         trial_rows(g, curves_by_model), RunDir(tmp_path))


def test_the_chance_margin_is_the_designs_classes(tmp_path):
    # the same curves: with 10 classes every net is well above chance (10% + 10 points); with
    # 2 classes plain-56's ~55% error is within 10 points of chance (50%)
    ten = {r["setting"]["model"]: r["plateau"]["status"]
           for r in summarised(tmp_path, FIG6)["rows"]}
    two = summarised(tmp_path, FIG6, classes=2)
    assert ten["plain56"] == PLATEAUED
    assert {r["setting"]["model"]: r["plateau"]["status"] for r in two["rows"]}["plain56"] \
        == AT_CHANCE
    assert two["classes"] == 2 and two["verdict"]["status"] == stats.TOO_SHORT


def test_plateaued_nets_decide_and_the_doubling_test_is_in_the_rows(tmp_path):
    res = summarised(tmp_path, FIG6)
    assert res["verdict"]["status"] == stats.HELD
    by = {r["setting"]["model"]: r for r in res["rows"]}
    assert all(r["plateau"]["status"] == PLATEAUED for r in by.values())
    assert by["plain56"]["curve_band"]["mean"][-1] == pytest.approx((55.2 + 55.8 + 55.6) / 3)


def test_a_net_still_learning_or_at_chance_makes_it_too_short(tmp_path):
    learning = {**FIG6, "plain56": [[85, 65.0, 60.0, 55.2], [85, 66.0, 61.0, 55.8],
                                    [85, 65.4, 60.1, 55.6]]}
    v = summarised(tmp_path, learning)["verdict"]
    assert v["status"] == stats.TOO_SHORT
    assert v["sentence"].startswith("plain56 still learning by the doubling test")
    assert "would read \u201cheld\u201d" in v["sentence"]
    chance = {**FIG6, "plain56": [[90, 90.0, 89.9, 90.1], [90, 89.6, 90.0, 89.8],
                                  [90, 90.3, 90.2, 90.0]]}
    v = summarised(tmp_path, chance)["verdict"]
    assert v["status"] == stats.TOO_SHORT and "plain56 at chance" in v["sentence"]
    # every seed exactly at chance: zero spread, which alone would be "no verdict"; the run is
    # too short, and says so
    exact = {**FIG6, "plain56": [[90, 90.0, 90.0, 90.0]] * 3}
    v = summarised(tmp_path, exact)["verdict"]
    assert v["status"] == stats.TOO_SHORT and "would read \u201cno verdict\u201d" in v["sentence"]


def test_overlapping_intervals_of_plateaued_nets_are_undecided_not_too_short(tmp_path):
    flat = {**FIG6, "plain56": [[85, 38.0, 38.2, 38.1], [85, 42.0, 42.1, 42.2],
                                [85, 41.0, 41.1, 40.9]]}
    assert summarised(tmp_path, flat)["verdict"]["status"] == stats.UNDECIDED


def test_two_seeds_give_no_residual_verdict(tmp_path):
    two = {m: c[:2] for m, c in FIG6.items()}
    v = summarised(tmp_path, two)["verdict"]
    assert v["status"] == stats.NO_VERDICT and "plateau check" in v["sentence"]


def test_the_figure_draws_the_t_band_not_the_range(tmp_path, monkeypatch):
    import matplotlib.axes

    from cnnlab.report.experiment import plot_experiment

    res = summarised(tmp_path, FIG6)
    drawn = []
    real = matplotlib.axes.Axes.fill_between

    def spy(self, x, y1, y2=0, **kw):
        drawn.append((list(x), list(y1), list(y2)))
        return real(self, x, y1, y2, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", spy)
    assert (tmp_path / plot_experiment(res, tmp_path)).stat().st_size > 0
    plain20 = [s[1] for s in FIG6["plain20"]]  # errors at step 200 over the seeds
    mean = sum(plain20) / 3
    sd = math.sqrt(sum((e - mean) ** 2 for e in plain20) / 2)
    lows = [d[1][1] for d in drawn]
    assert any(lo == pytest.approx(mean - T975_DF2 * sd / math.sqrt(3)) for lo in lows)
    assert not any(lo == pytest.approx(min(plain20)) for lo in lows)


# ------------------------------------------- which decisions stand when some nets still learn
# A net still learning at a constant rate can only end lower: a higher error of a plateaued net
# stands, a lower error of a net still learning does not (claims._valid_parts).

PLAIN20_LEARNING = [[70, 45.0, 42, 40.1], [70, 46.0, 43, 41.2], [70, 45.4, 42, 40.3]]
RESNET56_LEARNING = [[70, 38.0, 35, 32.9], [70, 39.0, 36, 34.1], [70, 38.5, 35, 33.6]]


def test_a_worse_plateaued_plain56_is_shown_whatever_the_nets_it_beats_do(tmp_path):
    # plain-56 plateaued at ~55.5%; plain-20 (~40.5%) and ResNet-56 (~33.5%) still learning:
    # their plateaus can only be lower, so plain-56 trains worse than both at the plateau
    res = summarised(tmp_path, {**FIG6, "plain20": PLAIN20_LEARNING,
                                "resnet56": RESNET56_LEARNING})
    by = {r["setting"]["model"]: r["plateau"]["status"] for r in res["rows"]}
    assert by == {"plain20": LEARNING, "resnet20": PLATEAUED, "plain56": PLATEAUED,
                  "resnet56": LEARNING}
    v = res["verdict"]
    assert v["status"] == stats.HELD
    assert v["intervals"]["degradation"]["low"] > 0 and v["intervals"]["shortcuts"]["low"] > 0
    assert "no decision of the intervals needs its plateau" in v["sentence"]


def test_plain56_still_learning_leaves_degradation_and_shortcuts_too_short(tmp_path):
    learning = {**FIG6, "plain56": [[85, 65.0, 60.0, 55.2], [85, 66.0, 61.0, 55.8],
                                    [85, 65.4, 60.1, 55.6]]}
    v = summarised(tmp_path, learning)["verdict"]
    assert v["status"] == stats.TOO_SHORT
    assert "degradation too short: plain-56 still learning" in v["sentence"]
    assert "shortcuts too short: plain-56 still learning" in v["sentence"]
    assert "resnet_deeper_gain" not in v["sentence"].split("would read")[0]


def test_a_guard_refuted_by_a_resnet56_still_learning_is_not_tested(tmp_path):
    # ResNet-56 ~39.5% and still learning, ResNet-20 plateaued at ~35.5%: the interval says the
    # deeper ResNet trains worse, but its plateau may still come below ResNet-20's
    worse = [[70, 42.0, 40, 38.9], [70, 43.0, 41, 40.1], [70, 42.5, 40, 39.6]]
    res = summarised(tmp_path, {**FIG6, "resnet56": worse})
    v = res["verdict"]
    assert v["intervals"]["resnet_deeper_gain"]["high"] < 0  # refuted by the intervals alone
    assert v["status"] == stats.HELD
    assert "the guard resnet_deeper_gain not tested: ResNet-56 still learning" in v["sentence"]
    assert "the intervals alone would read \u201cdid not hold\u201d" in v["sentence"]
    # the same gap with ResNet-56 at its plateau refutes the guard, whoever else still learns
    flat = [[70, 39.0, 38.9, 38.9], [70, 40.0, 40.2, 40.1], [70, 39.7, 39.5, 39.6]]
    v = summarised(tmp_path, {**FIG6, "resnet56": flat, "plain20": PLAIN20_LEARNING})["verdict"]
    assert v["status"] == stats.NOT_HELD


def test_a_refutation_stands_only_when_the_net_it_beats_had_plateaued(tmp_path):
    # plain-56 plateaued at ~35% against plain-20 still learning at ~40.5%: degradation reads
    # refuted by the intervals, but plain-20's plateau may still come below plain-56's
    low = [[85, 35.0, 35.1, 35.0], [85, 35.4, 35.2, 35.3], [85, 34.8, 35.0, 34.9]]
    v = summarised(tmp_path, {**FIG6, "plain56": low, "plain20": PLAIN20_LEARNING})["verdict"]
    assert v["intervals"]["degradation"]["high"] < 0
    assert v["status"] == stats.TOO_SHORT
    assert "degradation too short: plain-20 still learning (the intervals read refuted)" in (
        v["sentence"])
    # plain-56 still learning at ~38% against plain-20 plateaued at ~40.5%: plain-56's plateau
    # can only be lower still, so the refutation stands
    learning_low = [[85, 44.0, 41.0, 38.1], [85, 45.0, 42.0, 38.3], [85, 44.5, 41.5, 37.9]]
    v = summarised(tmp_path, {**FIG6, "plain56": learning_low})["verdict"]
    assert v["status"] == stats.NOT_HELD
    assert "degradation too short" not in v["sentence"]


def test_the_plateau_rule_only_removes_decisions_from_the_intervals_rule():
    # 300 random experiments (normal seed noise, random true differences, random plateau
    # states): a "did not hold" needs stats.decide's "did not hold", a "held" needs every
    # required part shown at its own level (so the simulated error rates stay bounds), and
    # with every net plateaued the verdict is stats.decide's.
    import random

    from cnnlab.tasks.experiment.claims import _valid_parts

    rng = random.Random(0)
    nets = ("p20", "p56", "r20", "r56")
    spec = stats.Claim("residual", (
        stats.Comparison.diff("degradation", "p56", "p20"),
        stats.Comparison.diff("shortcuts", "p56", "r56"),
        stats.Comparison.diff("resnet_deeper_gain", "r20", "r56", guard=True)),
        combine=stats.ALL)
    lv = stats.levels(spec)
    seen = set()
    for _ in range(300):
        mu = {n: rng.choice((30.0, 33.0, 36.0)) for n in nets}
        samples = {n: [rng.gauss(mu[n], 1.5) for _ in range(3)] for n in nets}
        v = stats.decide(spec, samples)
        state = {n: rng.random() < 0.6 for n in nets}
        checks = {n: {"status": PLATEAUED if state[n] else LEARNING} for n in nets}
        status, _ = _valid_parts(spec, v, 1, state, checks)
        all_state, _ = _valid_parts(spec, v, 1, dict.fromkeys(nets, True),
                                    {n: {"status": PLATEAUED} for n in nets})
        assert all_state == v.status
        if status == stats.NOT_HELD:
            assert v.status == stats.NOT_HELD
        if status == stats.HELD:
            assert all(v.p_values[c]["for"] <= lv.shown for c in ("degradation", "shortcuts"))
        assert status in (v.status, stats.TOO_SHORT) or (
            status == stats.HELD and v.status == stats.NOT_HELD)
        seen.add((v.status, status))
    # the cases the rule exists for were all met
    assert {(stats.HELD, stats.TOO_SHORT), (stats.NOT_HELD, stats.TOO_SHORT),
            (stats.HELD, stats.HELD), (stats.UNDECIDED, stats.TOO_SHORT)} <= seen
