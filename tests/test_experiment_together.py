"""The experiment's seeds trained together (tasks/experiment/together.py) against the oracle of
the same trials trained one at a time by `cnnlab train`'s engine: the same seeds, the same
per-trial records (test and training accuracy, the curves, the loss windows, the gradient
norms, steps, sizes), in fp32.

Tolerance: the batched model's grouped convolutions are other oneDNN kernels than the single
nets' and round differently, about one fp32 rounding per operation. The depth study's shallow
plain-cnn keeps that below 1e-5 (measured: identical records). The residual study's deep nets
amplify rounding chaotically: at --quick's lr 0.1 and batch 20, the one-at-a-time run in fp32
itself differs from the same run in float64 by 1e-3 (ResNet-20) and 4e-2 (plain-20) in the
loss by the fourth step, while the batched and the single nets agree to 1e-15 in float64
(measured with tests/test_batched.py's oracle at these shapes; that file checks it in
float64). So the residual records are held to 1e-5 where no step has amplified anything yet
(the gradient norms at initialisation, the first three steps' losses) and to what fp32
rounding itself moves after that. A bug that mixes nets (one seed's batches for all, shared
BatchNorm statistics, one optimiser state) moves the first losses by 1e-2 or more.
"""

from __future__ import annotations

import json

import pytest

from cnnlab.cli import main
from cnnlab.tasks.experiment import together

TIGHT = 1e-5
# What fp32 rounding itself moves in --quick's plain-20 after 5 steps (module docstring):
# losses and gradient norms, and accuracies on 100 images by a few images.
CHAOS = {"loss": 5e-2, "accuracy": 0.05, "norm": 0.6}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the CIFAR-10 decode, once for the module


def run(data, out, *flags) -> dict:
    assert main(["experiment", *flags, "--quick", "--seeds", "3", "--limit-per-class", "10",
                 "--threads", "1", "--data", str(data), "--out", str(out), "-q",
                 "--no-report"]) == 0
    return json.loads((out / "results.json").read_text())


def trials(out, name) -> dict:
    """(setting, seed) -> the trial's row of the study (trials.csv's source: the storage)."""
    from cnnlab.tasks import study, study_rows

    s = study.open_study(f"sqlite:///{out / name / 'study.db'}", f"experiment-{name}")
    rows = {}
    for r in study_rows.trial_rows(s):
        assert r["state"] == "COMPLETE", r
        key = json.dumps({k: v for k, v in r["params"].items() if k != "seed"}, sort_keys=True)
        rows[key, r["params"]["seed"]] = r
    return rows


def close(a, b, path="", rel=TIGHT, abs=TIGHT) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]", rel, abs)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=abs), path
    else:
        assert a == b, path


def chaotic(k: str, a, b, path: str) -> None:
    """A residual record after the first steps: exact in its structure (lengths, steps), its
    numbers within what fp32 rounding itself moves."""
    if k == "metric_loss_curve":
        close(a[:3], b[:3], path)  # the first three steps: no amplification yet
        close([s for s, _ in a], [s for s, _ in b], path)
        close([v for _, v in a], [v for _, v in b], path, rel=CHAOS["loss"], abs=0)
    elif k == "metric_grad_epoch1":
        close(a, b, path, rel=CHAOS["norm"], abs=0)
    elif k == "metric_curve":
        close([p[0] for p in a], [p[0] for p in b], path)
        close([p[1:] for p in a], [p[1:] for p in b], path, rel=0, abs=CHAOS["accuracy"])
    elif k in ("metric_test_accuracy", "metric_train_accuracy"):
        close(a, b, path, rel=0, abs=CHAOS["accuracy"])
    elif k == "metric_plateau_share":
        pass  # a ratio of loss differences: amplifies the losses' rounding further
    elif k == "metric_still_learning":
        pass  # decided by the plateau share
    else:
        close(a, b, path)


@pytest.mark.parametrize("name", ["residual", "depth"])
def test_seeds_trained_together_equal_one_at_a_time(shared_data, tmp_path, cache, monkeypatch,
                                                    name):
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    # fp32: under bf16 autocast (auto on a CPU with AMX) the grouped and the single convs
    # round their bf16 products differently, 1e-3 at the first step.
    monkeypatch.setenv("CNNLAB_PRECISION", "fp32")
    # The depth study's plain-cnn trains alone by default; batched here, for the machinery.
    monkeypatch.setattr(together, "TOGETHER", frozenset({name}))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    one = run(data, tmp_path / "one", name, "--one-at-a-time")
    both = run(data, tmp_path / "both", name)
    alone, grouped = trials(tmp_path / "one", name), trials(tmp_path / "both", name)
    assert alone.keys() == grouped.keys() and len(alone) == 3 * len(
        one["experiments"][name]["rows"])
    keys = [k for k in alone[next(iter(alone))] if k.startswith("metric_")
            and k not in ("metric_train_seconds",)]
    if name == "residual":
        assert {"metric_grad_init", "metric_grad_epoch1", "metric_loss_curve"} <= set(keys)
    for key, a in alone.items():
        b = grouped[key]
        for k in keys:
            if name == "residual":
                chaotic(k, a[k], b[k], f"{key} {k}")
            else:
                close(a[k], b[k], f"{key} {k}")
        assert (a["epochs"], a["stopped"], a["params_count"]) == (
            b["epochs"], b["stopped"], b["params_count"])
        # Really trained together: the three seeds of a setting in one model, one trial each.
        trained = json.loads((tmp_path / "both" / name / b["run_dir"] / "results.json"
                              ).read_text())["runs"][0]
        assert trained["together"] == 3
        assert not (tmp_path / "one" / name / a["run_dir"] / "results.json").read_text().count(
            '"together"')
    # The same table and verdict from the same numbers.
    ra, rb = one["experiments"][name]["rows"], both["experiments"][name]["rows"]
    if name == "depth":
        close([r["test"] for r in ra], [r["test"] for r in rb], "rows")


