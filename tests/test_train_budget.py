"""`cnnlab train --budget`: the plan from timings (pure, by hand), a real run that keeps to its
budget, and the lab's train step on equal terms."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnlab import budget
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.tasks import lab, train
from cnnlab.tasks.train import TrainConfig, budget_plan, measure
from cnnlab.tasks.train import calibration as train_calibration


def test_budget_steps_by_hand():
    # 30 s at 0.1 s a step, batch 100: a forward pass is 0.1 / 100 / 3 s per image.
    # No evaluation: 30 * 0.9 / 0.1 = 270 steps.
    assert budget.budget_steps(30, 0.1, 100, 50, 0, 1, 0, 1) == 270
    # The final test, 10,000 images x 6 TTA passes: 60,000 / 3,000 = 20 s of the 27 left,
    # 7 s for training: 70 steps.
    assert budget.budget_steps(30, 0.1, 100, 50, 0, 1, 10_000, 6) == 70
    # An evaluation of 3,000 images (1 s) after every epoch of 50 steps: 270 steps would be 6
    # epochs (6 s of evaluation) -> 210 steps, 5 epochs -> 220, 5 epochs -> 220.
    assert budget.budget_steps(30, 0.1, 100, 50, 3_000, 1, 0, 1) == 220
    # A timed evaluation pass replaces the guess: at 0.2 ms an image the final test's 60,000
    # passes take 12 s of the 27, leaving 15 s: 150 steps (the guess of 1/3 ms gave 70).
    assert budget.budget_steps(30, 0.1, 100, 50, 0, 1, 10_000, 6, forward=2e-4) == 150
    # A budget too small for one step still trains one.
    assert budget.budget_steps(0.05, 0.1, 100, 50, 0, 1, 0, 1) == 1


def test_budget_keeps_test_time_augmentation_only_where_it_pays():
    # A test pass of 2 s: six passes add 10 s, two add 2 s. 100 s: 10% is 10 s, all six fit.
    assert budget.budget_tta("flip-translate", 100, 2.0) == "flip-translate"
    assert budget.budget_tta("flip-translate", 30, 2.0) == "flip"  # 3 s: only the flip fits
    assert budget.budget_tta("flip-translate", 10, 2.0) == "none"
    assert budget.budget_tta("flip", 1000, 2.0) == "flip"  # never more than the recipe's


def test_expected_accuracy_by_hand():
    q = budget.QUARTER
    first_e, first_a = q.curve[0]
    # Between two measured points: linear. Halfway between (2, 79.06) and (3, 82.57).
    assert budget.expected_accuracy(q, 2.5) == pytest.approx((79.06 + 82.57) / 2)
    # Below the first point, linear down to chance (10%) at 0 epochs; beyond the last, flat.
    assert budget.expected_accuracy(q, first_e / 2) == pytest.approx(10 + (first_a - 10) / 2)
    assert budget.expected_accuracy(q, 100) == q.curve[-1][1]
    # Without TTA the curve loses what the measurements say (1.0 point).
    assert budget.expected_accuracy(q, 2.0, "none") == pytest.approx(78.06)


def _choose(seconds, timings, prune=True):
    calls = []

    def time_step(shape):
        calls.append(shape.name)
        return timings[shape.name]

    macs = {"quarter": 19_900_000, "full": 65_400_000}
    # The two bf16-measured widths (the fp32 shapes' choice: test_budget_fp32.py).
    chosen, cands = budget.choose_shape(seconds, time_step, macs, n_train=50_000,
                                        test_images=0, eval_images=0, eval_every=1,
                                        tta="flip-translate", test_curve=False, prune=prune,
                                        shapes=(budget.QUARTER, budget.FULL))
    return chosen, cands, calls


def test_calibration_chooses_by_its_timings_and_is_deterministic():
    timings = {"quarter": 0.43, "full": 1.7}  # s per step, as timed on one AMX core
    # 10 minutes, 90% planned: quarter floor(540 / 0.43) = 1255 steps x 512 = 12.85 epochs,
    # past its last point: 87.03%. full floor(540 / 1.7) = 317 steps x 1024 = 6.49 epochs:
    # 88.30 + (89.60 - 88.30) x 0.49 / 4 = 88.46%. The full width wins.
    chosen, cands, calls = _choose(600, timings)
    assert chosen.name == "full" and calls == ["quarter", "full"]
    assert [c.steps for c in cands] == [1255, 317]
    assert cands[0].expected_accuracy == pytest.approx(87.03)
    assert cands[1].expected_accuracy == pytest.approx(88.46, abs=0.01)
    # Only the timings decide: a full width 20% slower per step (2.04 s: 264 steps, 5.41
    # epochs, 86.58 + 1.72 x 0.91 / 1.5 = 87.62%) still wins; 45% slower (2.465 s: 219 steps,
    # 4.49 epochs, 80.44 + 6.14 x 2.49 / 2.5 = 86.54%) does not.
    assert _choose(600, {**timings, "full": 1.7 * 1.2})[0].name == "full"
    slower = _choose(600, {**timings, "full": 1.7 * 1.45})
    assert slower[0].name == "quarter" and slower[1][1].steps == 219
    # 30 s: quarter gets floor(27 / 0.43) = 62 steps (0.63 epochs). Even at half its MACs
    # ratio per image (0.43 / 512 x 3.29 x 0.5 x 1024 = 1.41 s a step) full would get 19 steps
    # (0.39 epochs): it cannot win, so it is not timed at all.
    chosen, cands, calls = _choose(30, timings)
    assert chosen.name == "quarter" and calls == ["quarter"]
    assert cands[0].steps == 62 and not cands[1].timed and cands[1].steps == 19
    # A GPU-like device, where the full width costs hardly more than the quarter (no pruning
    # there): 2 minutes, quarter 251 steps (2.57 epochs, 81.1%), full 216 steps (4.42 epochs,
    # 86.4%): the full width wins sooner.
    chosen, cands, calls = _choose(120, {"quarter": 0.43, "full": 0.5}, prune=False)
    assert chosen.name == "full" and calls == ["quarter", "full"]
    assert [c.steps for c in cands] == [251, 216]


def test_budget_share_and_bad_budgets():
    cfg = train.TrainConfig(data="d", models=("simple-cnn", "fast-cifar"), seeds=3, budget=2)
    assert train.budget_share(cfg) == pytest.approx(20.0)  # 120 s over 6 (model, seed) runs
    with pytest.raises(CnnlabError, match="not both"):
        train.TrainConfig(data="d", budget=1, epochs=2)
    with pytest.raises(CnnlabError, match="positive"):
        train.TrainConfig(data="d", budget=0)


def test_lab_train_step_gives_every_model_the_same_budget_and_seeds():
    plan = lab.plan_train(lab.LabConfig(data_root="../shared/data"))
    cfg = plan.config
    assert cfg.budget == lab.TRAIN_MINUTES and cfg.seeds == 3 and cfg.epochs is None
    assert cfg.models == lab.TRAIN_MODELS
    assert f"--budget {lab.TRAIN_MINUTES:g}" in plan.command and "--seeds 3" in plan.command


@pytest.mark.slow
def test_budget_run_keeps_to_its_share_and_records_it(shared_data, tmp_path, monkeypatch):
    """Two models x 2 seeds, 0.8 minutes: 12 s per run, measured on this machine. The margin:
    training plus the final test within 1.5x the share (the plan aims at 90%; a busy machine
    may slow the run after its timing)."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    out = tmp_path / "run"
    assert main(["train", str(data), "-m", "simple-cnn", "-m", "plain-cnn",
                 "--limit-per-class", "100", "--batch-size", "100", "--budget", "0.8",
                 "--seeds", "2", "--no-report",
                 "--out", str(out), "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    for m in res["models"]:
        assert m["budget_seconds"] == pytest.approx(12.0)
    for r in res["runs"]:
        plan = json.loads((Path(out) / f"{r['model']}-seed{r['seed']}" / "budget.json")
                          .read_text())
        assert r["planned_steps"] == plan["steps"] >= 1
        # The share is also a hard stop, checked after each epoch (10 steps here): on a machine
        # slower than its own timing said (CI runs two test processes at once) the run stops
        # there, short of its plan, and says so.
        if r["stopped"] == "completed":
            assert r["steps"] == plan["steps"]
        else:
            assert r["stopped"] == "time-limit" and r["steps"] < plan["steps"]
        assert r["train_seconds"] + r["eval_seconds"] <= 1.5 * 12.0
    # Every seed of a model is tested alike: the first seed's choice of TTA holds for all.
    for model in ("simple-cnn", "plain-cnn"):
        assert len({r["tta"] for r in res["runs"] if r["model"] == model}) == 1


def test_lab_gives_the_experiments_more_of_a_budget_on_one_cpu(monkeypatch):
    """The experiments step runs two processes on two CPUs and one on one (lab.py): alone it
    needs more of the same minutes, taken from the train step. The CPUs are the affinity mask's
    (experiment.available_cores)."""
    cfg = lab.LabConfig(data_root="../shared/data", budget=40)
    shares = {}
    for cpus in (1, 2):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        shares[cpus] = lab.budget_shares(cfg)
    assert shares[1]["experiments"] > shares[2]["experiments"]
    assert shares[1]["train"] < shares[2]["train"]
    assert sum(shares[1].values()) == pytest.approx(sum(shares[2].values()))


def test_lab_budget_shares_the_minutes_among_the_training_steps():
    root = "../shared/data"
    default = lab.LabConfig(data_root=root)
    fixed = sum(s.seconds for s in lab.STEPS if s.name not in lab.TRAINING_STEPS) / 60
    cfg = lab.LabConfig(data_root=root, budget=40)
    shares = lab.budget_shares(cfg)
    # What the fixed steps and the train step's 30 s of decoding leave, split 6 : 5.3 (two
    # CPUs: the experiments run in two processes) or 6 : 9.3 (one).
    left = 40 - fixed - 0.5
    e = lab.experiment_minutes()
    assert shares["train"] == pytest.approx(left * 6 / (6 + e))
    assert shares["experiments"] == pytest.approx(left * e / (6 + e))
    assert lab.plan_train(cfg).config.budget == pytest.approx(shares["train"], abs=0.01)
    assert lab.plan_train(cfg).config.seeds == 3  # more minutes: longer runs, same lab
    exp = lab.plan_experiments(cfg).config
    assert exp.budget == pytest.approx(shares["experiments"], abs=0.01) and exp.seeds == 3
    assert f"--budget {exp.budget:g}" in lab.plan_experiments(cfg).command
    # The estimates the lab prints follow the budget; without one, the default plan.
    assert sum(s.estimate(cfg) for s in cfg.selected()) == pytest.approx(40 * 60, abs=1)
    assert lab.budget_shares(default) == {} and lab.plan_experiments(default).config.budget is None
    # Only the selected training steps share it.
    only = lab.LabConfig(data_root=root, budget=30, only=("train",))
    assert lab.budget_shares(only) == {"train": pytest.approx(30 - 0.5)}
    with pytest.raises(CnnlabError, match="too little"):
        lab.LabConfig(data_root=root, budget=5)
    with pytest.raises(CnnlabError, match="not both"):
        lab.LabConfig(data_root=root, budget=30, quick=True)


def _train_results(resnet_accs, cnn_accs, budget=40.0):
    def model(name, accs, steps):
        import statistics

        return {"model": name, "recipe": "fast", "lr": 0.1, "seeds": len(accs),
                "test_accuracy_mean": statistics.fmean(accs),
                "test_accuracy_std": statistics.stdev(accs), "params": 1, "macs": 1,
                "epochs": 1, "epochs_trained": 0.5, "train_seconds": 30.0,
                "images_per_second": 1.0, "budget_seconds": budget, "steps": steps}

    runs = ([{"model": "resnet18", "test_accuracy": a / 100} for a in resnet_accs]
            + [{"model": "simple-cnn", "test_accuracy": a / 100} for a in cnn_accs])
    return {"n_train": 50_000, "n_test": 10_000, "classes": [str(i) for i in range(10)],
            "models": [model("resnet18", resnet_accs, 21), model("simple-cnn", cnn_accs, 96)],
            "runs": runs}


def test_lab_train_section_calls_a_net_near_chance_too_short_to_decide(tmp_path):
    from cnnlab.report import lab as lab_report

    # ResNet-18 at chance after 21 steps (as measured with 40 s per run): no verdict.
    s = lab_report.Section("train", "t", "done")
    lab_report._train(s, _train_results([9.9, 10.6, 9.3], [49.4, 46.1, 52.7]), tmp_path,
                      "train")
    text = " ".join(s.notes)
    assert "too short to decide" in text and "resnet18 is still near chance" in text
    assert "21 optimizer steps" in text and "plain CNN is better" not in text
    # Both learning: the Welch interval and its verdict, as before.
    s = lab_report.Section("train", "t", "done")
    lab_report._train(s, _train_results([60.1, 61.0, 59.4], [49.4, 46.1, 52.7]), tmp_path,
                      "train")
    text = " ".join(s.notes)
    assert "too short" not in text and "ResNet-18 is better" in text


def _images(n: int, seed: int = 0) -> tuple:
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize(("n_test", "timed"), [
    (200, 200),     # a test set smaller than one evaluation batch: timed whole
    (501, 501),     # just over one batch: whole (the pass the budget pays for)
    (3_000, 1_000),  # a large one: 2 x EVAL_BATCH images after the untimed batch
    (0, 100),       # no test images: the training images stand in
])
def test_forward_seconds_times_what_a_test_set_has(n_test, timed, monkeypatch):
    """The budget's timing of an evaluation pass, on any size of test set (200 images, from
    `--limit-per-class 20`, was an empty slice and a ZeroDivisionError)."""
    import torch

    train_x, train_y = _images(100, 1)
    test_x, test_y = _images(n_test)
    data = SimpleNamespace(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                           mean=(0.5,) * 3, std=(0.25,) * 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    passes = []
    real = measure.accuracy

    def spy(m, x, y, *args, **kwargs):
        passes.append(len(x))
        return real(m, x, y, *args, **kwargs)

    monkeypatch.setattr(measure, "accuracy", spy)
    recipe = SimpleNamespace(normalization="dataset")
    seconds = measure.forward_seconds(model, data, recipe, "fp32", torch.device("cpu"))
    assert passes == [min(max(n_test, 100), measure.EVAL_BATCH), timed]
    assert seconds > 0 and math.isfinite(seconds)


def test_a_resumed_run_keeps_its_plan_and_its_shapes_without_timing(tmp_path, monkeypatch):
    """--resume reads budget.json and calibration.json back (the schedule a checkpoint was
    trained under) instead of timing again; a damaged plan is one line naming the file."""
    from cnnlab.runs import RunDir

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run timed again")

    monkeypatch.setattr(budget_plan, "seconds_per_step", no_timing)
    monkeypatch.setattr(budget_plan, "forward_seconds", no_timing)
    monkeypatch.setattr(train_calibration, "_calibrate", no_timing)
    run = RunDir(tmp_path)
    plan = {"seconds": 12.0, "seconds_per_step": 0.5, "forward_seconds": 1e-3, "steps": 21,
            "tta": "flip"}
    run.write_json("budget.json", plan)
    cfg = train.TrainConfig(data="d", budget=1)
    resumed = budget_plan.plan_steps(cfg, None, None, None, None, "fp32", None, 10, None,
                                     run, resume=True, share=99.0)
    assert resumed == plan
    calibration = {"fast-cifar": {"model": "fast-cifar", "chosen": "full", "seconds": 4.5,
                                  "step_seconds": 1.7, "candidates": []}}
    run.write_json("calibration.json", calibration)
    assert train_calibration.calibrate_all(cfg, None, None, run, None,
                                           resume=True) == calibration
    for damaged, message in ((plan | {"steps": 0}, "a plan of 0 steps"),
                             (plan | {"tta": "mirror"}, "augmentation 'mirror'"),
                             ({k: v for k, v in plan.items() if k != "steps"},
                              "no valid 'steps'"),
                             ('{"seconds": 12.0, "ste', "not valid JSON")):  # cut short
        if isinstance(damaged, str):
            run.file("budget.json").write_text(damaged)
        else:
            run.write_json("budget.json", damaged)
        with pytest.raises(CnnlabError) as exc:
            budget_plan.plan_steps(cfg, None, None, None, None, "fp32", None, 10, None, run,
                                   resume=True, share=99.0)
        assert str(exc.value).startswith(f"{run.file('budget.json')} is damaged: ")
        assert message in str(exc.value)


def test_an_unknown_shape_is_named():
    assert budget.shape_named("full") is budget.FULL
    with pytest.raises(CnnlabError, match=r"unknown budget shape 'ful' \(did you mean: full"):
        budget.shape_named("ful")


@pytest.mark.slow
def test_a_budget_on_a_tiny_test_set_trains_and_tests(shared_data, tmp_path, monkeypatch):
    """The command that ended in a ZeroDivisionError: 200 test images, a 12 s budget."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    out = tmp_path / "run"
    assert main(["train", str(data), "--limit-per-class", "20", "--batch-size", "50",
                 "--budget", "0.2", "--no-report", "--out", str(out), "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    (r,) = res["runs"]
    plan = json.loads((out / "fast-cifar-seed0" / "budget.json").read_text())
    assert r["n_test"] == 200 and plan["forward_seconds"] > 0 and r["steps"] >= 1
    assert 0 <= r["test_accuracy"] <= 1


def test_the_batch_follows_the_steps_the_budget_buys():
    """Issue 26: a net the recipe was not tuned for gets the batch that buys it >= 100 steps.
    ResNet-18's one-thread fp32 step times (BENCHMARKS.md): 0.274 s at 64, 0.434 at 128, 0.763
    at 256, ~2.9 at 1024 (512 interpolated: 1.5). 40 s x 0.9 = 36 s buys 12 steps at 1024, 24 at
    512, 47 at 256, 83 at 128, 131 at 64 -> 64, lr 0.1 x sqrt(64/1024) = 0.025 (by hand)."""
    from cnnlab.budget import batch_for_steps

    resnet18 = {1024: 2.9, 512: 1.5, 256: 0.763, 128: 0.434, 64: 0.274}
    batch, lr = batch_for_steps(1024, 0.1, 40.0, resnet18)
    assert (batch, round(lr, 4)) == (64, 0.025)
    # 60 s: 54 s buys 124 steps at 128 -> 128, lr 0.1 x sqrt(1/8) = 0.0354
    batch, lr = batch_for_steps(1024, 0.1, 60.0, resnet18)
    assert (batch, round(lr, 4)) == (128, 0.0354)
    # simple-cnn: 0.913 s at 1024 buys 39 steps in 40 s; 512 (~0.45 s) 80; 256 (0.194 s) 185
    simple = {1024: 0.913, 512: 0.45, 256: 0.194}
    assert batch_for_steps(1024, 0.1, 40.0, simple)[0] == 256
    # A long budget keeps the recipe's batch and lr, and times nothing else.
    assert batch_for_steps(1024, 0.1, 600.0, {1024: 2.9}) == (1024, 0.1)
    # Never below the floor, even when no batch buys the steps.
    assert batch_for_steps(128, 0.1, 5.0, {128: 1.0, 64: 0.6})[0] == 64


def test_the_batch_choice_pays_for_the_evaluations_first():
    """Issue 26: the batch rule counts the run's evaluations, as its plan will. ResNet-18's
    one-thread step times (above) and an evaluation pass of 1.1 ms per image (a third of a
    training step's 3.4 ms per image at batch 128), 10,000 test images, 50,000 training images,
    60 s. By hand: 60 x 0.9 = 54 s; the test curve's last pass is the final test (no TTA: 0
    extra passes), one evaluation in < 1 epoch: 54 - 10,000 x 0.0011 = 43 s buys
    floor(43 / 0.434) = 99 steps at 128 (< 100) and floor(43 / 0.274) = 156 at 64 -> 64, lr 0.025.
    Without the evaluations 54 s buy 124 at 128 -> 128 (the rule as it was)."""
    from cnnlab.budget import EvalCost, batch_for_steps, steps_bought

    resnet18 = {1024: 2.9, 512: 1.5, 256: 0.763, 128: 0.434, 64: 0.274}
    curve = EvalCost(forward=0.0011, n_train=50_000, eval_images=10_000, eval_every=1,
                     test_images=10_000, test_passes=0)
    assert steps_bought(60.0, 128, 0.434) == 124
    assert steps_bought(60.0, 128, 0.434, curve) == 99
    assert steps_bought(60.0, 64, 0.274, curve) == 156
    assert batch_for_steps(1024, 0.1, 60.0, resnet18)[0] == 128
    batch, lr = batch_for_steps(1024, 0.1, 60.0, resnet18, evals=curve)
    assert (batch, round(lr, 4)) == (64, 0.025)
    # No curve, the final test with flip TTA (2 passes): 54 - 2 x 11 = 32 s -> 73 at 128,
    # 116 at 64.
    flip = EvalCost(forward=0.0011, n_train=50_000, eval_images=0, eval_every=1,
                    test_images=10_000, test_passes=2)
    assert steps_bought(60.0, 128, 0.434, flip) == 73
    assert batch_for_steps(1024, 0.1, 60.0, resnet18, evals=flip)[0] == 64
    # Evaluations during training count by the epochs: simple-cnn at 512 (97 steps an epoch,
    # a 0.3 ms pass over 10,000 = 3 s each): 54 s -> 120 steps = 2 epochs -> 48 s -> 106.
    simple = {1024: 0.913, 512: 0.45}
    cheap = replace(curve, forward=0.0003)
    assert steps_bought(60.0, 512, 0.45, cheap) == 106
    assert batch_for_steps(1024, 0.1, 60.0, simple, evals=cheap)[0] == 512


def test_a_net_the_recipe_was_not_tuned_on_gets_the_batch_its_budget_steps_call_for(
        shared_data, tmp_path, monkeypatch):
    """Issue 26 item 1, end to end on real CIFAR with injected step timings: under --budget,
    resnet20 (not the fast recipe's net) trains at the batch batch_for_steps picks from the
    measured seconds per image, with the lr scaled by sqrt; fast-cifar keeps its recipe's
    batch; batches.json keeps the choice for --resume and the run records it."""
    from cnnlab.tasks.train import batch_choice

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    # 4 ms per image: at batch 1024 a step is 4.1 s; the share (0.3 min / 2 runs = 9 s, x 0.9)
    # buys 1 step at 1024 ... 31 at 64: no batch buys 100 -> the floor, 64; lr x sqrt(1/16).
    monkeypatch.setattr(batch_choice, "seconds_per_step", lambda recipe, *a: 0.004 * 64)
    # 1 ms per image of an evaluation pass: the 200 test images cost 0.2 s a pass.
    monkeypatch.setattr(batch_choice, "forward_seconds", lambda *a: 0.001)
    out = tmp_path / "run"
    assert main(["train", str(shared_data("cifar10", "cifar10-jpg.zip")), "-m", "resnet20",
                 "--limit-per-class", "20", "--budget", "0.3", "--seeds", "2", "--threads",
                 "1", "--no-report", "--out", str(out), "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    (rec,) = res["batches"]
    assert (rec["model"], rec["batch_size"], rec["recipe_batch_size"]) == ("resnet20", 64, 1024)
    assert rec["lr"] == pytest.approx(rec["recipe_lr"] * 0.25)
    # The evaluations paid first (by hand): flip-translate's 5 extra passes (1.0 s) exceed a
    # tenth of 9 s, flip's one (0.2 s) does not -> flip, 2 passes: 8.1 - 0.4 = 7.7 s; 200
    # images / 64 = 3 steps an epoch, the test curve 0.2 s an epoch: 30 steps -> 10 passes
    # -> 22 -> 8 passes -> 23 -> 23 (budget_steps). Without them: floor(8.1 / 0.256) = 31.
    assert (rec["tta"], rec["expected_steps"]) == ("flip", 23)
    assert rec["forward_seconds"] == 0.001
    assert {r["batch_size"] for r in res["runs"]} == {64}
    assert all(r["lr"] == pytest.approx(rec["lr"]) for r in res["runs"])
    assert json.loads((out / "batches.json").read_text())["resnet20"] == rec
    assert batch_choice.batch_skipped(
        replace(TrainConfig(data="d", budget=1.0), models=("fast-cifar",)), "fast-cifar") == (
        "the recipe was tuned on this net")
