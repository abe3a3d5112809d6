"""`cnnlab experiment depth|filters|pooling|residual`: the lab's claims about choosing a CNN's
parameters and about ResNet, each checked by a small grid of `cnnlab train` runs.

    config = ExperimentConfig(experiments=("depth", "residual"), budget=10)
    results = run(config, RunDir.create("experiment"), Reporter())

Every experiment is a grid of trials queued in an Optuna study (`tasks/sweep.run_study`: the
same storage, orphan recovery and `--resume` as `cnnlab sweep`), one trial per (setting, seed),
each a normal `cnnlab train` run in `RUN/<experiment>/trials/trial-NNNN/`. Nothing is selected:
every trial is tested once on the test subset after its last epoch, and the table gives the
mean ± sample std over seeds.

- depth: `plain-cnn` with 1..8 conv layers (width 16 doubling every second layer, 2x2 max-pool
  after every second layer; see models/plain_cnn.py), equal epochs. Does the gain flatten after
  3-4 layers?
- filters: 3x3, 5x5 and 7x7 kernels at an equal *parameter* budget: 4 layers, width 32 for 3x3,
  and for 5x5 and 7x7 the width whose parameter count is closest to the 3x3 net's. The MACs
  then match too within a few percent (every conv keeps its map size), shown in the table.
- pooling: 2x2 against 4x4, max against average, in the 4-layer width-32 net.
- residual: plain-20/56 against ResNet-20/56 (He et al. 2016, option A shortcuts; 32 and 44 with
  `--full`), He et al.'s recipe (SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, crop +
  flip), the constant learning rate of Fig. 6 before its first drop. Training error and test
  error per epoch; per-layer gradient L2 norms of every conv weight on one fixed batch of 128
  training images, at initialisation and after the first epoch.

Budgets: equal epochs for every trial of an experiment; `--budget MINUTES` is split equally over
an experiment's trials as each one's time limit (a trial stops after the epoch that passes it,
and the table says so).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir

EXPERIMENTS = ("depth", "filters", "pooling", "residual")
DEFAULT_DATA = "cifar10/cifar10-jpg.zip"  # under the data root

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
# He et al. 2016, section 4.2: SGD lr 0.1, momentum 0.9, weight decay 1e-4, mini-batch 128,
# 4-pixel zero padding + random 32x32 crop + horizontal flip; lr constant until 32k iterations.
HE_RECIPE = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
    "bias_lr_scale": 1.0, "label_smoothing": 0.0, "schedule": {"kind": "constant"},
    "augment": {"crop_pad": 4, "pad_mode": "zeros", "flip": "random"},
    "normalization": "dataset", "lookahead": None, "tta": "none", "precision": "auto",
    "batch_size": 128, "whiten_images": 0, "whiten_bias_epochs": 0.0,
}
DEPTH_WIDTH = 16  # plain-cnn width for the depth study (16 .. 128 channels at depth 8)
GRID_WIDTH = 32  # the 3x3 reference width of the filters and pooling studies
GRAD_BATCH = 128  # images in the fixed batch of the gradient norms


@dataclass(frozen=True)
class ExperimentConfig:
    experiments: tuple[str, ...] = EXPERIMENTS
    data: str | None = None  # default: DATA_ROOT/cifar10/cifar10-jpg.zip
    data_root: str = "../shared/data"
    budget: float | None = None  # minutes per experiment, split equally over its trials
    seeds: int = 2  # seeds 0 .. seeds-1 per setting
    limit_per_class: int | None = 200  # train and test on the first N images of each class
    epochs: float | None = None  # default: each experiment's own (see EPOCHS)
    full: bool = False  # residual: 20, 32, 44, 56 (default: 20 and 56)
    quick: bool = False  # the lab's --quick: 1 epoch, fewer settings
    # Default 128 (He et al.); the learning rate scales with it (linear scaling rule).
    batch_size: int | None = None
    threads: int | None = None
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
        if self.epochs is not None and self.epochs <= 0:
            raise CnnlabError(f"--epochs must be positive, not {self.epochs}")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise CnnlabError("--limit-per-class must be at least 2")
        if self.batch_size is not None and self.batch_size < 2:
            raise CnnlabError(f"--batch-size must be at least 2, not {self.batch_size}")

    def data_path(self) -> Path:
        return Path(self.data) if self.data else Path(self.data_root) / DEFAULT_DATA


EPOCHS = {"depth": 4, "filters": 4, "pooling": 4, "residual": 3}


# ------------------------------------------------------------------------------- the grids


@dataclass
class Grid:
    """One experiment: its settings (one per row of the table) and how a row is trained."""

    name: str
    question: str
    settings: list[dict[str, Any]]  # trial params except the seed
    label: Callable[[dict[str, Any]], str]
    recipe: dict[str, Any]
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
                    PLAIN_RECIPE, extra={"width": DEPTH_WIDTH, "kernel": 3, "pool": 2,
                                         "pool_kind": "max"},
                    note=f"plain-cnn, width {DEPTH_WIDTH} doubling every second layer, 3x3 "
                         "kernels, 2x2 max-pooling after every second layer, global average "
                         "pooling and one linear layer")
    if name == "filters":
        kernels = (3, 5) if config.quick else (3, 5, 7)
        settings = [{"kernel": k, "width": equal_param_width(k, GRID_WIDTH)} for k in kernels]
        return Grid(name, "Filters are usually 5x5 or 3x3.", settings,
                    lambda s: f"{s['kernel']}x{s['kernel']}, width {s['width']}", PLAIN_RECIPE,
                    extra={"depth": 4, "pool": 2, "pool_kind": "max"},
                    note="plain-cnn, 4 layers, at an equal parameter budget: the width of the "
                         "5x5 and 7x7 nets is chosen so that their parameter count is closest "
                         f"to the 3x3 net's of width {GRID_WIDTH}")
    if name == "pooling":
        pools = ((2, "max"), (4, "max")) if config.quick else (
            (2, "max"), (2, "avg"), (4, "max"), (4, "avg"))
        return Grid(name, "Pooling is usually 2x2, or 4x4 for large inputs.",
                    [{"pool": p, "pool_kind": k} for p, k in pools],
                    lambda s: f"{s['pool']}x{s['pool']} {s['pool_kind']}", PLAIN_RECIPE,
                    extra={"depth": 4, "width": GRID_WIDTH, "kernel": 3},
                    note=f"plain-cnn, 4 layers, width {GRID_WIDTH}, 3x3 kernels; one pooling "
                         "after layer 2 (32x32 inputs: 2x2 leaves 16x16 maps, 4x4 leaves 8x8)")
    depths = (20, 32, 44, 56) if config.full else (20,) if config.quick else (20, 56)
    models = [f"{kind}{d}" for d in depths for kind in ("plain", "resnet")]
    return Grid(name, "ResNet adds the input to the block's output, H(x) = F(x) + x, which "
                "counters the derivative going to zero.", [{"model": m} for m in models],
                lambda s: s["model"], HE_RECIPE, models=tuple(models),
                note="He et al. 2016 CIFAR nets (16-32-64 filters, option A shortcuts), their "
                     "recipe with the constant learning rate of Fig. 6 before its first drop")


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


# ------------------------------------------------------------------------------- running


def base_train(config: ExperimentConfig, g: Grid):
    from cnnlab.tasks.train import TrainConfig

    epochs = config.epochs or (1 if config.quick else EPOCHS[g.name])
    recipe = dict(g.recipe)
    if config.batch_size:
        # The linear scaling rule (Goyal et al. 2017): the learning rate follows the batch size,
        # so a smaller batch takes more, smaller steps over the same images.
        recipe["lr"] = recipe["lr"] * config.batch_size / recipe["batch_size"]
        recipe["batch_size"] = config.batch_size
    return TrainConfig(
        data=str(config.data_path()), models=g.models[:1], recipe="fast", epochs=epochs,
        limit_per_class=config.limit_per_class, threads=config.threads, report=False,
        model_options=tuple(g.extra.items()),
        recipe_overrides=tuple((k, v) for k, v in recipe.items() if k != "epochs"),
        # Per-epoch test accuracy only where the curves are shown (residual): it costs time.
        eval_every=1 if g.name == "residual" else 10_000,
    )


def objective(g: Grid, base, n_trials: int, budget: float | None, reporter,
              grad_batch: int = GRAD_BATCH):
    """The sweep machinery's objective for one grid trial: train, test once, and for the
    residual study the gradient norms at initialisation and after the first epoch."""
    from cnnlab.models.registry import create_model
    from cnnlab.tasks import sweep, train

    def run_trial(t: sweep.Trial) -> tuple[float, dict[str, Any]]:
        import torch

        params = {}
        for key in (*g.settings[0], "seed"):
            choices = sorted({s[key] for s in g.settings}) if key != "seed" else None
            if key == "seed":
                params[key] = t.optuna_trial.suggest_int("seed", 0, 10_000)
            else:
                params[key] = t.optuna_trial.suggest_categorical(key, choices)
        cfg = sweep.trial_config(base, params)
        if budget is not None:
            cfg = replace(cfg, time_limit=60 * budget / n_trials)
        attrs: dict[str, Any] = {}
        after_epoch = None
        if g.name == "residual":
            data = train.load_data(cfg, reporter)
            model_name = cfg.models[0]
            recipe = train.recipe_for(cfg, model_name)
            x, y = fixed_batch(data, recipe, grad_batch)
            torch.manual_seed(cfg.seed)  # as train_one does: the same initial weights
            init = create_model(model_name, num_classes=data.num_classes,
                                **dict(recipe.model_options))
            attrs["metric_grad_init"] = conv_grad_norms(init, x, y)

            def after_epoch(model, record: dict[str, Any]) -> None:
                if record["epoch"] == 1:
                    attrs["metric_grad_epoch1"] = conv_grad_norms(model, x, y)

        res = train.run(cfg, t.run_dir, reporter, after_epoch=after_epoch)
        r = res["runs"][0]
        sub = RunDir(t.run_dir.path / f"{r['model']}-seed{r['seed']}")
        epochs = [rec for rec in sub.read_metrics() if rec.get("kind") == "epoch"]
        attrs.update({
            "epochs": r["epochs"], "stopped": r["stopped"], "params_count": r["params"],
            "metric_macs": res["models"][0]["macs"], "metric_steps": r["steps"],
            "metric_test_accuracy": r["test_accuracy"],
            "metric_train_accuracy": epochs[-1]["train_accuracy"] if epochs else None,
            "metric_train_seconds": round(r["train_seconds"], 1),
            "metric_curve": [[rec["step"], rec["train_accuracy"], rec.get("test_accuracy")]
                             for rec in epochs],
        })
        if g.name == "residual":  # the training loss of every logged window (4 per epoch)
            attrs["metric_loss_curve"] = [[rec["step"], rec["train_loss"]]
                                          for rec in sub.read_metrics()
                                          if rec.get("kind") == "step"]
        return float(r["test_accuracy"]), attrs

    return run_trial


def run_one(name: str, config: ExperimentConfig, run_dir: RunDir, reporter) -> dict[str, Any]:
    """One experiment into `run_dir` (its study, trials, results.json and plot)."""
    from cnnlab.tasks import sweep

    g = grid(name, config)
    base = base_train(config, g)
    url = sweep.storage_url(None, run_dir)
    import optuna

    study = sweep.make_study(url, f"experiment-{name}", optuna.samplers.RandomSampler(seed=0),
                             optuna.pruners.NopPruner())
    n_trials = len(g.settings) * config.seeds
    with sweep.study_lock(url):
        if not study.get_trials(deepcopy=False):  # a new study: queue the whole grid
            for seed in range(config.seeds):
                for s in g.settings:
                    study.enqueue_trial({**s, "seed": seed})
    if not run_dir.file("config.json").is_file():
        run_dir.save_config({"experiment": name, "config": config, "train": base,
                             "settings": g.settings})
    reporter.log(f"experiment {name}: {len(g.settings)} settings x {config.seeds} seeds, "
                 f"{base.epochs} epochs each"
                 + (f", {60 * config.budget / n_trials:.0f} s per trial at most"
                    if config.budget else ""))
    grad_batch = 32 if config.quick else GRAD_BATCH
    sweep.run_study(study, url, run_dir,
                    objective(g, base, n_trials, config.budget, reporter, grad_batch),
                    n_trials, reporter)
    rows = sweep.trial_rows(study)
    sweep.write_trials_csv(run_dir, rows)
    if not any(r["state"] == "COMPLETE" for r in rows):
        errors = [r["error"] for r in rows if r.get("error")]
        raise CnnlabError(f"experiment {name}: no trial finished"
                          + (f"; the first error: {errors[0]}" if errors else ""))
    results = summarise(g, config, base, rows, run_dir)
    from cnnlab.report.experiment import plot_experiment

    results["plot"] = plot_experiment(results, run_dir.path)
    run_dir.save_results(results)
    return results


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(g: Grid, config: ExperimentConfig, base, rows: list[dict[str, Any]],
              run_dir: RunDir) -> dict[str, Any]:
    """One row per setting: test and train accuracy mean ± std over its seeds (percent), and
    the verdict on the lab's claim."""
    n_train = n_test = None
    for r in rows:
        f = run_dir.path / (r["run_dir"] or "-") / "results.json"
        if r["state"] == "COMPLETE" and f.is_file():
            first = RunDir(f.parent).read_json("results.json")
            n_train, n_test = first["n_train"], first["n_test"]
            break
    table = []
    for s in g.settings:
        mine = [r for r in rows if r["state"] == "COMPLETE"
                and all(r["params"].get(k) == v for k, v in s.items())]
        test = [100 * r["metric_test_accuracy"] for r in mine]
        trn = [100 * r["metric_train_accuracy"] for r in mine
               if r.get("metric_train_accuracy") is not None]
        tm, ts = _mean_std(test)
        rm, rs = _mean_std(trn)
        row = {"setting": s, "label": g.label(s), "seeds": len(mine),
               "test_mean": tm, "test_std": ts, "train_mean": rm, "train_std": rs,
               "params": mine[0]["params_count"] if mine else None,
               "macs": mine[0].get("metric_macs") if mine else None,
               "epochs": [r["epochs"] for r in mine],
               "steps": [r.get("metric_steps") for r in mine],
               "stopped": sorted({r["stopped"] for r in mine}),
               "seconds": statistics.fmean(r["metric_train_seconds"] for r in mine)
               if mine else None,
               "failed": sum(r["state"] == "FAIL" and not r["retried"] for r in rows
                             if all(r["params"].get(k) == v for k, v in s.items()))}
        if g.name == "residual" and mine:
            first = min(mine, key=lambda r: r["params"]["seed"])
            row["grad_init"] = first.get("metric_grad_init")
            row["grad_epoch1"] = first.get("metric_grad_epoch1")
            row["curve"] = first.get("metric_curve")
            row["loss_curve"] = first.get("metric_loss_curve")
        table.append(row)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    results = {
        "experiment": g.name, "claim": g.question, "note": g.note,
        "data": base.data, "limit_per_class": base.limit_per_class, "epochs": base.epochs,
        "seeds": config.seeds, "budget_minutes": config.budget,
        "time_limit_per_trial": (60 * config.budget / max(1, len(rows)))
        if config.budget else None,
        "recipe": g.recipe, "rows": table, "n_train": n_train, "n_test": n_test,
        "grad_batch": 32 if config.quick else GRAD_BATCH,
        "trials": len(rows), "completed": len(done),
        # Wall time of every trial (training, evaluation, loading), over all invocations.
        "trial_seconds": round(sum(r.get("seconds") or 0 for r in rows), 1),
    }
    results["verdict"] = verdict(g.name, table)
    return results


