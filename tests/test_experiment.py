"""`cnnlab experiment`: gradient norms against autograd, the equal-parameter widths, the
summaries and verdicts by hand, and the lab's quick `experiments` step on real CIFAR-10 (its
artifacts and its section of the lab report)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from cnnlab.cli import main
from cnnlab.models.registry import count_parameters, create_model
from cnnlab.tasks import experiment
from cnnlab.tasks.experiment import ExperimentConfig, conv_grad_norms, equal_param_width


def test_conv_grad_norms_equal_autograd_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("plain20")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    state = copy.deepcopy(model.state_dict())
    norms = conv_grad_norms(model, x, y)
    oracle = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(oracle(x), y)
    convs = [m.weight for m in oracle.modules() if isinstance(m, nn.Conv2d)]
    grads = torch.autograd.grad(loss, convs)
    assert len(norms) == 19  # plain-20: 19 conv layers and the FC layer
    assert norms == pytest.approx([float(g.norm()) for g in grads], rel=1e-5)
    # BatchNorm's running statistics and every weight untouched; no gradients left behind.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_equal_parameter_widths():
    target = count_parameters(create_model("plain-cnn", depth=4, width=32, kernel=3))
    for kernel in (5, 7):
        w = equal_param_width(kernel, 32)
        counts = {v: count_parameters(create_model("plain-cnn", depth=4, width=v, kernel=kernel))
                  for v in (w - 1, w, w + 1)}
        assert abs(counts[w] - target) == min(abs(c - target) for c in counts.values())
        assert abs(counts[w] - target) / target < 0.1
    assert equal_param_width(3, 32) == 32


def test_plateau_share_by_hand_and_a_net_stuck_at_chance_is_still_learning():
    # 8 windows: the third quarter (windows 4, 5) averages 1.5, the last quarter (6, 7) 1.2;
    # the first window 2.2: (1.5 - 1.2) / (2.2 - 1.2) = 0.3.
    losses = [2.2, 2.0, 1.8, 1.7, 1.6, 1.4, 1.25, 1.15]
    assert experiment.plateau_share(losses) == pytest.approx(0.3)
    assert experiment.still_learning(0.3, 0.6, 10)
    assert not experiment.still_learning(0.05, 0.6, 10)
    # A flat loss at chance is a net that never started, not a converged one.
    assert experiment.still_learning(0.01, 0.12, 10)
    assert experiment.plateau_share([2.3] * 8) is None and experiment.plateau_share([1, 2]) is None


def test_designs_scale_what_the_question_allows():
    config = ExperimentConfig()
    for name in experiment.EXPERIMENTS:
        d = config.design(name)
        base = experiment.base_train(config, experiment.grid(name, config))
        assert base.image_size == d.image_size and base.train_per_class == d.train_per_class
        assert base.train_eval == experiment.TRAIN_EVAL and d.scaled
        # a study on fewer classes trains and tests on those classes only (train/data.py)
        assert base.classes == (None if d.classes == 10 else d.classes)
        # The plain-cnn studies end on settled weights; the residual study keeps its rate
        # constant after the warm-up, so that the doubling test reads its plateau inside a run.
        end = dict(base.recipe_overrides)["schedule"]["end"]
        assert end == (1.0 if name == "residual" else 0.0)
    # Kernel size and pooling are about the image's size: CIFAR's own 32x32 there.
    assert config.design("filters").image_size == config.design("pooling").image_size == 32
    # The residual study fits 1,000 images of 2 classes: its whole training set is the
    # training-error sample (BENCHMARKS.md "The residual question decided in the lab's minutes")
    res = config.design("residual")
    assert (res.classes, res.classes * res.train_per_class) == (2, experiment.TRAIN_EVAL)
    assert ExperimentConfig(epochs=3).design("depth").epochs == 3
    quick = ExperimentConfig(quick=True, limit_per_class=10)
    base = experiment.base_train(quick, experiment.grid("depth", quick))
    assert base.train_per_class is None and base.limit_per_class == 10 and base.epochs == 1


def test_bad_experiment_names_are_one_line_errors(capsys, tmp_path):
    assert main(["experiment", "dpeth", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "depth" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert main(["experiment", "depth", "--data", str(tmp_path / "none.zip"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err


def test_lab_quick_experiments_step_and_its_report_section(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = shared_data("cifar10", "cifar10-jpg.zip").parent.parent
    out = tmp_path / "lab"
    assert main(["lab", "--quick", "--only", "experiments", "--data-root", str(root),
                 "--out", str(out), "-q"]) == 0
    res = json.loads((out / "experiments" / "results.json").read_text())
    assert list(res["experiments"]) == list(experiment.EXPERIMENTS)
    depth, residual = res["experiments"]["depth"], res["experiments"]["residual"]
    assert [r["setting"]["depth"] for r in depth["rows"]] == [1, 2, 4]
    assert depth["n_train"] == 100 and depth["n_test"] == 100
    # One seed: no std, no interval.
    assert all(r["seeds"] == 1 and r["test_std"] is None and r["test_ci"] is None
               for r in depth["rows"])
    trials = (out / "experiments" / "depth" / "trials.csv").read_text().splitlines()
    assert len(trials) == 4
    values = {int(line.split(",")[2]): float(line.split(",")[4]) for line in trials[1:]}
    assert {r["setting"]["depth"]: r["test_mean"] for r in depth["rows"]} == pytest.approx(
        {d: 100 * v for d, v in values.items()})
    statuses = {n: e["verdict"]["status"] for n, e in res["experiments"].items()}
    # The quick grids cannot refute depth (stops at 4 layers), filters (no 7x7) or residual
    # (one depth); pooling could, but --quick is too short to decide.
    assert statuses == {"depth": "not tested", "filters": "not tested",
                        "pooling": "too short to decide", "residual": "not tested"}
    by = {r["setting"]["model"]: r for r in residual["rows"]}
    assert set(by) == {"plain20", "resnet20"}
    for r in by.values():
        assert len(r["grad_init"][0]) == len(r["grad_epoch1"][0]) == 19
        assert r["grad_init"] != r["grad_epoch1"]
    assert (out / "experiments" / "depth" / "depth.png").is_file()
    md = (out / "report.md").read_text()
    assert "Lab B's claims checked" in md and depth["verdict"]["sentence"][:40] in md
    assert "3 or 4 layers the effect drops sharply" in md
    # The cnnlab cells themselves: each depth's test accuracy as the run measured it.
    for r in depth["rows"]:
        assert f"| {r['label']} | {r['test_mean']:.1f}% |" in md


def test_resume_with_more_seeds_adds_seed_rounds_and_refuses_other_flags(shared_data, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    out = tmp_path / "run"
    assert main(["experiment", "pooling", "--quick", "--seeds", "1", "--limit-per-class", "10",
                 "--data", str(data), "--out", str(out), "-q", "--no-report"]) == 0
    first = json.loads((out / "results.json").read_text())["experiments"]["pooling"]
    assert [r["seeds"] for r in first["rows"]] == [1, 1]
    assert main(["experiment", "--resume", str(out), "--seeds", "2", "-q"]) == 0
    again = json.loads((out / "results.json").read_text())["experiments"]["pooling"]
    assert [r["seeds"] for r in again["rows"]] == [2, 2] and again["trials"] == 4
    # Seed 0 was kept, not trained again: the same accuracy, and seed 1 is new.
    assert [r["test"][0] for r in again["rows"]] == [r["test"][0] for r in first["rows"]]
    assert [r["seed_ids"] for r in again["rows"]] == [[0, 1], [0, 1]]
    capsys.readouterr()
    assert main(["experiment", "--resume", str(out), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and len(err.strip().splitlines()) == 1


def test_progress_lines_carry_the_overall_step_over_every_round(shared_data, tmp_path,
                                                                monkeypatch, capsys):
    """One overall display over studies x seed rounds (issue 18): off a terminal every line of
    a round's trials says which step of the whole job it is."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    assert main(["experiment", "pooling", "--quick", "--seeds", "2", "--limit-per-class", "10",
                 "--data", str(data), "--out", str(tmp_path / "run"), "--no-report"]) == 0
    err = capsys.readouterr().err.splitlines()
    first = [ln for ln in err if ln.startswith("[experiment 1/2 pooling seed 0] ")]
    second = [ln for ln in err if ln.startswith("[experiment 2/2 pooling seed 1] ")]
    assert any("trial 0:" in ln for ln in first) and any("trial 3:" in ln for ln in second)