def test_worker_groups_rebalance_with_the_seeds_trained_together(monkeypatch):
    """Injected one-thread seconds per round; by hand: alone, residual (120 s) outweighs the
    rest, so it runs alone against depth + filters + pooling (144 s); with its seeds together
    at 2x it is 60 s, and the longest-first split pairs depth (60, first of the tie) with
    pooling (104 s) against residual with filters (100 s)."""
    from cnnlab.tasks.experiment import ExperimentConfig, rounds
    from cnnlab.tasks.experiment.parallel import worker_groups

    monkeypatch.setattr(rounds, "ROUND_SECONDS",
                        {"depth": 60.0, "filters": 40.0, "pooling": 44.0, "residual": 120.0})
    monkeypatch.setattr(rounds, "TOGETHER_SPEEDUP", {"residual": 2.0})
    alone = ExperimentConfig(workers=2, together=False)
    both = ExperimentConfig(workers=2)
    assert rounds.expected_seconds("residual", alone) == 120.0
    assert rounds.expected_seconds("residual", both) == 60.0
    assert rounds.expected_seconds("depth", both) == 60.0  # trains alone either way
    assert worker_groups(alone) == [["residual"], ["depth", "filters", "pooling"]]
    assert worker_groups(both) == [["depth", "pooling"], ["filters", "residual"]]
    # One seed: nothing to train together.
    assert rounds.expected_seconds("residual", ExperimentConfig(seeds=1)) == 120.0


def test_rounds_come_in_chunks_of_the_seeds_trained_together():
    from cnnlab.tasks.experiment.rounds import chunks

    assert chunks(3, 3) == [range(0, 3)]
    assert chunks(5, 3) == [range(0, 3), range(3, 5)]
    assert chunks(3, 1) == [range(0, 1), range(1, 2), range(2, 3)]


def test_a_setting_s_queued_seeds_are_claimed_as_one_group(tmp_path):
    """run_study_groups: up to `size` queued trials of one setting per call of the objective,
    in the queue's order; each trial told on its own (a failure is that trial's alone), with
    its share of the group's seconds and its group's numbers."""
    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import study, study_rows

    s = study.open_study(f"sqlite:///{tmp_path / 'study.db'}", "groups")
    for setting in ("a", "b"):
        for seed in range(3):
            params = {"x": setting, "seed": seed}
            s.optuna_study.enqueue_trial(params, user_attrs={study.PLAN: study.plan_key(params)})
    calls = []

    def objective(trials):
        calls.append([t.optuna_trial.number for t in trials])
        out = []
        for t in trials:
            x = t.optuna_trial.suggest_categorical("x", ["a", "b"])
            seed = t.optuna_trial.suggest_int("seed", 0, 10)
            out.append(ValueError("boom") if (x, seed) == ("b", 1)
                       else (float(seed), {"metric_x": x}))
        return out

    reporter = Reporter(quiet=True)
    ran = study.run_study_groups(s, RunDir(tmp_path), objective, 6, reporter,
                                 together.setting_of, 2)
    assert ran == 6
    # Size 2: seeds 0, 1 of a; seed 2 of a alone (the next queued trial is b's); then b.
    assert calls == [[0, 1], [2], [3, 4], [5]]
    rows = {r["number"]: r for r in study_rows.trial_rows(s)}
    assert [rows[n]["state"] for n in range(6)] == ["COMPLETE"] * 4 + ["FAIL", "COMPLETE"]
    assert rows[4]["error"] == "ValueError: boom" and rows[3]["value"] == 0.0
    frozen = {t.number: t for t in s.trials()}
    assert frozen[0].user_attrs["together"] == [0, 1] and "together" not in frozen[2].user_attrs
    assert rows[0]["seconds"] == rows[1]["seconds"]
    # Nothing queued: nothing claimed, nothing run.
    assert study.run_study_groups(s, RunDir(tmp_path), objective, 6, reporter,
                                  together.setting_of, 3) == 0 and len(calls) == 4