# ------------------------------------------------------------------------------- verdicts


def _held(ok: bool | None) -> str:
    return "Held here" if ok else "Did not hold here" if ok is not None else "Undecided here"


def verdict(name: str, rows: list[dict[str, Any]]) -> str:
    """One sentence on whether the lab's claim held, from the table's numbers (the rule is in
    the sentence)."""
    acc = {r["label"]: r["test_mean"] for r in rows if r["test_mean"] is not None}
    if len(acc) < 2:
        return "Undecided here: fewer than two settings finished."
    if name == "depth":
        by_depth = {r["setting"]["depth"]: r["test_mean"] for r in rows
                    if r["test_mean"] is not None}
        if 1 not in by_depth or 4 not in by_depth or not any(d > 4 for d in by_depth):
            depths = sorted(by_depth)
            return (f"Undecided here: the claim needs depths 1, 4 and beyond; ran "
                    f"{', '.join(map(str, depths))} (test accuracy "
                    + ", ".join(f"{by_depth[d]:.1f}%" for d in depths) + ").")
        early = by_depth[4] - by_depth[1]
        best_deep = max(v for d, v in by_depth.items() if d > 4)
        late = best_deep - by_depth[4]
        rising = early > 0
        flat = late < 0.25 * early if rising else None
        return (f"{_held(rising and flat)}: from 1 to 4 layers test accuracy rose "
                f"{early:+.1f} points, from 4 layers to the best deeper net {late:+.1f} "
                "(the claim holds when layers 1-4 gain and the deeper nets add less than a "
                "quarter of that).")
    if name == "filters":
        best = max(rows, key=lambda r: r["test_mean"] if r["test_mean"] is not None else -1)
        k = best["setting"]["kernel"]
        return (f"{_held(k in (3, 5))}: at an equal parameter budget the best kernel was "
                f"{k}x{k} ({best['test_mean']:.1f}%); "
                + ", ".join(f"{r['label']}: {r['test_mean']:.1f}%" for r in rows
                            if r["test_mean"] is not None) + ".")
    if name == "pooling":
        two = max((r["test_mean"] for r in rows if r["setting"]["pool"] == 2
                   and r["test_mean"] is not None), default=None)
        four = max((r["test_mean"] for r in rows if r["setting"]["pool"] == 4
                    and r["test_mean"] is not None), default=None)
        if two is None or four is None:
            return "Undecided here: 2x2 and 4x4 did not both finish."
        return (f"{_held(two > four)}: on 32x32 inputs (small, so the claim expects 2x2) the "
                f"best 2x2 pooling reached {two:.1f}%, the best 4x4 {four:.1f}%.")
    return residual_verdict(rows)


