"""Recipes: the schedule at known steps, weight averaging against hand computations, TTA as the
mean of the flips' logits, optimizer groups, and validation of every field."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cnnlab import recipes as R
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import create_model

AIRBENCH = R.Schedule("linear", warmup=0.23, start=0.2, end=0.07)


def test_linear_schedule_at_known_steps():
    total = 100  # warm-up: int(100 * 0.23) = 23 steps
    assert R.lr_factor(AIRBENCH, 0, total) == pytest.approx(0.2)
    assert R.lr_factor(AIRBENCH, 23, total) == pytest.approx(1.0)
    assert R.lr_factor(AIRBENCH, 10, total) == pytest.approx(0.2 + 0.8 * 10 / 23)
    # Down from 1 at step 23 to 0.07 at step 100, linearly: halfway is the mean.
    assert R.lr_factor(AIRBENCH, 23 + 77 // 2, total) == pytest.approx(
        1 - 0.93 * (77 // 2) / 77)
    assert R.lr_factor(AIRBENCH, 100, total) == pytest.approx(0.07)
    assert R.lr_factor(R.Schedule(), 57, total) == 1.0
    no_warmup = R.Schedule("linear", end=0.0)
    assert R.lr_factor(no_warmup, 0, 10) == 1.0 and R.lr_factor(no_warmup, 5, 10) == 0.5


def test_lr_lambda_drives_lambdalr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, R.lr_lambda(AIRBENCH, 100))
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * R.lr_factor(AIRBENCH, s, 100) for s in range(30)])


def test_ema_update_by_hand():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    avg = {k: torch.full_like(v, 2.0) if v.is_floating_point() else v.clone()
           for k, v in model.state_dict().items()}
    current = {k: v.clone() for k, v in model.state_dict().items()}
    R.ema_update(avg, model, decay=0.9)
    for k, v in current.items():
        if v.is_floating_point():
            assert torch.allclose(avg[k], 0.9 * 2.0 + 0.1 * v)
    assert torch.equal(avg["1.num_batches_tracked"], current["1.num_batches_tracked"])


def test_lookahead_averages_every_k_steps_and_ends_on_the_slow_weights():
    model = nn.Linear(1, 1, bias=False)
    cfg = R.Lookahead(every=2, base=0.5, power=1.0)
    state = R.LookaheadState(model, cfg)
    slow = model.weight.item()
    total = 6
    for step in range(1, total + 1):
        with torch.no_grad():
            model.weight += 1.0  # a "training step"
        fast = model.weight.item()
        state.step(model, step, total)
        if step == total:
            assert model.weight.item() == pytest.approx(slow)  # the final weights are the slow
        elif step % 2 == 0:
            decay = 0.5**2 * (step / total)
            slow = decay * slow + (1 - decay) * fast
            assert model.weight.item() == pytest.approx(slow)
        else:
            assert model.weight.item() == pytest.approx(fast)
    assert R.Lookahead().decay(50, 100) == pytest.approx(0.95**5 * 0.5**3)


def test_predict_flip_is_the_mean_of_both_flips_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    assert torch.equal(R.predict(model, x), model(x))
    flip = R.predict(model, x, "flip")
    assert torch.allclose(flip, (model(x) + model(x.flip(-1))) / 2)
    assert not torch.allclose(flip, model(x))
    padded = torch.nn.functional.pad(x, (1,) * 4, mode="reflect")
    shifted = [padded[..., :8, :8], padded[..., 2:, 2:]]
    ref = 0.5 * flip + 0.25 * sum((model(s) + model(s.flip(-1))) / 2 for s in shifted)
    assert torch.allclose(R.predict(model, x, "flip-translate"), ref, atol=1e-6)


def test_make_optimizer_gives_norm_biases_their_own_lr_and_decay():
    model = create_model("fast-cifar")
    recipe = dataclasses.replace(R.FAST, lr=0.5, weight_decay=0.01, bias_lr_scale=64.0)
    opt = R.make_optimizer(recipe, model)
    biases, others = opt.param_groups
    bn_biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(p) for p in bn_biases}
    assert biases["lr"] == 32.0 and biases["weight_decay"] == pytest.approx(0.01 / 64)
    assert others["lr"] == 0.5 and others["weight_decay"] == 0.01
    # Decay per step (lr x coefficient) is the same in both groups.
    assert biases["lr"] * biases["weight_decay"] == pytest.approx(0.5 * 0.01)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.whiten.weight) not in trained and id(model.whiten.bias) in trained
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == recipe.momentum

    adam = R.make_optimizer(R.LAB_SIMPLE_CNN, create_model("simple-cnn"))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3


def test_whiten_bias_trains_for_the_first_epochs_only():
    # airbench94.py: `whiten_bias_epochs: 3`, i.e. epochs 0, 1 and 2 (0-based) train the bias.
    assert [R.whiten_bias_trains(R.FAST, e) for e in range(5)] == [True, True, True, False, False]
    # A fractional count: the bias trains in every epoch that starts before it runs out.
    half = dataclasses.replace(R.FAST, whiten_bias_epochs=1.5)
    assert [R.whiten_bias_trains(half, e) for e in range(3)] == [True, True, False]
    never = dataclasses.replace(R.FAST, whiten_bias_epochs=0)
    assert not any(R.whiten_bias_trains(never, e) for e in range(3))


def test_lab_recipes_are_the_lab():
    cnn = R.LAB_RECIPES["simple-cnn"]
    assert (cnn.optimizer, cnn.lr, cnn.batch_size, cnn.epochs) == ("adam", 1e-3, 32, 5)
    assert cnn.normalization == "half" and not cnn.augment.active and cnn.label_smoothing == 0
    res = R.LAB_RECIPES["resnet18"]
    assert (res.model, res.optimizer, res.lr, res.batch_size) == ("resnet18", "adam", 0.01, 16)
    assert R.get_recipe("fast").model == "fast-cifar"
    with pytest.raises(CnnlabError, match="did you mean"):
        R.get_recipe("fats")


def test_total_steps():
    recipe = dataclasses.replace(R.FAST, epochs=9.9, batch_size=1000)
    assert recipe.total_steps(50_000) == 495  # ceil(9.9 * 50)
    assert recipe.total_steps(50_001, world_size=2) == 495


@pytest.mark.parametrize("bad", [
    {"optimizer": "lbfgs"}, {"epochs": 0}, {"batch_size": 0}, {"lr": -1}, {"momentum": 1.0},
    {"label_smoothing": 1.0}, {"nesterov": True, "momentum": 0.0}, {"tta": "multi"},
    {"precision": "fp8"}, {"normalization": "imagenet"},
])
def test_bad_recipes_are_refused(bad):
    with pytest.raises(CnnlabError):
        dataclasses.replace(R.FAST, **bad)


def test_bad_schedules_are_refused():
    with pytest.raises(CnnlabError):
        R.Schedule("cosine")
    with pytest.raises(CnnlabError):
        R.Schedule("linear", warmup=1.0)
    with pytest.raises(CnnlabError):
        R.Lookahead(every=0)


def test_fast_recipe_carried_to_other_nets_takes_their_learning_rates():
    from cnnlab.tasks.train import TrainConfig, has_normalization, recipe_for

    # simple-cnn has no normalisation layer: lr 1.5 made its loss NaN by step 17 (measured).
    assert not has_normalization("simple-cnn")
    assert has_normalization("resnet18") and has_normalization("plain20")
    cfg = TrainConfig(data="x", models=("simple-cnn", "resnet18"))
    assert recipe_for(cfg, "simple-cnn").lr == R.FAST.lr_without_norm == 0.1
    assert recipe_for(cfg, "fast-cifar").lr == R.FAST.lr == 1.5
    assert recipe_for(cfg, "fast-cifar").bias_lr_scale == 64
    # Other BatchNorm nets: lr 1.5 with 64x BatchNorm biases left resnet18 at chance (measured).
    assert recipe_for(cfg, "resnet18").lr == R.FAST.other_lr == 0.1
    assert recipe_for(cfg, "resnet18").bias_lr_scale == 1.0
    assert recipe_for(cfg, "resnet20").lr == 0.1
    assert recipe_for(cfg, "simple-cnn").bias_lr_scale == 64  # no BatchNorm bias to scale
    # The command line still wins.
    assert recipe_for(dataclasses.replace(cfg, lr=0.3), "simple-cnn").lr == 0.3
    assert recipe_for(dataclasses.replace(cfg, lr=0.3), "resnet18").lr == 0.3
    overridden = dataclasses.replace(cfg, recipe_overrides=(("bias_lr_scale", 8.0),))
    assert recipe_for(overridden, "resnet18").bias_lr_scale == 8.0
    with pytest.raises(CnnlabError, match="other_lr"):
        dataclasses.replace(R.FAST, other_lr=0.0)


def test_the_small_fast_example_config_builds_the_measured_recipe():
    from pathlib import Path

    from cnnlab.config import from_mapping, load_yaml
    from cnnlab.tasks.train import TrainConfig, recipe_for

    path = Path(__file__).resolve().parents[1] / "examples" / "train-fast-small.yaml"
    cfg = from_mapping(TrainConfig, {**load_yaml(path), "data": "x"})
    recipe = recipe_for(cfg, "fast-cifar")
    assert (recipe.batch_size, recipe.lr, recipe.tta) == (512, 0.75, "flip")
    # The rest is the fast recipe, i.e. airbench94's published settings (airbench94.py:
    # momentum 0.85, label smoothing 0.2, whitening from 5000 training images, its bias
    # trained for 3 epochs, warm-up 23% of the steps, lookahead) with cnnlab's 10 epochs.
    assert (recipe.momentum, recipe.nesterov, recipe.label_smoothing) == (0.85, True, 0.2)
    assert (recipe.whiten_images, recipe.whiten_bias_epochs, recipe.epochs) == (5000, 3, 10)
    assert recipe.schedule == R.Schedule("linear", warmup=0.23, start=0.2, end=0.07)
    assert recipe.lookahead is not None and recipe.optimizer == "sgd"
    assert dict(recipe.model_options)["widths"] == [32, 64, 128]
    from cnnlab.models.registry import create_model

    net = create_model("fast-cifar", **dict(recipe.model_options))
    assert sum(p.numel() for p in net.parameters()) == 295_096  # as measured in BENCHMARKS.md
