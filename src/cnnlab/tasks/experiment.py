"""`cnnlab experiment depth|filters|pooling|residual`: Lab B's claims about choosing a CNN's
parameters and about ResNet, each checked by a grid of `cnnlab train` runs, with verdicts that
respect the noise between seeds.

    config = ExperimentConfig(experiments=("depth", "residual"))
    results = run(config, RunDir.create("experiment"), Reporter())

Every experiment is a grid of trials queued in an Optuna study (`tasks/study.run_study`: the
same storage, orphan recovery and `--resume` as `cnnlab sweep`), one trial per (setting, seed),
each a normal `cnnlab train` run in `RUN/<experiment>/trials/trial-NNNN/`. Nothing is selected:
every trial is tested once, on the whole CIFAR-10 test set, after its last step.

Runs that can decide. Each experiment has a `Design` (below): image size, training images, epochs,
batch and recipe, chosen so that its nets train to the end of a one-cycle schedule (warm-up,
then the learning rate down to zero) within the lab's minutes on a 2-core CPU. What was scaled
down, and why, is in each design's `scaled` sentence, which the report prints. Every trial
records whether it had stopped learning: the share of its training-loss drop that came in the
last quarter of its steps (`plateau_share`), and its accuracy on a fixed sample of training
images; a trial still learning (or barely above chance) is marked, and a verdict that rests on
a setting where most seeds were still learning says "too short to decide".

Seeds and budget. Seeds run in rounds: seed 0 of every setting of every experiment, then seed
1, ...; at least `seeds` (3) rounds. With `--budget MINUTES` the rounds go on while the next one
fits in what is left (up to `max_seeds`): more minutes give more seeds, i.e. tighter intervals,
never different nets. A trial the budget cuts short is excluded from the comparison and named.

Workers. The experiments are independent (each its own study in RUN/<name>/), and these small
nets train about as fast on one thread as on two, so `--workers N` splits the named experiments
into N groups of about equal expected seconds (`ROUND_SECONDS`) and runs each group in its own
process with cores / N torch threads: the main process runs the first group, `cnnlab experiment
--worker RUN --worker-index K` the others (`spawn_workers`). Each process runs its group's seed
rounds exactly as one process would (the same trials, the budget's deadline shared as a wall
time); the main process then waits for the others and summarises every study.

Verdicts come from `analysis/stats.py`: each claim is one or more contrasts of the settings' mean
accuracies with 95% Welch intervals over seeds; "held" / "did not hold" only when the intervals
exclude zero, else "undecided"; one seed gives no verdict; a grid that cannot refute the claim
gives "not tested"; `--quick` gives "too short to decide".

- depth: `plain-cnn` with 1..8 conv layers (width 16 doubling every second layer, 2x2 max-pool
  after every second layer; models/plain_cnn.py). Claim: accuracy rises with depth, and the
  gain per added layer drops after 3-4 layers. Contrasts: acc(4) - acc(1) > 0, and the gain per
  layer from 1 to 4 minus the gain per layer from 4 to the deepest > 0.
- filters: 3x3, 5x5 and 7x7 kernels at an equal *parameter* budget (4 layers; the 5x5 and 7x7
  nets get the width whose parameter count is closest to the 3x3 net's). Claim: "usually 3x3
  or 5x5": held when 3x3 or 5x5 beats 7x7, did not hold when 7x7 beats both.
- pooling: 2x2 against 4x4, max and average, 4 layers, on 32x32 inputs (small, so the claim
  expects 2x2). Contrast: the best 2x2 minus the best 4x4 > 0.
- residual: plain-20/56 against ResNet-20/56 (He et al. 2016, option A shortcuts; 32 and 44
  with `--full`), narrower (8-16-32 filters) on 16x16 images. Training error on a fixed sample
  of training images, measured every epoch (the curves of Fig. 6), and per-layer gradient norms
  of every conv weight on one fixed batch at initialisation and after the first epoch, for
  every seed. Contrasts: err(plain-56) - err(plain-20) > 0 (degradation), err(plain-56) -
  err(ResNet-56) > 0 (the shortcuts), and err(ResNet-56) - err(ResNet-20) not above zero.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnlab.analysis import stats
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir

EXPERIMENTS = ("depth", "filters", "pooling", "residual")
DEFAULT_DATA = "cifar10/cifar10-jpg.zip"  # under the data root
DEFAULT_DATA_ROOT = "../shared/data"  # beside a checkout; CNNLAB_DATA overrides


def default_data_root() -> str:
    return os.environ.get("CNNLAB_DATA", DEFAULT_DATA_ROOT)


# The plain-cnn studies' recipe, written out in full so that tuning the `fast` recipe elsewhere
# does not move these results: SGD with Nesterov momentum, a linear warm-up over the first 20%
# of the steps from 0.1 x lr, then linearly to 0 (a one-cycle schedule that suits short runs),
# mild augmentation (2-pixel reflect-padded translations, random flips), no averaging, no TTA.
PLAIN_RECIPE = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "bias_lr_scale": 1.0, "label_smoothing": 0.0,
    "schedule": {"kind": "linear", "warmup": 0.2, "start": 0.1, "end": 0.0},
    "augment": {"crop_pad": 2, "pad_mode": "reflect", "flip": "random"},
    "normalization": "dataset", "lookahead": None, "tta": "none", "precision": "auto",
    "batch_size": 128, "whiten_images": 0, "whiten_bias_epochs": 0.0,
}
# He et al. 2016, section 4.2: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 at batch 128 (here
# 0.05 at batch 64, the linear scaling rule: twice the iterations for the same images, which is
# what a deep plain net needs), zero-padded translations + flips (their 4 pixels on 32x32 are
# 2 on 16x16). Their constant learning rate is replaced by the same one-cycle schedule as the
# plain studies: measured here, lr 0.1 from the first step left plain-56 at chance after 390
# steps (He et al. warm up their 110-layer net for the same reason), and a schedule that ends
# at zero lets the final training error be read on settled weights.
RESIDUAL_RECIPE = {
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
    "bias_lr_scale": 1.0, "label_smoothing": 0.0,
    "schedule": {"kind": "linear", "warmup": 0.2, "start": 0.1, "end": 0.0},
    "augment": {"crop_pad": 2, "pad_mode": "zeros", "flip": "random"},
    "normalization": "dataset", "lookahead": None, "tta": "none", "precision": "auto",
    "batch_size": 64, "whiten_images": 0, "whiten_bias_epochs": 0.0,
}
DEPTH_WIDTH = 16  # plain-cnn width for the depth study (16 .. 128 channels at depth 8)
GRID_WIDTH = 16  # the 3x3 reference width of the filters and pooling studies
RESIDUAL_WIDTH = 8  # He et al.'s 16-32-64 filters halved: 8-16-32
GRAD_BATCH = 128  # images in the fixed batch of the gradient norms
TRAIN_EVAL = 1000  # training images (100 per class) whose accuracy is the "training error"
# A trial "had stopped learning" when less than this share of its training-loss drop came in
# its last quarter of steps. With a schedule that anneals to zero some drop always comes last;
# the nets of the default designs end at 0.02-0.10, a net stopped halfway at 0.25-0.40.
PLATEAU_SHARE = 0.15
CHANCE_MARGIN = 0.10  # ... and its training accuracy is at least 10 points above chance
# Seconds of one seed round of each experiment's default design, for splitting experiments
# among --workers: BENCHMARKS.md "cnnlab experiment", three rounds on the 2-core Xeon (depth
# 117 s, filters 115 s, pooling 73 s, residual 252 s), divided by 3. Only their ratios matter.
ROUND_SECONDS = {"depth": 39.0, "filters": 38.3, "pooling": 24.3, "residual": 84.0}


@dataclass(frozen=True)
class Design:
    """How every trial of one experiment is trained (the same for every setting and seed)."""

    image_size: int  # pixels; CIFAR's own 32, or 16 (area-averaged) where resolution is not
    # the question
    train_per_class: int  # training images per class (a fixed random sample); test: all 10,000
    epochs: float
    recipe: dict[str, Any]
    curve_every: int = 10_000  # epochs between curve points (test and training error)
    scaled: str = ""  # what was scaled down, and why: printed by the report


DESIGNS = {
    "depth": Design(16, 500, 10, PLAIN_RECIPE, scaled=(
        "images shrunk to 16x16 and 500 training images per class (5,000), 10 epochs (390 "
        "steps): eight depths x 3 seeds reach the end of their schedule in about 2.5 minutes "
        "on 2 cores. The question is how accuracy changes with depth, not CIFAR-10's record")),
    "filters": Design(32, 500, 5, PLAIN_RECIPE, scaled=(
        "32x32 images (a kernel's size only means something against the image's), 500 "
        "training images per class, 5 epochs (195 steps), width 16 instead of 32")),
    "pooling": Design(32, 500, 5, PLAIN_RECIPE, scaled=(
        "32x32 images (the claim is about the input's size), 500 training images per class, "
        "5 epochs (195 steps), width 16 instead of 32")),
    "residual": Design(16, 250, 10, RESIDUAL_RECIPE, curve_every=1, scaled=(
        "16x16 images, 250 training images per class, 10 epochs at batch 64 (390 steps), and "
        "8-16-32 filters instead of 16-32-64: a 56-layer net costs 2-3x a 20-layer one per "
        "step, and He et al.'s 64,000 steps would take a day here. The claim is about "
        "training error against depth with and without shortcuts, which these keep")),
}
# --quick (CI, the lab's --quick): seconds per trial, for the tables and the plumbing only.
QUICK = Design(16, 10, 1, {**PLAIN_RECIPE, "batch_size": 20}, curve_every=1,
               scaled="--quick: 10 images per class, 1 epoch: too short to decide anything")


@dataclass(frozen=True)
class ExperimentConfig:
    experiments: tuple[str, ...] = EXPERIMENTS
    data: str | None = None  # default: DATA_ROOT/cifar10/cifar10-jpg.zip
    data_root: str = field(default_factory=default_data_root)
    seeds: int = 3  # at least this many seeds (0 .. seeds-1) per setting
    budget: float | None = None  # minutes for everything: more seed rounds while they fit
    max_seeds: int = 10  # the most rounds a budget may buy
    # Train and test on the first N images of each class of each split, instead of the
    # design's sample of train and the whole test set (tests, --quick).
    limit_per_class: int | None = None
    epochs: float | None = None  # override every design's epochs (a longer or shorter study)
    full: bool = False  # residual: 20, 32, 44, 56 (default: 20 and 56)
    quick: bool = False  # the lab's --quick: 1 epoch, fewer settings, no verdicts
    threads: int | None = None  # torch threads (with workers: per process; cores / workers)
    workers: int = 1  # processes, each running a group of the experiments (see `run`)
    report: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "experiments", tuple(self.experiments))
        if not self.experiments:
            raise CnnlabError(f"name an experiment: {', '.join(EXPERIMENTS)}")
        for name in self.experiments:
            if name not in EXPERIMENTS:
                from cnnlab.errors import suggest

                raise CnnlabError(f"unknown experiment {name!r}{suggest(name, EXPERIMENTS)}; "
                                  f"choose from {', '.join(EXPERIMENTS)}")
        if len(set(self.experiments)) != len(self.experiments):
            raise CnnlabError("an experiment is named twice")
        if self.budget is not None and self.budget <= 0:
            raise CnnlabError(f"--budget must be positive (minutes), not {self.budget}")
        if self.seeds < 1:
            raise CnnlabError(f"--seeds must be at least 1, not {self.seeds}")
        if self.max_seeds < self.seeds:
            raise CnnlabError(f"--max-seeds ({self.max_seeds}) must be at least --seeds "
                              f"({self.seeds})")
        if self.epochs is not None and self.epochs <= 0:
            raise CnnlabError(f"--epochs must be positive, not {self.epochs}")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise CnnlabError("--limit-per-class must be at least 2")
        if self.workers < 1:
            raise CnnlabError(f"--workers must be at least 1, not {self.workers}")

    def data_path(self) -> Path:
        return Path(self.data) if self.data else Path(self.data_root) / DEFAULT_DATA

    def design(self, name: str) -> Design:
        d = QUICK if self.quick else DESIGNS[name]
        if self.quick and name in ("filters", "pooling"):
            d = replace(d, image_size=32)
        return replace(d, epochs=self.epochs) if self.epochs else d


# ------------------------------------------------------------------------------- the grids


@dataclass
class Grid:
    """One experiment: its settings (one per row of the table) and how a row is trained."""

    name: str
    question: str
    settings: list[dict[str, Any]]  # trial params except the seed
    label: Callable[[dict[str, Any]], str]
    models: tuple[str, ...] = ("plain-cnn",)
    extra: dict[str, Any] = field(default_factory=dict)  # fixed model options
    note: str = ""


def equal_param_width(kernel: int, reference: int, depth: int = 4) -> int:
    """The plain-cnn width with a `kernel` x `kernel` filter whose parameter count is closest
    to that of the 3x3 net of width `reference` (the filters study's equal budget)."""
    from cnnlab.models.plain_cnn import plain_cnn
    from cnnlab.models.registry import count_parameters

    target = count_parameters(plain_cnn(depth=depth, width=reference, kernel=3))
    widths = range(1, 2 * reference + 1)
    return min(widths, key=lambda w: abs(count_parameters(
        plain_cnn(depth=depth, width=w, kernel=kernel)) - target))


def grid(name: str, config: ExperimentConfig) -> Grid:
    if name == "depth":
        depths = (1, 2, 4) if config.quick else tuple(range(1, 9))
        return Grid(name, "The more convolution layers, the better the performance; after about "
                    "3 or 4 layers the effect drops sharply.",
                    [{"depth": d} for d in depths],
                    lambda s: f"{s['depth']} layer{'s' if s['depth'] > 1 else ''}",
                    extra={"width": DEPTH_WIDTH, "kernel": 3, "pool": 2, "pool_kind": "max"},
                    note=f"plain-cnn, width {DEPTH_WIDTH} doubling every second layer, 3x3 "
                         "kernels, 2x2 max-pooling after every second layer, global average "
                         "pooling and one linear layer")
    if name == "filters":
        kernels = (3, 5) if config.quick else (3, 5, 7)
        settings = [{"kernel": k, "width": equal_param_width(k, GRID_WIDTH)} for k in kernels]
        return Grid(name, "Filters are usually 5x5 or 3x3.", settings,
                    lambda s: f"{s['kernel']}x{s['kernel']}, width {s['width']}",
                    extra={"depth": 4, "pool": 2, "pool_kind": "max"},
                    note="plain-cnn, 4 layers, at an equal parameter budget: the width of the "
                         "5x5 and 7x7 nets is chosen so that their parameter count is closest "
                         f"to the 3x3 net's of width {GRID_WIDTH}")
    if name == "pooling":
        pools = ((2, "max"), (4, "max")) if config.quick else (
            (2, "max"), (2, "avg"), (4, "max"), (4, "avg"))
        return Grid(name, "Pooling is usually 2x2, or 4x4 for large inputs.",
                    [{"pool": p, "pool_kind": k} for p, k in pools],
                    lambda s: f"{s['pool']}x{s['pool']} {s['pool_kind']}",
                    extra={"depth": 4, "width": GRID_WIDTH, "kernel": 3},
                    note=f"plain-cnn, 4 layers, width {GRID_WIDTH}, 3x3 kernels; one pooling "
                         "after layer 2 (32x32 inputs: 2x2 leaves 16x16 maps, 4x4 leaves 8x8)")
    depths = (20, 32, 44, 56) if config.full else (20,) if config.quick else (20, 56)
    models = [f"{kind}{d}" for d in depths for kind in ("plain", "resnet")]
    return Grid(name, "ResNet adds the input to the block's output, H(x) = F(x) + x, which "
                "counters the derivative going to zero.", [{"model": m} for m in models],
                lambda s: s["model"], models=tuple(models), extra={"width": RESIDUAL_WIDTH},
                note=f"He et al. 2016 CIFAR nets ({RESIDUAL_WIDTH}-{2 * RESIDUAL_WIDTH}-"
                     f"{4 * RESIDUAL_WIDTH} filters, option A shortcuts, BatchNorm)")


# ------------------------------------------------------------------------------- gradients


def conv_grad_norms(model, x, y) -> list[float]:
    """L2 norm of the loss gradient of every conv weight, in forward order, for one batch in
    training mode (BatchNorm on batch statistics, as in training), computed on a copy so that
    the model and its running statistics stay as they were. fp32, no autocast."""
    import torch
    from torch import nn

    m = copy.deepcopy(model).float().train()
    m.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    return [float(mod.weight.grad.norm()) for mod in m.modules()
            if isinstance(mod, nn.Conv2d) and mod.weight.grad is not None]


def fixed_batch(data, recipe, size: int = GRAD_BATCH) -> tuple[Any, Any]:
    """`size` training images drawn at random with a fixed seed (the files are sorted by
    class, so the first ones would all be one class), normalised as training normalises them:
    the same batch for every net."""
    import torch

    from cnnlab.data.tensor_batches import normalize

    mean, std = ((0.5,) * 3, (0.5,) * 3) if recipe.normalization == "half" else (data.mean,
                                                                                   data.std)
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    idx = idx[:size]
    return normalize(data.train_x[idx], mean, std, channels_last=False), data.train_y[idx]


# ------------------------------------------------------------------------------- convergence


def plateau_share(losses: list[float]) -> float | None:
    """The share of a run's training-loss drop that came in its last quarter of steps: (mean
    loss of the third quarter - mean of the last quarter) / (first logged loss - mean of the
    last quarter). Near 0: the loss had flattened; large: it was still falling. None when too
    few points were logged or the loss never fell."""
    n = len(losses)
    if n < 8:
        return None
    third = statistics.fmean(losses[n // 2: 3 * n // 4])
    last = statistics.fmean(losses[3 * n // 4:])
    total = losses[0] - last
    if total <= 0:
        return None
    return (third - last) / total


def still_learning(share: float | None, train_accuracy: float | None, classes: int) -> bool:
    """Whether a trial had not finished learning: its loss still falling at the end
    (PLATEAU_SHARE), or its training accuracy barely above chance (a net that never started
    also has a flat loss)."""
    if share is None or share > PLATEAU_SHARE:
        return True
    return train_accuracy is not None and train_accuracy < 1 / classes + CHANCE_MARGIN


# ------------------------------------------------------------------------------- running


def base_train(config: ExperimentConfig, g: Grid):
    from cnnlab.tasks.train import TrainConfig

    d = config.design(g.name)
    limited = config.limit_per_class is not None
    return TrainConfig(
        data=str(config.data_path()), models=g.models[:1], recipe="fast", epochs=d.epochs,
        limit_per_class=config.limit_per_class,
        train_per_class=None if limited or config.quick else d.train_per_class,
        image_size=d.image_size, train_eval=TRAIN_EVAL, test_curve=False,
        threads=config.threads, report=False,
        model_options=tuple(g.extra.items()),
        recipe_overrides=tuple((k, v) for k, v in d.recipe.items() if k != "epochs"),
        eval_every=d.curve_every,
    )


class DataCache:
    """The trials' data set, loaded (and subsampled, shrunk) once per process for all of an
    experiment's trials instead of once per trial."""

    def __init__(self, reporter):
        self.reporter = reporter
        self._data: dict[tuple, Any] = {}

    def get(self, cfg):
        from cnnlab.tasks import train

        key = (cfg.data, cfg.limit_per_class, cfg.train_per_class, cfg.image_size)
        if key not in self._data:
            self._data[key] = train.load_data(cfg, self.reporter)
        return self._data[key]


def objective(g: Grid, base, reporter, data: DataCache, time_left: Callable[[], float | None],
              grad_batch: int = GRAD_BATCH):
    """The sweep machinery's objective for one grid trial: train, test once; for the residual
    study also the gradient norms at initialisation and after the first epoch."""
    from cnnlab.tasks import sweep, train
    from cnnlab.tasks.study import Trial

    def run_trial(t: Trial) -> tuple[float, dict[str, Any]]:
        params = {}
        for key in (*g.settings[0], "seed"):
            if key == "seed":
                params[key] = t.optuna_trial.suggest_int("seed", 0, 10_000)
            else:
                choices = sorted({s[key] for s in g.settings})
                params[key] = t.optuna_trial.suggest_categorical(key, choices)
        cfg = sweep.trial_config(base, params)
        left = time_left()
        if left is not None:
            cfg = replace(cfg, time_limit=max(1.0, left))
        attrs: dict[str, Any] = {}
        at_start = after_epoch = None
        trial_data = data.get(cfg)
        if g.name == "residual":
            x, y = fixed_batch(trial_data, train.recipe_for(cfg, cfg.models[0]), grad_batch)

            def at_start(model) -> None:  # the very net training starts from
                attrs["metric_grad_init"] = conv_grad_norms(model, x, y)

            def after_epoch(model, record: dict[str, Any]) -> None:
                if record["epoch"] == 1:
                    attrs["metric_grad_epoch1"] = conv_grad_norms(model, x, y)

        res = train.run(cfg, t.run_dir, reporter, after_epoch=after_epoch, at_start=at_start,
                        data=trial_data)
        r = res["runs"][0]
        sub = RunDir(t.run_dir.path / f"{r['model']}-seed{r['seed']}")
        metrics = sub.read_metrics()
        epochs = [rec for rec in metrics if rec.get("kind") == "epoch"]
        losses = [rec["train_loss"] for rec in metrics if rec.get("kind") == "step"]
        share = plateau_share(losses)
        attrs.update({
            "epochs": r["epochs"], "stopped": r["stopped"], "params_count": r["params"],
            "metric_macs": res["models"][0]["macs"], "metric_steps": r["steps"],
            "metric_test_accuracy": r["test_accuracy"],
            "metric_train_accuracy": r.get("train_eval_accuracy"),
            "metric_plateau_share": share,
            "metric_still_learning": still_learning(share, r.get("train_eval_accuracy"),
                                                    len(trial_data.classes)),
            "metric_train_seconds": round(r["train_seconds"], 1),
            # [step, training accuracy (fixed sample, no augmentation), test accuracy]
            "metric_curve": [[rec["step"], rec.get("train_eval_accuracy"),
                              rec.get("test_accuracy")] for rec in epochs],
        })
        if g.name == "residual":  # the training loss of every logged window (4 per epoch)
            attrs["metric_loss_curve"] = [[rec["step"], rec["train_loss"]] for rec in metrics
                                          if rec.get("kind") == "step"]
        return float(r["test_accuracy"]), attrs

    return run_trial


class Study:
    """One experiment's study in RUN/<name>/: its grid, queue and trials."""

    def __init__(self, name: str, config: ExperimentConfig, run_dir: RunDir, reporter,
                 data: DataCache, time_left: Callable[[], float | None]):
        import optuna

        from cnnlab.tasks import study

        self.name, self.config, self.run_dir, self.reporter = name, config, run_dir, reporter
        self.grid = grid(name, config)
        self.base = base_train(config, self.grid)
        self.study = study.open_study(study.storage_url(None, run_dir), f"experiment-{name}",
                                      optuna.samplers.RandomSampler(seed=0),
                                      optuna.pruners.NopPruner())
        self.objective = objective(self.grid, self.base, reporter, data, time_left,
                                   32 if config.quick else GRAD_BATCH)
        self.round_seconds: list[float] = []
        if not run_dir.file("config.json").is_file():
            run_dir.save_config({"experiment": name, "config": config, "train": self.base,
                                 "design": config.design(name), "settings": self.grid.settings})

    def run_round(self, seed: int, reporter=None) -> None:
        """Every setting with `seed` (queued once; a resumed run finds them queued or done).
        `reporter`: the round's step of the overall display (else the study's own)."""
        from cnnlab.tasks import study

        with self.study.lock():
            # A queued trial has no params yet: its round is in the user attribute it was
            # queued with.
            seeds = {t.params.get("seed", t.user_attrs.get("round")) for t in self.study.trials()}
            if seed not in seeds:
                for s in self.grid.settings:
                    self.study.optuna_study.enqueue_trial({**s, "seed": seed},
                                                          user_attrs={"round": seed})
        t0 = time.monotonic()
        ran = study.run_study(self.study, self.run_dir, self.objective,
                              len(self.grid.settings) * (seed + 1), reporter or self.reporter)
        if ran:  # a round found done (a resumed run) says nothing about this machine's speed
            self.round_seconds.append(time.monotonic() - t0)

    def summarise(self) -> dict[str, Any]:
        from cnnlab.report.experiment import plot_experiment
        from cnnlab.tasks import study

        rows = study.trial_rows(self.study)
        study.write_trials_csv(self.run_dir, rows)
        if not any(r["state"] == "COMPLETE" for r in rows):
            errors = [r["error"] for r in rows if r.get("error")]
            raise CnnlabError(f"experiment {self.name}: no trial finished"
                              + (f"; the first error: {errors[0]}" if errors else ""))
        results = summarise(self.grid, self.config, self.base, rows, self.run_dir)
        results["plot"] = plot_experiment(results, self.run_dir.path)
        self.run_dir.save_results(results)
        return results


def _ci(values: list[float]) -> dict[str, float | None]:
    """mean, sample std and the 95% interval's half-width; no std and no interval for one."""
    if not values:
        return {"mean": None, "std": None, "ci": None}
    iv = stats.mean_interval(values)
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "ci": None if iv is None else (iv.high - iv.low) / 2}


def summarise(g: Grid, config: ExperimentConfig, base, rows: list[dict[str, Any]],
              run_dir: RunDir) -> dict[str, Any]:
    """One row per setting: test and training accuracy over its seeds (percent; mean, sample
    std, 95% interval), convergence, and the verdict on the lab's claim. Trials cut short by
    the budget are left out of the rows and named."""
    n_train = n_test = None
    for r in rows:
        f = run_dir.path / (r["run_dir"] or "-") / "results.json"
        if r["state"] == "COMPLETE" and f.is_file():
            first = RunDir(f.parent).read_json("results.json")
            n_train, n_test = first["n_train"], first["n_test"]
            break
    table, excluded = [], []
    for s in g.settings:
        done = [r for r in rows if r["state"] == "COMPLETE"
                and all(r["params"].get(k) == v for k, v in s.items())]
        cut = [r for r in done if r.get("stopped") != "completed"]
        excluded += [f"{g.label(s)} seed {r['params']['seed']} (stopped by the "
                     f"{r.get('stopped') or 'budget'} after {r.get('metric_steps')} steps)"
                     for r in cut]
        mine = sorted((r for r in done if r not in cut), key=lambda r: r["params"]["seed"])
        test = [100 * r["metric_test_accuracy"] for r in mine]
        trn = [100 * r["metric_train_accuracy"] for r in mine
               if r.get("metric_train_accuracy") is not None]
        t, tr = _ci(test), _ci(trn)
        row = {"setting": s, "label": g.label(s), "seeds": len(mine),
               "seed_ids": [r["params"]["seed"] for r in mine],
               "test": test, "train": trn,
               "test_mean": t["mean"], "test_std": t["std"], "test_ci": t["ci"],
               "train_mean": tr["mean"], "train_std": tr["std"], "train_ci": tr["ci"],
               "plateau_share": [r.get("metric_plateau_share") for r in mine],
               "still_learning": sum(bool(r.get("metric_still_learning")) for r in mine),
               "params": mine[0]["params_count"] if mine else None,
               "macs": mine[0].get("metric_macs") if mine else None,
               "steps": sorted({r.get("metric_steps") for r in mine}),
               "seconds": statistics.fmean(r["metric_train_seconds"] for r in mine)
               if mine else None,
               "cut": len(cut),
               "failed": sum(r["state"] == "FAIL" and not r["retried"] for r in rows
                             if all(r["params"].get(k) == v for k, v in s.items()))}
        if g.name == "residual" and mine:
            for key in ("grad_init", "grad_epoch1"):
                row[key] = [r.get(f"metric_{key}") for r in mine]
            row["curves"] = [r.get("metric_curve") for r in mine]
            row["loss_curves"] = [r.get("metric_loss_curve") for r in mine]
        table.append(row)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    design = config.design(g.name)
    results = {
        "experiment": g.name, "claim": g.question, "note": g.note, "scaled": design.scaled,
        "data": base.data, "limit_per_class": base.limit_per_class,
        "train_per_class": base.train_per_class, "image_size": base.image_size,
        "epochs": base.epochs, "batch_size": design.recipe["batch_size"],
        "seeds": max((r["seeds"] for r in table), default=0), "min_seeds": config.seeds,
        "budget_minutes": config.budget, "quick": config.quick,
        "recipe": design.recipe, "rows": table, "n_train": n_train, "n_test": n_test,
        "grad_batch": 32 if config.quick else GRAD_BATCH, "train_eval": TRAIN_EVAL,
        "plateau_rule": {"share": PLATEAU_SHARE, "chance_margin": CHANCE_MARGIN},
        "trials": len(rows), "completed": len(done), "excluded": excluded,
        # Wall time of every trial (training, evaluation, loading), over all invocations.
        "trial_seconds": round(sum(r.get("seconds") or 0 for r in rows), 1),
    }
    v = verdict(g.name, table, quick=config.quick, excluded=excluded)
    results["verdict"] = v.as_dict()
    if g.name == "residual":
        results["gradients"] = gradient_verdict(table).as_dict()
    if g.name == "depth":
        results["gains"] = depth_gains(table)
    return results


def depth_gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The test-accuracy gain of each added layer between neighbouring depths, with its 95%
    interval (the claim is about where the gain flattens)."""
    by = {r["setting"]["depth"]: r for r in rows}
    out = []
    for a, b in itertools.pairwise(sorted(by)):
        iv = stats.difference(by[b]["test"], by[a]["test"])
        k = b - a
        out.append({"from": a, "to": b} | ({} if iv is None else {
            "per_layer": iv.estimate / k, "low": iv.low / k, "high": iv.high / k,
            "sign": iv.sign()}))
    return out


# ------------------------------------------------------------------------------- verdicts


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {r["setting"][key]: r for r in rows}


def _pct(r: dict[str, Any], which: str = "test") -> str:
    m = r[f"{which}_mean"]
    return "-" if m is None else f"{m:.1f}%"


def verdict(name: str, rows: list[dict[str, Any]], quick: bool = False,
            excluded: list[str] | None = None) -> stats.Verdict:
    """The lab's claim against these rows, by the rule of `analysis/stats.py`."""
    excluded = list(excluded or [])
    gate = _gate(name, rows, quick)
    if gate is not None:
        return stats.Verdict(gate[0], gate[1], excluded=excluded)
    claim = CLAIMS[name](rows)
    if claim is None:
        return stats.Verdict(stats.NO_VERDICT, "the settings the claim compares did not all "
                             "finish with two or more seeds.", excluded=excluded)
    status, sentence, intervals, involved = claim
    # A setting is still learning when most of its seeds are: one seed just over the plateau
    # rule (a heuristic, PLATEAU_SHARE) does not veto what the others show; every such trial
    # is still marked in the table.
    learning = [r["label"] for r in rows
                if r["label"] in involved and 2 * r["still_learning"] > r["seeds"]]
    if learning and status != stats.UNDECIDED:
        sentence = (f"{', '.join(learning)} had not stopped learning at the end of "
                    f"{'its' if len(learning) == 1 else 'their'} runs (marked in the table), so "
                    f"the comparison may still change; the intervals would read \u201c{status}"
                    f"\u201d: {sentence}")
        status = stats.TOO_SHORT
    return stats.Verdict(status, sentence, intervals, excluded)


def _gate(name: str, rows: list[dict[str, Any]], quick: bool) -> tuple[str, str] | None:
    """A status that comes before any statistics: the grid cannot refute the claim (not
    tested), --quick (too short), fewer than two seeds (no verdict)."""
    if name == "filters" and not any(r["setting"]["kernel"] not in (3, 5) for r in rows):
        return (stats.NOT_TESTED, "every kernel run is 3x3 or 5x5, so nothing here could "
                "refute \u201cusually 3x3 or 5x5\u201d (the full grid adds 7x7).")
    if name == "depth":
        depths = {r["setting"]["depth"] for r in rows}
        if not {1, 4} <= depths or not any(d > 4 for d in depths):
            return (stats.NOT_TESTED, "the claim is about 1 to 4 layers against deeper nets; "
                    f"depths run: {', '.join(map(str, sorted(depths)))}.")
    if name == "pooling" and len({r["setting"]["pool"] for r in rows}) < 2:
        return (stats.NOT_TESTED, "only one pooling size was run.")
    if name == "residual" and len({_depth(r) for r in rows}) < 2:
        return (stats.NOT_TESTED, "one depth only: degradation needs a shallower and a deeper "
                "net.")
    if quick:
        return (stats.TOO_SHORT, "--quick trains each net for seconds on a few images; the "
                "table shows the plumbing, not an answer.")
    if max((r["seeds"] for r in rows), default=0) < 2:
        return (stats.NO_VERDICT, "one seed per setting gives no interval, so no verdict.")
    return None


def _depth_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "depth")
    deeper = [d for d in by if d > 4]
    if 1 not in by or 4 not in by or not deeper:
        return None
    deep = max(deeper)
    a1, a4, ad = by[1]["test"], by[4]["test"], by[deep]["test"]
    gain = stats.difference(a4, a1)
    # per-layer gain 1->4 minus per-layer gain 4->deep: (a4-a1)/3 - (ad-a4)/(deep-4)
    w = 1 / (deep - 4)
    drop = stats.contrast([a1, a4, ad], [-1 / 3, 1 / 3 + w, -w])
    late = stats.contrast([a4, ad], [-w, w])
    status = stats.judge([gain, drop])
    sentence = (f"from 1 to 4 layers test accuracy changed {gain.text()}, i.e. "
                f"{gain.estimate / 3:+.2f} points per layer; from 4 to {deep} layers "
                f"{late.text(' points per layer', 2)}; the gain per layer fell by "
                f"{drop.text(' points', 2)}. Held when both the rise and the fall of the gain "
                "lie outside the noise.")
    return status, sentence, {"gain_1_to_4": gain, "gain_per_layer_drop": drop,
                              f"gain_per_layer_4_to_{deep}": late}, \
        [by[d]["label"] for d in (1, 4, deep)]


def _filters_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "kernel")
    if 7 not in by or not {3, 5} & set(by):
        return None
    gaps = {k: stats.difference(by[k]["test"], by[7]["test"]) for k in (3, 5) if k in by}
    signs = [g.sign() for g in gaps.values()]
    if any(s > 0 for s in signs):
        status = stats.HELD
    elif all(s < 0 for s in signs):
        status = stats.NOT_HELD
    else:
        status = stats.UNDECIDED
    sentence = ("at an equal parameter budget, " + "; ".join(
        f"{k}x{k} minus 7x7: {g.text()}" for k, g in gaps.items())
        + " (held when 3x3 or 5x5 beats 7x7 outside the noise, did not hold when 7x7 beats "
        "both).")
    return status, sentence, {f"{k}x{k}_minus_7x7": g for k, g in gaps.items()}, \
        [r["label"] for r in by.values()]


def _pooling_claim(rows):
    ok = [r for r in rows if r["seeds"] >= 2]
    two = [r for r in ok if r["setting"]["pool"] == 2]
    four = [r for r in ok if r["setting"]["pool"] == 4]
    if not two or not four:
        return None
    b2 = max(two, key=lambda r: r["test_mean"])
    b4 = max(four, key=lambda r: r["test_mean"])
    gap = stats.difference(b2["test"], b4["test"])
    sentence = (f"on 32x32 inputs (small, so the claim expects 2x2) the best 2x2 pooling "
                f"({b2['label']}, {_pct(b2)}) minus the best 4x4 ({b4['label']}, {_pct(b4)}): "
                f"{gap.text()}. Large inputs, where the claim suggests 4x4, are not tested.")
    return stats.judge([gap]), sentence, {"best_2x2_minus_best_4x4": gap}, \
        [b2["label"], b4["label"]]


def _depth(r: dict[str, Any]) -> int:
    return int(r["setting"]["model"].removeprefix("plain").removeprefix("resnet"))


def _residual_claim(rows):
    by = {r["setting"]["model"]: r for r in rows if r["seeds"] >= 2}
    depths = sorted({_depth(r) for r in rows})
    lo, hi = depths[0], depths[-1]
    names = [f"plain{lo}", f"plain{hi}", f"resnet{lo}", f"resnet{hi}"]
    if any(n not in by or len(by[n]["train"]) < 2 for n in names):
        return None
    err = {n: [100 - a for a in by[n]["train"]] for n in names}
    degradation = stats.difference(err[f"plain{hi}"], err[f"plain{lo}"])
    shortcuts = stats.difference(err[f"plain{hi}"], err[f"resnet{hi}"])
    res_deeper = stats.difference(err[f"resnet{lo}"], err[f"resnet{hi}"])  # > 0: deeper better
    # Fig. 6's two panels: the deeper plain net trains worse (degradation) and the ResNet of
    # that depth trains better than it; the deeper ResNet must not train worse than the
    # shallower one (He et al.: it trains better; a tie does not refute it here).
    status = stats.judge([degradation, shortcuts])
    if status != stats.NOT_HELD and res_deeper.sign() < 0:
        status = stats.NOT_HELD
    sentence = (f"training error (on {TRAIN_EVAL:,} training images, without augmentation) of "
                f"plain-{hi} minus plain-{lo}: {degradation.text()} (degradation); plain-{hi} "
                f"minus ResNet-{hi}: {shortcuts.text()} (the shortcuts); ResNet-{lo} minus "
                f"ResNet-{hi}: {res_deeper.text()} (positive: the deeper ResNet trains better). "
                "Held when the deeper plain net trains worse, the ResNet of its depth better, "
                "and the deeper ResNet not worse than the shallower.")
    return status, sentence, {"degradation": degradation, "shortcuts": shortcuts,
                              "resnet_deeper_gain": res_deeper}, [by[n]["label"] for n in names]


CLAIMS = {"depth": _depth_claim, "filters": _filters_claim, "pooling": _pooling_claim,
          "residual": _residual_claim}


def gradient_verdict(rows: list[dict[str, Any]]) -> stats.Verdict:
    """"The derivative going to zero", over every seed: the smallest per-layer gradient norm
    after the first epoch, plain against ResNet at the deepest depth, compared on a log10
    scale (norms spread over orders of magnitude); held when the plain net's is lower outside
    the noise."""
    depths = sorted({_depth(r) for r in rows})
    hi = depths[-1] if depths else None
    by = {r["setting"]["model"]: r for r in rows}
    plain, res = by.get(f"plain{hi}"), by.get(f"resnet{hi}")

    def lows(r) -> list[float]:
        return [math.log10(min(g)) for g in (r or {}).get("grad_epoch1") or [] if g]

    p, q = lows(plain), lows(res)
    if len(p) < 2 or len(q) < 2:
        return stats.Verdict(stats.NO_VERDICT, "the gradient norms need two or more seeds of "
                             f"plain-{hi} and ResNet-{hi}.")
    gap = stats.difference(q, p)  # log10(ResNet's smallest) - log10(plain's smallest)
    init = [g[0] / g[-1] for g in plain.get("grad_init") or [] if g]
    sentence = (f"after the first epoch the smallest per-layer gradient norm of ResNet-{hi} is "
                f"{10 ** gap.estimate:.3g}x plain-{hi}'s (95% CI {10 ** gap.low:.3g}x to "
                f"{10 ** gap.high:.3g}x over {len(p)} seeds; held when above 1x outside the "
                "noise)")
    if init:
        sentence += (f"; at initialisation plain-{hi}'s first conv gets {min(init):.3g}x to "
                     f"{max(init):.3g}x its last conv's gradient")
    return stats.Verdict(stats.judge([gap]), sentence + ".", {"log10_resnet_over_plain": gap})


# ------------------------------------------------------------------------------- the task


def run(config: ExperimentConfig, run_dir: RunDir, reporter, resume: bool = False
        ) -> dict[str, Any]:
    """Every named experiment into RUN/<name>/, seed round after seed round (in `workers`
    processes, a group of experiments each), then RUN/results.json and the report."""
    from cnnlab.data.cifar import detect_layout

    detect_layout(config.data_path())  # a missing data set before any file
    run_dir.save_config(config)  # on resume too: a later resume inherits --seeds N; workers read it
    if not resume:
        run_dir.save_environment()
    start = time.monotonic()
    # A wall time, not a monotonic one: the worker processes share it.
    deadline = None if config.budget is None else time.time() + 60 * config.budget
    data = DataCache(reporter)
    studies = open_studies(config, config.experiments, run_dir, reporter, data, deadline)
    total = sum(len(s.grid.settings) for s in studies.values())
    reporter.log(f"experiments {', '.join(config.experiments)}: {total} nets x "
                 f"{config.seeds} seeds"
                 + (f", more seeds while they fit in {config.budget:g} minutes"
                    if config.budget else ""))
    failed: dict[str, str] = {}  # experiment -> why its worker stopped
    groups = worker_groups(config)
    if len(groups) > 1:
        failed = run_groups(config, groups, studies, run_dir, reporter, data, deadline)
    else:
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        run_rounds(config, list(studies.values()), reporter, deadline)
    if deadline is not None and time.time() >= deadline:
        reporter.log(f"the budget of {config.budget:g} minutes is spent")
    out: dict[str, Any] = {"experiments": {}}
    if len(groups) > 1:
        out["workers"] = {"processes": len(groups), "threads": worker_threads(config, groups),
                          "groups": groups}
    for name, study in studies.items():
        try:
            res = study.summarise()
        except CnnlabError as exc:
            if name not in failed:
                raise
            reporter.log(str(exc))  # its worker's failure is the error, below
            continue
        res["seconds"] = round(sum(study.round_seconds), 1)
        if name in failed:
            res["worker_error"] = failed[name]
        study.run_dir.save_results(res)
        out["experiments"][name] = res
        v = res["verdict"]
        reporter.log(f"experiment {name}: {v['status'].capitalize()}: {v['sentence']}")
    out["seconds"] = round(time.monotonic() - start, 1)
    if out["experiments"]:
        run_dir.save_results(out)
        if config.report:
            from cnnlab.report.experiment import write_report

            write_report(run_dir.path)
    if failed:
        # Like a trial that fails, but a whole group's remaining trials: the results and the
        # report hold what finished, and the run says so with a one-line error.
        why = "; ".join(dict.fromkeys(failed.values()))
        raise CnnlabError(f"{why}; the results leave out {', '.join(failed)}'s missing trials: "
                          f"`cnnlab experiment --resume {run_dir.path}` runs them")
    out["run_dir"] = str(run_dir.path)
    return out


def open_studies(config: ExperimentConfig, names: tuple[str, ...] | list[str], run_dir: RunDir,
                 reporter, data: DataCache, deadline: float | None) -> dict[str, Study]:
    """The studies of `names`, each in RUN/<name>/ (created on first use)."""
    def time_left() -> float | None:
        return None if deadline is None else deadline - time.time()

    studies = {}
    for name in names:
        sub = RunDir(run_dir.path / name)
        sub.path.mkdir(parents=True, exist_ok=True)
        studies[name] = Study(name, config, sub, reporter, data, time_left)
    return studies


def run_rounds(config: ExperimentConfig, studies: list[Study], reporter,
               deadline: float | None) -> None:
    """Seed 0 of every setting of every study, then seed 1, ...: at least `config.seeds`
    rounds, and with a budget more while the next fits (one process's share of the work)."""
    from cnnlab import checkpoints

    def time_left() -> float | None:
        return None if deadline is None else deadline - time.time()

    last_round = config.max_seeds if config.budget else config.seeds
    # One bar over the rounds every run trains (studies x --seeds), each weighted by its
    # expected seconds, so the ETA covers the whole job; a budget's extra rounds come after
    # it, on the last step's line.
    weights = [expected_seconds(st.name, config) for _ in range(config.seeds) for st in studies]
    with reporter.overall("experiment", len(weights), weights) as display:
        k = 0
        for seed in range(last_round):
            ran = False
            for study in studies:
                left = time_left()
                if left is not None and left <= 0:
                    break
                extra = seed >= config.seeds and study.round_seconds
                if extra and (left is None or statistics.fmean(study.round_seconds) > left):
                    continue  # an extra round that would not fit
                k = min(k + 1, len(weights))
                step = display.step(k, f"{study.name} seed {seed}")
                checkpoints.crash_point(f"experiment:{study.name}:seed-{seed}")
                step.log(f"experiment {study.name}: seed {seed} of every setting")
                study.run_round(seed, step)
                ran = True
            if not ran:
                break
            _estimate(config, studies, seed, time_left, reporter)


def _estimate(config: ExperimentConfig, studies: list[Study], seed: int, time_left,
              reporter) -> None:
    """After the first round: what all of them will take here, and whether a budget cuts."""
    one = sum(st.round_seconds[0] for st in studies if st.round_seconds)
    if seed == 0 and one:  # the first round is the estimate of every later one
        need = one * (config.seeds - 1)
        left = time_left()
        reporter.log(f"one seed of every net took {one:.0f} s: {config.seeds} seeds take "
                     f"about {(one + need) / 60:.1f} minutes here"
                     + (f"; the budget leaves {max(0.0, left) / 60:.1f} for "
                        f"{need / 60:.1f}, so the last trials will be cut and left out"
                        if left is not None and need > left else ""))


# ------------------------------------------------------------------------------- workers


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: `taskset`, a container's limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def expected_seconds(name: str, config: ExperimentConfig) -> float:
    """One seed round of experiment `name` under `config`, in ROUND_SECONDS' units: scaled by
    its number of nets (--full) and epochs (--epochs); --quick counts nets only."""
    nets = len(grid(name, config).settings)
    if config.quick:
        return float(nets)
    default = ExperimentConfig(experiments=(name,))
    return (ROUND_SECONDS[name] * nets / len(grid(name, default).settings)
            * config.design(name).epochs / default.design(name).epochs)


def split_groups(seconds: dict[str, float], n: int) -> list[list[str]]:
    """`seconds`' names in at most `n` groups of about equal total: the longest first, each
    into the group with the least so far (ties: the earlier group). Within a group the names
    keep their order; empty groups are dropped."""
    groups: list[list[str]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for name in sorted(seconds, key=lambda k: -seconds[k]):  # stable: ties keep their order
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += seconds[name]
    order = list(seconds)
    return [sorted(g, key=order.index) for g in groups if g]


def worker_groups(config: ExperimentConfig) -> list[list[str]]:
    """The experiments of each process: group 0 runs in the main process."""
    if config.workers <= 1 or len(config.experiments) <= 1:
        return [list(config.experiments)]
    return split_groups({n: expected_seconds(n, config) for n in config.experiments},
                        config.workers)


def worker_threads(config: ExperimentConfig, groups: list[list[str]]) -> int:
    """Torch threads per process: the user's --threads, else the cores shared out."""
    return config.threads or max(1, available_cores() // len(groups))


WORKERS_FILE = "workers.json"  # the main process's plan: groups, deadline, threads


def worker_file(index: int) -> str:
    return f"worker-{index}.json"  # what worker `index` measured: its rounds' seconds


def run_groups(config: ExperimentConfig, groups: list[list[str]], studies: dict[str, Study],
               run_dir: RunDir, reporter, data: DataCache, deadline: float | None
               ) -> dict[str, str]:
    """Group 0 here, every other group in a worker process; wait for them all. Returns, per
    experiment of a worker that failed, one line on why."""
    import torch

    threads = worker_threads(config, groups)
    run_dir.write_json(WORKERS_FILE, {"groups": groups, "deadline": deadline,
                                      "threads": threads})
    reporter.log(f"{len(groups)} processes of {threads} thread{'s' if threads > 1 else ''}: "
                 + " | ".join(", ".join(g) for g in groups))
    # Decode CIFAR-10 into the disk cache here, once, before the workers would each decode it.
    data.get(studies[groups[0][0]].base)
    workers = spawn_workers(run_dir, len(groups) - 1, threads, reporter)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_rounds(config, [studies[n] for n in groups[0]], reporter, deadline)
        codes = [w.wait() for w in workers]
    except BaseException:  # Ctrl-C or an error here: the workers' trials would be for nothing
        for w in workers:
            w.stop()
        raise
    finally:
        torch.set_num_threads(before)
    failed: dict[str, str] = {}
    for k, (w, code) in enumerate(zip(workers, codes, strict=True), start=1):
        names = groups[k]
        f = run_dir.file(worker_file(k))
        if f.is_file():
            for name, secs in run_dir.read_json(f.name)["round_seconds"].items():
                studies[name].round_seconds = secs
        if code == 0:
            continue
        why = (f"worker {k} ({', '.join(names)}) stopped with exit status {code}"
               + (f": {w.last_line()}" if w.last_line() else ""))
        reporter.log(why)
        for name in names:
            failed[name] = why
            _fail_orphans(studies[name], w.proc.pid, why, reporter)
    return failed


def _fail_orphans(study: Study, pid: int, why: str, reporter) -> None:
    """The trial a dead worker was running: failed with the worker's error and queued again
    (study.recover_orphans), so that `--resume` runs it."""
    from optuna.trial import TrialState

    from cnnlab.tasks import study as machinery

    with study.study.lock():
        for t in study.study.trials():
            if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == pid:
                study.study.set_user_attr(t.number, "error", why[:500])
        machinery.recover_orphans(study.study, reporter)


class Worker:
    """A worker process and the thread that passes its output on, prefixed, to the reporter."""

    def __init__(self, index: int, proc: subprocess.Popen, reporter):
        self.index, self.proc = index, proc
        self.tail: deque[str] = deque(maxlen=20)
        self.thread = threading.Thread(target=self._relay, args=(reporter,), daemon=True)
        self.thread.start()

    def _relay(self, reporter) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if reporter.quiet:  # a quiet worker prints only errors: never silence them
                print(f"{reporter.prefix}[worker {self.index}] {line}", file=reporter.err,
                      flush=True)
            else:
                reporter.log(f"[worker {self.index}] {line}")

    def wait(self) -> int:
        code = self.proc.wait()
        self.thread.join()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def last_line(self) -> str:
        """The worker's last words (a one-line error, or a traceback's last line)."""
        return next((t.strip() for t in reversed(self.tail) if t.strip()), "")


def spawn_workers(run_dir: RunDir, n: int, threads: int, reporter) -> list[Worker]:
    """Workers 1..n (`cnnlab experiment --worker RUN --worker-index K`, the same Python).
    Their output comes through a pipe (no progress bars that would cross the main process's),
    and their stdin is a pipe this process holds: when it ends, however it ends (kill -9
    included), the workers read end-of-file and stop (`watch_parent`)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    workers = []
    for k in range(1, n + 1):
        run_dir.file(worker_file(k)).unlink(missing_ok=True)  # an earlier invocation's
        cmd = [sys.executable, "-m", "cnnlab", "experiment", "--worker", str(run_dir.path),
               "--worker-index", str(k)] + (["-q"] if reporter.quiet else [])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        workers.append(Worker(k, proc, reporter))
    return workers


def watch_parent() -> None:
    """End this worker when the main process is gone: its stdin reaches end-of-file (the main
    process held the only write end). No trial may go on training for nobody; the one it was
    running stays RUNNING in the study, and `--resume` retries it (orphan recovery)."""
    def wait() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
        # reader aborts the interpreter's shutdown ("could not acquire lock").
        while os.read(0, 4096):
            pass
        os._exit(3)

    threading.Thread(target=wait, daemon=True).start()


def work(config: ExperimentConfig, run_dir: RunDir, reporter, index: int) -> None:
    """Worker `index`'s share: its group's seed rounds, as the main process planned them
    (RUN/workers.json); then the seconds of its rounds into RUN/worker-K.json."""
    import torch

    watch_parent()
    plan = run_dir.read_json(WORKERS_FILE)
    names = plan["groups"][index]
    torch.set_num_threads(plan["threads"])
    studies = open_studies(config, names, run_dir, reporter, DataCache(reporter),
                           plan["deadline"])
    run_rounds(config, list(studies.values()), reporter, plan["deadline"])
    run_dir.write_json(worker_file(index), {"round_seconds": {
        n: s.round_seconds for n, s in studies.items()}})