def _gradient_sentence(by: dict[str, dict[str, Any]], depth: int) -> str:
    """What the per-layer gradient norms say about "the derivative going to zero": their trend
    from output to input at initialisation, and the smallest layer's after the first epoch,
    plain against residual (the rule is in the sentence)."""
    plain, res = by.get(f"plain{depth}", {}), by.get(f"resnet{depth}", {})
    g0 = plain.get("grad_init")
    if not g0:
        return ""
    ratio = g0[0] / g0[-1]
    trend = ("shrink towards the input" if ratio < 0.1 else "grow towards the input"
             if ratio > 10 else "stay within 10x from input to output")
    text = (f" At initialisation plain-{depth}'s gradient norms {trend} (first conv "
            f"{ratio:.3g}x the last's")
    if res.get("grad_init"):
        text += f"; ResNet-{depth}: {res['grad_init'][0] / res['grad_init'][-1]:.3g}x"
    text += ")"
    g1, r1 = plain.get("grad_epoch1"), res.get("grad_epoch1")
    if not g1 or not r1:
        return text + "."
    low_p, low_r = min(g1), min(r1)
    text += (f"; after the first epoch plain-{depth}'s smallest is {low_p:.2g} (conv "
             f"{g1.index(low_p) + 1} of {len(g1)}), ResNet-{depth}'s {low_r:.2g}")
    if low_p * 3 < low_r:
        return text + (": the plain net's derivative does shrink in its inner layers, and the "
                       "shortcuts keep it up (held: the smallest is over 3x lower without them).")
    return text + (": no sign here of the plain net's derivative going to zero that the "
                   "shortcuts prevent (the rule: its smallest under a third of the ResNet's).")