def test_a_gradient_norm_of_exactly_zero_is_read_at_the_float32_floor(tmp_path):
    """The vanishing case the residual study exists to measure: a conv layer whose gradient is
    exactly 0 has no log10. It is read as float32's smallest positive value (the norms are
    fp32, so a norm that is not 0 is never below it) in the verdict, the figure and the
    report's table, instead of a ValueError from math.log10."""
    import math
    import statistics

    from cnnlab.analysis import stats
    from cnnlab.report.experiment import experiment_part, plot_experiment
    from cnnlab.runs import RunDir
    from cnnlab.tasks.experiment.learning import GRAD_FLOOR, log10_norm
    from cnnlab.tasks.experiment.tables import summarise

    # The floor is torch's smallest positive float32 (a subnormal): half of it rounds to 0.
    tiny = torch.nextafter(torch.tensor(0.0), torch.tensor(1.0)).item()
    assert tiny == GRAD_FLOOR and torch.tensor(GRAD_FLOOR / 2).item() == 0.0
    assert log10_norm(0.0) == pytest.approx(-149 * math.log10(2))
    assert log10_norm(0.25) == math.log10(0.25)  # a norm above the floor: as it was

    config = ExperimentConfig(experiments=("residual",))
    g = experiment.grid("residual", config)
    resnet_mid = {"resnet56": [0.05, 0.06, 0.04]}
    rows = []
    for n, (s, seed) in enumerate((s, seed) for s in g.settings for seed in range(3)):
        m = s["model"]
        acc = {"plain20": 0.6, "resnet20": 0.62, "plain56": 0.5, "resnet56": 0.64}[m]
        acc += 0.003 * seed
        # plain-56's middle layer lost its gradient entirely, in every seed, after epoch 1;
        # its last conv at initialisation too (the first-to-last ratio's denominator).
        mid = 0.0 if m == "plain56" else resnet_mid.get(m, [0.02, 0.03, 0.025])[seed]
        rows.append({"number": n, "state": "COMPLETE", "params": {**s, "seed": seed},
                     "metric_test_accuracy": acc, "metric_train_accuracy": acc,
                     "params_count": 1, "metric_macs": 2, "epochs": 10, "metric_steps": 390,
                     "stopped": "completed", "metric_train_seconds": 1.0,
                     "metric_plateau_share": 0.05, "metric_still_learning": False,
                     "retried": False, "run_dir": None,
                     "metric_grad_init": [2.0, 1.0, 0.0 if m == "plain56" else 0.5],
                     "metric_grad_epoch1": [0.5, mid, 1.0],
                     "metric_curve": [[39, acc, acc]], "metric_loss_curve": [[10, 2.0]]})
    res = summarise(g, config, experiment.base_train(config, g), rows, RunDir(tmp_path))
    assert res["grad_floor"] == GRAD_FLOOR
    grads = res["gradients"]
    assert grads["status"] == stats.HELD
    # Oracle: log10 of ResNet-56's smallest norms minus log10 of the floor, by hand.
    gap = grads["intervals"]["log10_resnet_over_plain"]
    assert gap["estimate"] == pytest.approx(
        statistics.fmean(math.log10(v) for v in resnet_mid["resnet56"]) + 149 * math.log10(2))
    assert "1.43e+45x its last conv's gradient" in grads["sentence"]  # 2.0 / 2**-149
    res["plot"] = plot_experiment(res, tmp_path)
    assert (tmp_path / res["plot"]).stat().st_size > 0
    table = experiment_part(res, tmp_path, "").tables[-1]
    plain56 = [r for r in table.rows if r[0] == "plain56" and r[1] == "after epoch 1"]
    assert plain56[0][5].startswith("1.4e-45")  # its smallest layer, at the floor
