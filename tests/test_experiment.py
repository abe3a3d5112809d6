"""`cnnlab experiment`: gradient norms against autograd, the equal-parameter widths, the
summaries and verdicts by hand, and the lab's quick `experiments` step on real CIFAR-10 (its
artifacts and its section of the lab report)."""

from __future__ import annotations

import copy
import json
import statistics
from types import SimpleNamespace

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


def rows_for(name, settings, accs):
    g = experiment.grid(name, ExperimentConfig(experiments=(name,)))
    rows = []
    for n, (s, acc) in enumerate(zip(settings, accs, strict=True)):
        for seed, a in enumerate(acc):
            rows.append({"number": n, "state": "COMPLETE", "params": {**s, "seed": seed},
                         "metric_test_accuracy": a, "metric_train_accuracy": a + 0.1,
                         "params_count": 1, "metric_macs": 2, "epochs": 4, "metric_steps": 60,
                         "stopped": "completed", "metric_train_seconds": 1.0,
                         "retried": False, "run_dir": None})
    return g, rows


def test_summary_and_verdicts_by_hand(tmp_path):
    from cnnlab.runs import RunDir

    accs = [[0.30, 0.32], [0.40, 0.41], [0.45, 0.44], [0.50, 0.52], [0.51, 0.50], [0.52, 0.51],
            [0.50, 0.52], [0.51, 0.52]]
    base = SimpleNamespace(data="d", limit_per_class=200, epochs=4)
    config = ExperimentConfig(experiments=("depth",))
    g, rows = rows_for("depth", [{"depth": d} for d in range(1, 9)], accs)
    res = experiment.summarise(g, config, base, rows, RunDir(tmp_path))
    first = res["rows"][0]
    assert first["test_mean"] == pytest.approx(statistics.fmean([30, 32]))
    assert first["test_std"] == pytest.approx(statistics.stdev([30, 32]))
    # 1 -> 4 layers: +20 points; 4 -> best deeper (51.5): +0.5, less than a quarter: held.
    assert res["verdict"].startswith("Held here") and "+20.0 points" in res["verdict"]
    accs[7] = [0.70, 0.70]
    g, rows = rows_for("depth", [{"depth": d} for d in range(1, 9)], accs)
    verdict = experiment.summarise(g, config, base, rows, RunDir(tmp_path))["verdict"]
    assert verdict.startswith("Did not hold") and "+19.0" in verdict
    pool_rows = [{"label": f"{p}x{p} {k}", "setting": {"pool": p, "pool_kind": k},
                  "test_mean": m} for p, k, m in ((2, "max", 60), (4, "max", 55),
                                                  (4, "avg", 61))]
    assert experiment.verdict("pooling", pool_rows).startswith("Did not hold")
    res_rows = [{"label": m, "setting": {"model": m}, "test_mean": 50, "train_mean": t,
                 "grad_init": g, "grad_epoch1": g1}
                for m, t, g, g1 in (("plain20", 60, [2.0, 1.0], [1.0, 1.0]),
                                    ("resnet20", 62, [1.0, 1.0], [1.0, 1.0]),
                                    ("plain56", 55, [0.01, 1.0], [0.5, 0.01, 1.0]),
                                    ("resnet56", 66, [1.5, 1.0], [0.5, 0.04, 1.0]))]
    text = experiment.verdict("residual", res_rows)
    assert text.startswith("Held here") and "plain-20 40.0% vs plain-56 45.0%" in text
    assert "shrink towards the input (first conv 0.01x" in text
    # After epoch 1 the smallest layer gradients: 0.01 (plain) vs 0.04 (ResNet), over 3x.
    assert "smallest is 0.01 (conv 2 of 3), ResNet-56's 0.04" in text and "keep it up" in text
    res_rows[3]["grad_epoch1"] = [0.5, 0.02, 1.0]
    assert "no sign here" in experiment.verdict("residual", res_rows)


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
    depth, residual = res["experiments"]["depth"], res["experiments"]["residual"]
    assert [r["setting"]["depth"] for r in depth["rows"]] == [1, 2, 4]
    assert depth["n_train"] == 100 and depth["n_test"] == 100
    assert all(r["seeds"] == 1 and r["test_std"] == 0 for r in depth["rows"])
    trials = (out / "experiments" / "depth" / "trials.csv").read_text().splitlines()
    assert len(trials) == 4
    values = {int(line.split(",")[2]): float(line.split(",")[4]) for line in trials[1:]}
    assert {r["setting"]["depth"]: r["test_mean"] for r in depth["rows"]} == pytest.approx(
        {d: 100 * v for d, v in values.items()})
    assert depth["verdict"].startswith("Undecided")  # the quick grid stops at 4 layers
    by = {r["setting"]["model"]: r for r in residual["rows"]}
    assert set(by) == {"plain20", "resnet20"}
    for r in by.values():
        assert len(r["grad_init"]) == len(r["grad_epoch1"]) == 19
        assert r["grad_init"] != r["grad_epoch1"]
    assert (out / "experiments" / "depth" / "depth.png").is_file()
    md = (out / "report.md").read_text()
    assert "Lab B's claims checked" in md and depth["verdict"][:40] in md
    assert "3 or 4 layers the effect drops sharply" in md