def residual_verdict(rows: list[dict[str, Any]]) -> str:
    by = {r["setting"]["model"]: r for r in rows if r["train_mean"] is not None}
    depths = sorted({int(m.removeprefix("plain").removeprefix("resnet")) for m in by})
    if not depths:
        return "Undecided here: no net finished."
    grads = _gradient_sentence(by, depths[-1])
    if len(depths) < 2:
        errors = ", ".join(f"{m} train error {100 - r['train_mean']:.1f}%" for m, r in by.items())
        return f"Undecided here: one depth only ({errors}).{grads}"
    lo, hi = depths[0], depths[-1]
    err = {m: 100 - r["train_mean"] for m, r in by.items()}
    try:
        plain_worse = err[f"plain{hi}"] > err[f"plain{lo}"]
        res_better = err[f"resnet{hi}"] <= err[f"resnet{lo}"]
    except KeyError:
        return f"Undecided here: not every net finished.{grads}"
    p_lo, p_hi, r_lo, r_hi = (err[f"plain{lo}"], err[f"plain{hi}"], err[f"resnet{lo}"],
                              err[f"resnet{hi}"])
    return (f"{_held(plain_worse and res_better)} for Fig. 6's trend (the deeper plain net "
            f"trains worse, the deeper ResNet better): training error plain-{lo} {p_lo:.1f}% "
            f"vs plain-{hi} {p_hi:.1f}%, ResNet-{lo} {r_lo:.1f}% vs ResNet-{hi} {r_hi:.1f}%."
            f"{grads}")


# ------------------------------------------------------------------------------- the task


def run(config: ExperimentConfig, run_dir: RunDir, reporter, resume: bool = False
        ) -> dict[str, Any]:
    """Every named experiment into RUN/<name>/, then RUN/results.json and the report."""
    from cnnlab.data.cifar import detect_layout

    detect_layout(config.data_path())  # a missing data set before any file
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    if not resume:
        run_dir.save_config(config)
        run_dir.save_environment()
    out: dict[str, Any] = {"experiments": {}}
    start = time.monotonic()
    for name in config.experiments:
        sub = RunDir(run_dir.path / name)
        sub.path.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        res = run_one(name, config, sub, reporter)
        res["seconds"] = round(time.monotonic() - t0, 1)
        out["experiments"][name] = res
        reporter.log(f"experiment {name}: {res['verdict']}")
    out["seconds"] = round(time.monotonic() - start, 1)
    run_dir.save_results(out)
    if config.report:
        from cnnlab.report.experiment import write_report

        write_report(run_dir.path)
    out["run_dir"] = str(run_dir.path)
    return out

