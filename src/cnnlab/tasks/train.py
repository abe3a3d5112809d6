"""`cnnlab train`: image classifiers from scratch (CIFAR-10 and alike), one model after another,
one comparison table at the end.

    config = TrainConfig(data="cifar10-jpg.zip", models=("simple-cnn", "resnet18"), recipe="lab")
    results = run(config, RunDir.create("train"), Reporter())

For every (model, seed) the task builds the model and the recipe's optimiser, schedule,
augmentation and weight averaging (`recipes.py`), and hands the loop to the shared engine
(`engine.fit`: checkpoints, exact resume, NaN guard, DDP). Each lands in its own sub-directory
`<model>-seed<k>/` (metrics.jsonl, checkpoints, results.json); the run's results.json holds
every pair and the mean ± std per model, and `report/train.py` draws the curves and renders the
report from those files.

Data lives in memory as uint8 tensors (`data/cifar.py`, decoded once and cached on disk) and is
batched and augmented as whole tensors (`data/tensor_batches.py`): no DataLoader, no per-image
Python. Under torchrun each rank trains on its share of every epoch (batch_size / world_size
images per step), rank 0 writes; the metrics are all-reduced by the engine.

Accuracy is measured on the test set once per (model, seed), after training, with the recipe's
test-time augmentation; per-epoch test accuracy (without TTA) is logged for the curves and never
used to choose anything. The weights tested are the last epoch's or, with `--val-fraction` (a
validation split carved from train), the `best` checkpoint: the epoch of the highest validation
accuracy, so that validation picks the weights and the test set only measures them
(results.json: tested_epoch, tested_checkpoint). With `test=False` (the trials of `cnnlab
sweep`) the test set is never looked at: results hold validation accuracy only.

`model_options` pass builder options to every model (`plain-cnn`'s depth, width, kernel, ...);
`recipe_overrides` replace any field of the recipe (momentum, weight_decay, label_smoothing,
schedule, augment, lookahead, ...; nested ones as mappings), so that a sweep or an experiment can
set every training choice without a recipe of its own in `recipes.py`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import budget, hardware
from cnnlab.errors import CnnlabError
from cnnlab.hardware import autocast
from cnnlab.runs import RunDir, check_record, damaged

RECIPE_CHOICES = ("fast", "lab")
DEFAULT_MODEL = "fast-cifar"
EVAL_BATCH = 500  # images per evaluation forward pass: bounded memory, ~full speed on a CPU


@dataclass(frozen=True)
class TrainConfig:
    data: str  # a CIFAR zip, a folder of train/ and test/ class folders, the official batches
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    recipe: str = "fast"  # "fast" (cnnlab's best on a CPU), "lab" (the course lab's, per model)
    epochs: float | None = None  # override the recipe's epochs
    batch_size: int | None = None  # override the recipe's (global) batch size
    lr: float | None = None  # override the recipe's learning rate
    seeds: int = 1  # seeds seed, seed+1, ...: accuracy is reported as mean ± std over them
    seed: int = 0
    precision: str = "auto"  # fp32, bf16, or auto: bf16 where the CPU/GPU does it natively
    limit_per_class: int | None = None  # train and test on the first N images of each class
    # Train on a seeded random N images of each class of train; the test set stays whole (a
    # small training set, measured on every test image: the tightest accuracy per second).
    train_per_class: int | None = None
    image_size: int | None = None  # shrink every image to S x S first (area averaging)
    # At every evaluation, accuracy and loss on this many training images (a fixed stratified
    # sample, no augmentation, eval mode): the training error of He et al.'s Fig. 6, measured
    # cleanly rather than as the running accuracy of augmented batches. 0 = off.
    train_eval: int = 0
    # Measure the test set at every evaluation (the per-epoch test curve); False: only once,
    # after the last step (the number results.json reports), so a study that needs only
    # training curves does not pay a test pass per epoch (10,000 images: more than an epoch
    # of a small training set costs).
    test_curve: bool = True
    val_fraction: float = 0.0  # share of train held out as validation (its best epoch is tested)
    time_limit: float | None = None  # seconds per (model, seed); stops after the epoch that ends
    # Minutes for the whole run (every model and seed, training and final test), shared
    # equally: each (model, seed) times a few of its steps on this machine and trains as many
    # as fit its share, its schedule stretched over them (instead of --epochs).
    budget: float | None = None
    # With a budget, time the default network's candidate shapes (fast-cifar at a quarter and
    # at its full width, budget.SHAPES) and train the one expected to do best in the minutes.
    calibrate: bool = True
    eval_every: int = 1  # epochs between the test-accuracy points of the curves
    threads: int | None = None  # torch CPU threads (default: torch's, i.e. the cores)
    device: str = "auto"
    deterministic: bool = False
    report: bool = True
    # Builder options for every model, e.g. (("depth", 4), ("kernel", 5)) for plain-cnn.
    model_options: tuple[tuple[str, Any], ...] = ()
    # Any Recipe field, replaced after the recipe is chosen (see `apply_overrides`).
    recipe_overrides: tuple[tuple[str, Any], ...] = ()
    test: bool = True  # measure test accuracy; False: validation only (a sweep's trials)

    def __post_init__(self) -> None:
        # From JSON (config.json of a resumed run) these arrive as lists of [key, value] lists.
        object.__setattr__(self, "model_options", _pairs(self.model_options, "model_options"))
        object.__setattr__(self, "recipe_overrides",
                           _pairs(self.recipe_overrides, "recipe_overrides"))
        bad = [k for k, _ in self.recipe_overrides if k not in OVERRIDABLE]
        if bad:
            from cnnlab.errors import suggest

            raise CnnlabError(f"recipe_overrides: {bad[0]!r} is not a recipe setting"
                              f"{suggest(bad[0], OVERRIDABLE)}")
        if not self.test and not self.val_fraction:
            raise CnnlabError("a run without the test set needs --val-fraction (else it "
                              "measures nothing)")
        if not self.models:
            raise CnnlabError("no model given: pass -m MODEL")
        if len(set(self.models)) != len(self.models):
            raise CnnlabError("a model is given twice; each -m names a different model")
        if self.recipe not in RECIPE_CHOICES:
            from cnnlab import recipes

            if self.recipe not in recipes.RECIPES:
                raise CnnlabError(f"unknown --recipe {self.recipe!r}; choose "
                                  f"{', '.join(RECIPE_CHOICES + tuple(recipes.RECIPES))}")
        if self.seeds < 1:
            raise CnnlabError(f"--seeds must be at least 1, not {self.seeds}")
        if self.epochs is not None and self.epochs <= 0:
            raise CnnlabError(f"--epochs must be positive, not {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CnnlabError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise CnnlabError(f"--lr must be positive, not {self.lr}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise CnnlabError("--precision must be fp32, bf16 or auto")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise CnnlabError("--limit-per-class must be at least 2")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise CnnlabError(f"train_per_class must be at least 1, not {self.train_per_class}")
        if self.image_size is not None and self.image_size < 4:
            raise CnnlabError(f"image_size must be at least 4 pixels, not {self.image_size}")
        if self.train_eval < 0:
            raise CnnlabError(f"train_eval must be >= 0 images, not {self.train_eval}")
        if not 0 <= self.val_fraction < 1:
            raise CnnlabError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise CnnlabError("--time-limit must be positive (seconds)")
        if self.budget is not None and self.budget <= 0:
            raise CnnlabError(f"--budget must be positive (minutes), not {self.budget}")
        if self.budget is not None and self.epochs is not None:
            raise CnnlabError("give --epochs or --budget, not both (a budget sets the steps)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")


def _pairs(value: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """((key, value), ...) from a mapping, pairs, or JSON's lists of [key, value]."""
    if isinstance(value, dict):
        value = tuple(value.items())
    try:
        pairs = tuple((str(k), v) for k, v in value)
    except (TypeError, ValueError):
        raise CnnlabError(f"{what} must be a mapping of settings, not {value!r}") from None
    if len({k for k, _ in pairs}) != len(pairs):
        raise CnnlabError(f"{what}: a setting is given twice")
    return pairs


# Recipe fields a config may replace (name and model are the recipe's identity, not settings).
OVERRIDABLE = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
               "bias_lr_scale", "label_smoothing", "schedule", "augment", "normalization",
               "lookahead", "tta", "precision", "whiten_images", "whiten_bias_epochs")


def apply_overrides(recipe, overrides: tuple[tuple[str, Any], ...]):
    """`recipe` with fields replaced; the nested ones (schedule, augment, lookahead) are given
    as mappings of their own fields (lookahead: None switches it off). Values are checked by
    the dataclasses themselves (a one-line CnnlabError)."""
    from cnnlab import recipes
    from cnnlab.data.tensor_batches import Augment

    nested = {"schedule": recipes.Schedule, "augment": Augment, "lookahead": recipes.Lookahead}
    values = {}
    for key, value in overrides:
        if key in nested and isinstance(value, dict):
            names = {f.name for f in fields(nested[key])}
            unknown = sorted(set(value) - names)
            if unknown:
                raise CnnlabError(f"recipe_overrides {key}: unknown setting {unknown[0]!r}; "
                                  f"it has {', '.join(sorted(names))}")
            value = nested[key](**value)
        values[key] = value
    try:
        return replace(recipe, **values) if values else recipe
    except TypeError as exc:
        raise CnnlabError(f"recipe_overrides: {exc}") from None


def recipe_for(config: TrainConfig, model: str):
    """The recipe one model trains with: the lab's own for that model, or the named recipe with
    this model in it; then the command line's overrides."""
    from cnnlab import recipes
    from cnnlab.models.registry import get_spec

    name = get_spec(model).name
    if config.recipe == "lab":
        if name not in recipes.LAB_RECIPES:
            raise CnnlabError(f"the lab trained only {', '.join(recipes.LAB_RECIPES)}; "
                              f"use --recipe fast for {name}")
        recipe = recipes.LAB_RECIPES[name]
    else:
        recipe = with_model(recipes.get_recipe(config.recipe), name)
    overrides = {k: v for k, v in (("epochs", config.epochs), ("batch_size", config.batch_size),
                                   ("lr", config.lr)) if v is not None}
    if config.precision != "auto":
        overrides["precision"] = config.precision
    recipe = apply_overrides(recipe, config.recipe_overrides)
    if config.model_options:
        recipe = replace(recipe, model_options=(*recipe.model_options, *config.model_options))
    return replace(recipe, **overrides) if overrides else recipe


def with_model(recipe, model: str):
    """A recipe written for one network applied to another: the same optimiser, schedule,
    augmentation, averaging and TTA; the first network's own parts (its whitening layer, its
    builder options) are left out, and the learning rates become the recipe's `other_lr` and
    `other_bias_lr_scale` (or `lr_without_norm` for a network without normalisation layers).
    This is how the lab's question is answered on equal terms."""
    if recipe.model == model:
        return recipe
    if not has_normalization(model):
        lr, bias_scale = recipe.lr_without_norm or recipe.lr, recipe.bias_lr_scale
    else:
        lr = recipe.other_lr or recipe.lr
        bias_scale = recipe.other_bias_lr_scale or recipe.bias_lr_scale
    return replace(recipe, model=model, lr=lr, bias_lr_scale=bias_scale, whiten_images=0,
                   whiten_bias_epochs=0, model_options=())


def has_normalization(model: str) -> bool:
    """Whether the registered network has a BatchNorm/GroupNorm/LayerNorm-style layer (built
    on the meta device: no memory, no weights)."""
    from cnnlab.models.meta import build_on_meta
    from cnnlab.models.registry import create_model

    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    net = build_on_meta(lambda: create_model(model, num_classes=10))
    return any(isinstance(m, norms) for m in net.modules())


def precision_for(config: TrainConfig, recipe, device: torch.device) -> tuple[str, str]:
    """The run's precision and why (environment.json, results.json). `--precision auto` (the
    default) leaves a recipe's own precision alone (the lab recipes train in fp32, as the
    course lab did), and only a precision the user set is "asked for"."""
    given = config.precision != "auto" or any(k == "precision"
                                              for k, _ in config.recipe_overrides)
    precision, why = hardware.resolve_precision(recipe.precision, device, source="asked for")
    if why.startswith("asked for"):
        why = ("asked for" if given else f"the {recipe.name} recipe's own (--precision auto "
               "keeps a recipe's precision)")
    return precision, why


def _device(requested: str) -> torch.device:
    from cnnlab import dist

    _, device = dist.init(requested)
    return device


def load_data(config: TrainConfig, reporter):
    from cnnlab import dist
    from cnnlab.data.cifar import downscale, load_cifar_once, split_validation, subset

    path = Path(config.data).expanduser()
    if not path.exists():
        raise CnnlabError(f"data not found: {path} (a CIFAR zip, class folders, or the official "
                          "cifar-10-batches-py folder)")
    data = load_cifar_once(path, dist.from_env(), limit_per_class=config.limit_per_class,
                           reporter=reporter)
    if config.train_per_class:
        # Seed 0 whatever the run's seed: every seed and setting of a study sees the same images.
        data = subset(data, per_class=config.train_per_class, seed=0, test_too=False)
    if config.image_size:
        data = downscale(data, config.image_size)
    if config.val_fraction:
        data = split_validation(data, fraction=config.val_fraction, seed=config.seed)
    return data


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device,
             tta: str = "none") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of uint8 images, in batches of EVAL_BATCH."""
    from cnnlab import recipes
    from cnnlab.data.tensor_batches import normalize

    if not len(x):  # a caller's bug: there is no accuracy of no images
        raise ValueError("accuracy() needs at least one image")
    model.eval()
    hits, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        xb = normalize(x[start : start + EVAL_BATCH], mean, std).to(device)
        yb = y[start : start + EVAL_BATCH].to(device)
        logits = recipes.predict(model, xb, tta).float()
        hits += int((logits.argmax(1) == yb).sum())
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
    return hits / len(x), loss / len(x)


def _norm(recipe, data) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std images are normalised with."""
    return ((0.5,) * 3, (0.5,) * 3) if recipe.normalization == "half" else (data.mean, data.std)


def _build(recipe, data, model_name: str, seed: int, device: torch.device):
    """(model, batches(epoch), loss_fn) of one run: the model built and initialised under
    `seed` (with the recipe's whitening), this rank's share of each epoch's batches."""
    from cnnlab import dist, recipes
    from cnnlab.data.tensor_batches import iter_batches, normalize, num_batches
    from cnnlab.models.registry import create_model

    info = dist.from_env()
    if recipe.batch_size % info.world_size:
        raise CnnlabError(f"batch size {recipe.batch_size} does not split evenly over "
                          f"{info.world_size} processes")
    per_rank = recipe.batch_size // info.world_size
    n_train = len(data.train_y)
    if num_batches(n_train, per_rank, info.world_size) < 1:
        raise CnnlabError(f"{n_train} training images do not make one batch of "
                          f"{recipe.batch_size}; lower --batch-size")
    mean, std = _norm(recipe, data)
    torch.manual_seed(seed)
    options = dict(recipe.model_options)
    options.setdefault("num_classes", data.num_classes)
    model = create_model(model_name, **options)
    if recipe.whiten_images:
        recipes.prepare_model(recipe, model,
                              normalize(data.train_x[: recipe.whiten_images], mean, std,
                                        channels_last=False))
    model = model.to(device=device, memory_format=torch.channels_last)
    augment = recipe.augment

    def batches(epoch: int):
        return iter_batches(data.train_x, data.train_y, per_rank, seed=seed, epoch=epoch,
                            augment=augment, mean=mean, std=std, rank=info.rank,
                            world_size=info.world_size)

    return model, batches, nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def _seconds_per_step(recipe, model, batches, loss_fn, precision, device) -> float:
    from cnnlab import recipes
    from cnnlab.engine import seconds_per_step

    return seconds_per_step(model, lambda m: recipes.make_optimizer(recipe, m), batches,
                            loss_fn, precision, device)


def train_one(config: TrainConfig, data, model_name: str, seed: int, run_dir: RunDir,
              reporter, device: torch.device, resume: bool = False,
              after_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
              at_start: Callable[[nn.Module], None] | None = None,
              tta: str | None = None, shape=None, share: float | None = None,
              step_seconds: float | None = None) -> dict[str, Any]:
    """Train one model with one seed into `run_dir`; returns its results (also results.json).
    With a budget: `tta` is the test-time augmentation an earlier seed of this model chose (so
    that every seed of a model is tested alike; else each plans its own); `shape` the
    calibration's choice of width, batch and learning rate (budget.Shape), `share` the seconds
    of this run, `step_seconds` a timing of this shape already made (not repeated).

    `after_epoch(model, record)` is the engine's hook (`engine.fit`): it sees every epoch's
    metrics (val_accuracy with a validation split) and may raise to stop, e.g. to prune.
    `at_start(model)` sees the model as built and initialised, before the first step of a new
    run (not on resume): e.g. to measure its gradients at initialisation."""
    from cnnlab import dist, recipes
    from cnnlab.data.tensor_batches import num_batches
    from cnnlab.engine import FitConfig, fit
    from cnnlab.models.registry import count_parameters

    info = dist.from_env()
    recipe = recipe_for(config, model_name)
    if shape is not None:
        recipe = apply_shape(recipe, shape)
    precision, why = precision_for(config, recipe, device)
    mean, std = _norm(recipe, data)
    model, batches, loss_fn = _build(recipe, data, model_name, seed, device)
    if at_start is not None and not resume:
        at_start(model)
    optimizer = recipes.make_optimizer(recipe, model)
    n_train = len(data.train_y)
    steps_per_epoch = num_batches(n_train, recipe.batch_size // info.world_size,
                                  info.world_size)
    total_steps = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    budget = None
    if config.budget:
        budget = _budget_plan(config, recipe, model, batches, loss_fn, precision, device,
                              steps_per_epoch, data, run_dir, resume,
                              budget_share(config) if share is None else share, tta,
                              step_seconds)
        total_steps = budget["steps"]
        recipe = replace(recipe, tta=budget.get("tta", recipe.tta))
        reporter.log(f"{model_name} seed {seed}: {budget['seconds']:.0f} s of the budget; one "
                     f"step takes {budget['seconds_per_step']:.3f} s here, so {total_steps} "
                     f"steps ({total_steps / steps_per_epoch:.2f} epochs), test-time "
                     f"augmentation {recipe.tta}")
    epochs = total_steps / steps_per_epoch if budget else recipe.epochs

    train_eval_idx = None
    if config.train_eval:
        from cnnlab.data.cifar import stratified_indices

        per_class = max(1, config.train_eval // data.num_classes)
        counts = torch.bincount(data.train_y)
        train_eval_idx = stratified_indices(
            data.train_y, per_class=min(per_class, int(counts[counts > 0].min())), seed=0)

    def evaluate(m: nn.Module) -> dict[str, float]:
        out = {}
        if train_eval_idx is not None:
            acc, loss = accuracy(m, data.train_x[train_eval_idx], data.train_y[train_eval_idx],
                                 mean, std, device)
            out.update(train_eval_accuracy=acc, train_eval_loss=loss)
        if config.test and config.test_curve:
            acc, loss = accuracy(m, data.test_x, data.test_y, mean, std, device)
            out.update(test_accuracy=acc, test_loss=loss)
        if data.val_x is not None:
            acc, loss = accuracy(m, data.val_x, data.val_y, mean, std, device)
            out.update(val_accuracy=acc, val_loss=loss)
        return out

    lookahead = recipes.LookaheadState(model, recipe.lookahead) if recipe.lookahead else None
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)

    def before_epoch(m: nn.Module, epoch: int) -> None:
        if whiten_bias is not None and recipe.whiten_images:
            # airbench trains the whitening bias for the first epochs only (recipes.py).
            whiten_bias.requires_grad_(recipes.whiten_bias_trains(recipe, epoch))

    def after_step(m: nn.Module, step: int) -> None:
        if lookahead is not None:
            lookahead.step(m, step, total_steps)

    extra = None
    if lookahead is not None:
        extra = (lookahead.state_dict, lookahead.load_state_dict)
    fit_cfg = FitConfig(
        epochs=math.ceil(epochs), max_steps=total_steps, seed=seed, precision=precision,
        monitor="val_accuracy",
        # With a budget, its share is also a hard stop (checked after each epoch).
        time_limit=config.time_limit or (budget["seconds"] if budget else None),
        eval_every=config.eval_every,
        deterministic=config.deterministic,
        log_every=max(1, steps_per_epoch // 4),
    )
    if info.is_main and not resume:
        run_dir.save_config({"train": config, "model": model_name, "seed": seed,
                             "recipe": recipe})
        run_dir.save_environment(seed=seed, device=str(device), precision=precision,
                                 precision_reason=why)
    result = fit(model, optimizer, batches, steps_per_epoch, fit_cfg, run_dir, reporter,
                 loss_fn=loss_fn, evaluate=evaluate, lr_schedule=recipes.lr_lambda(
                     recipe.schedule, total_steps), after_step=after_step,
                 before_epoch=before_epoch, after_epoch=after_epoch, extra_state=extra,
                 resume=resume, device=device, label=f"{model_name} seed {seed}")
    tested, which = _tested_checkpoint(config, data, result)
    if tested != result.epochs_done:
        from cnnlab.engine import BEST, load_weights

        # Rank 0 wrote `best` at least one epoch (and so one all-reduce) ago: every rank reads
        # the whole file.
        load_weights(model, run_dir, BEST)
    record = next((r for r in result.history if r.get("epoch") == tested), result.last)
    start = time.monotonic()
    test_acc = test_loss = None
    if (config.test and recipe.tta == "none" and tested == result.epochs_done
            and record.get("test_accuracy") is not None):
        # The engine's evaluation after the last step measured these very weights on the
        # whole test set, under the same autocast: a second pass would repeat it.
        test_acc, test_loss = record["test_accuracy"], record["test_loss"]
    elif config.test:
        with autocast(precision, device):
            test_acc, test_loss = accuracy(model, data.test_x, data.test_y, mean, std, device,
                                           tta=recipe.tta)
    eval_seconds = time.monotonic() - start
    images = result.steps * recipe.batch_size
    out = {
        "model": model_name, "seed": seed, "recipe": recipe.name,
        "lr": recipe.lr, "batch_size": recipe.batch_size,
        "test_accuracy": test_acc, "test_loss": test_loss, "tta": recipe.tta,
        "tested_epoch": tested if config.test else None,
        "tested_checkpoint": which if config.test else None,
        "test_accuracy_no_tta": record.get("test_accuracy"),
        "val_accuracy": record.get("val_accuracy"),
        "train_eval_accuracy": record.get("train_eval_accuracy"),
        "train_eval_loss": record.get("train_eval_loss"),
        "best_val_accuracy": result.best_metric, "best_epoch": result.best_epoch,
        "epochs": result.epochs_done, "steps": result.steps, "stopped": result.stopped,
        "train_seconds": result.train_seconds, "eval_seconds": eval_seconds,
        "budget_seconds": budget["seconds"] if budget else None,
        "planned_steps": total_steps,
        "shape": shape.name if shape is not None else None,
        "images_per_second": images / result.train_seconds if result.train_seconds else None,
        "params": count_parameters(model), "precision": precision,
        "precision_reason": why, "n_train": n_train,
        "n_test": len(data.test_y) if config.test else 0,
        "world_size": info.world_size,
    }
    if info.is_main:
        run_dir.save_results(out)
    return out


def _tested_checkpoint(config: TrainConfig, data, result) -> tuple[int, str]:
    """(epoch, "best" | "last"): the weights the test set measures. With a validation split,
    the epoch of the highest validation accuracy (the engine's `best` checkpoint, which may be
    the last epoch too); else the last."""
    if config.test and data.val_x is not None and result.best_epoch is not None:
        return int(result.best_epoch), "best"
    return result.epochs_done, "last"


def budget_share(config: TrainConfig, spent: float = 0.0) -> float:
    """Seconds of the budget for each (model, seed), after `spent` seconds of calibration."""
    return max(0.0, 60 * config.budget - spent) / (len(config.models) * config.seeds)


def _eval_images(config: TrainConfig, data) -> int:
    """Images one evaluation measures (the per-epoch passes a budget must pay for)."""
    return (config.train_eval + (len(data.test_y) if config.test and config.test_curve else 0)
            + (0 if data.val_y is None else len(data.val_y)))


def _budget_plan(config: TrainConfig, recipe, model: nn.Module, batches, loss_fn, precision,
                 device, steps_per_epoch: int, data, run_dir: RunDir, resume: bool,
                 share: float, tta: str | None = None,
                 step_seconds: float | None = None) -> dict[str, Any]:
    """Time a few steps (or take `step_seconds`, timed by the calibration), plan the steps
    that fit this (model, seed)'s share; the plan is kept in the run directory so that a
    resumed run keeps its schedule."""
    from cnnlab import dist
    from cnnlab.budget import TTA_PASSES, budget_steps, budget_tta

    if resume and run_dir.file("budget.json").is_file():
        return saved_budget(run_dir)
    step_s = step_seconds
    if step_s is None:
        step_s = _seconds_per_step(recipe, model, batches, loss_fn, precision, device)
    info = dist.from_env()
    if info.enabled:  # every rank must plan the same steps: the mean of their timings
        step_s = float(dist.all_reduce_sum(torch.tensor([step_s], dtype=torch.float64,
                                                        device=device))) / info.world_size
    eval_images = _eval_images(config, data)
    test_images = len(data.test_y) if config.test else 0
    forward = _forward_seconds(model, data, recipe, precision, device)
    if tta is None:  # the first seed of this model decides, by its own timing
        tta = budget_tta(recipe.tta, share, forward * test_images)
    # Without TTA the final test reuses the last evaluation's test pass (train_one).
    final_passes = 0 if tta == "none" and config.test_curve else TTA_PASSES[tta]
    steps = budget_steps(share, step_s, recipe.batch_size, steps_per_epoch, eval_images,
                         config.eval_every, test_images, final_passes, forward=forward)
    plan = {"seconds": share, "seconds_per_step": step_s, "forward_seconds": forward,
            "steps": steps, "tta": tta}
    if info.is_main:
        run_dir.write_json("budget.json", plan)
    return plan


# What a resumed run reads back and trusts: each file's keys and their JSON types
# (runs.check_record). A file that fails them is named in one line, not a KeyError deep in the
# run.
_NUMBER = (int, float)
BUDGET_KEYS = {"seconds": _NUMBER, "seconds_per_step": _NUMBER, "forward_seconds": _NUMBER,
               "steps": int, "tta": str}
CALIBRATION_KEYS = {"model": str, "chosen": str, "seconds": _NUMBER,
                    "step_seconds": (*_NUMBER, type(None))}
RESULTS_KEYS = {"model": str, "seed": int, "recipe": str, "tta": str,
                "test_accuracy": (*_NUMBER, type(None)), "train_seconds": _NUMBER,
                "images_per_second": (*_NUMBER, type(None)), "steps": int, "batch_size": int,
                "n_train": int, "params": int, "epochs": int, "precision": str}


def saved_budget(run_dir: RunDir) -> dict[str, Any]:
    """budget.json on --resume: the plan the run started, checked before it is trusted."""
    plan = run_dir.read_record("budget.json", BUDGET_KEYS)
    if plan["tta"] not in budget.TTA_PASSES or plan["steps"] < 1:
        raise damaged(run_dir.file("budget.json"), f"a plan of {plan['steps']} steps with "
                                                   f"test-time augmentation {plan['tta']!r}")
    return plan


def saved_calibration(run_dir: RunDir) -> dict[str, dict[str, Any]]:
    """calibration.json on --resume: {model: record}, every chosen shape one cnnlab has."""
    path = run_dir.file("calibration.json")
    records = run_dir.read_json("calibration.json")
    if not isinstance(records, dict):
        raise damaged(path, "it holds no mapping of models")
    known = [s.name for s in budget.SHAPES]
    for model, record in records.items():
        check_record(path, record, CALIBRATION_KEYS, f"model {model!r}")
        if record["chosen"] not in known:
            raise damaged(path, f"model {model!r} chose the unknown shape "
                                 f"{record['chosen']!r} (cnnlab has {', '.join(known)})")
    return records


def saved_results(sub: RunDir, model_name: str, seed: int) -> dict[str, Any]:
    """A finished (model, seed)'s results.json, kept on --resume: it must be that run's."""
    path = sub.file("results.json")
    record = sub.read_record("results.json", RESULTS_KEYS)
    if (record["model"], record["seed"]) != (model_name, seed):
        raise damaged(path, f"it holds {record['model']} seed {record['seed']}, not "
                             f"{model_name} seed {seed}")
    return record


def _forward_seconds(model: nn.Module, data, recipe, precision: str, device: torch.device,
                     images: int = 2 * EVAL_BATCH) -> float:
    """Seconds per image of an evaluation pass as `accuracy` runs it (batches of EVAL_BATCH,
    under the run's autocast), timed on `images` test images after one untimed batch. A test
    set of at most EVAL_BATCH + `images` is timed whole (after the untimed batch, which may be
    all of it): that pass is the very cost the budget pays for. Without test images (none
    loaded), training images of the same shape stand in."""
    mean, std = _norm(recipe, data)
    x, y = data.test_x, data.test_y
    if not len(x):
        x, y = data.train_x, data.train_y
    warm_x, warm_y = x[:EVAL_BATCH], y[:EVAL_BATCH]
    if len(x) > EVAL_BATCH + images:
        x, y = x[EVAL_BATCH : EVAL_BATCH + images], y[EVAL_BATCH : EVAL_BATCH + images]
    was_training = model.training
    with autocast(precision, device):
        accuracy(model, warm_x, warm_y, mean, std, device)  # kernels chosen
        start = time.perf_counter()
        accuracy(model, x, y, mean, std, device)
        seconds = time.perf_counter() - start
    model.train(was_training)
    return seconds / len(x)


# ---------------------------------------------------------------------------------------------
# Calibration: the shape of the default network for the budget (budget.py)

CIFAR_TRAIN = 50_000  # the shapes' curves were measured on the whole CIFAR-10 training set


def calibration_skipped(config: TrainConfig, model_name: str, data) -> str | None:
    """Why `model_name` keeps its recipe's shape under this budget (None: it is calibrated).
    Only the default network under the `fast` recipe, as the user left it, on data like the
    curves' (CIFAR-10's 50,000 32x32 training images, 10 classes), in one process."""
    from cnnlab import dist
    from cnnlab.models.registry import get_spec

    if not config.budget or not config.calibrate:
        return "calibration off"
    if get_spec(model_name).name != DEFAULT_MODEL or config.recipe != "fast":
        return "only the fast recipe's fast-cifar has measured shapes"
    touched = {k for k, _ in config.recipe_overrides} & {"batch_size", "lr", "schedule"}
    if (config.model_options or config.batch_size or config.lr or touched):
        return "the width, batch size or learning rate was given"
    if (len(data.train_y) != CIFAR_TRAIN or tuple(data.image_shape) != (3, 32, 32)
            or data.num_classes != 10):
        return ("the shapes' accuracy curves are for CIFAR-10's 50,000 training images at "
                "32x32")
    if dist.from_env().enabled:
        return "calibration runs in a single process"
    return None


def apply_shape(recipe, shape):
    """The recipe with a budget shape's width, batch size and learning rate."""
    return replace(recipe, batch_size=shape.batch_size, lr=shape.lr,
                   model_options=(*recipe.model_options, ("widths", shape.widths)))


def _calibrate(config: TrainConfig, data, model_name: str, device: torch.device,
               reporter) -> dict[str, Any]:
    """Time the candidate shapes of `model_name` on this machine and choose one (budget.py);
    returns the record kept in calibration.json."""
    from cnnlab import budget

    base = recipe_for(config, model_name)
    precision, _ = precision_for(config, base, device)
    timings: dict[str, float] = {}

    def time_step(shape) -> float:
        recipe = apply_shape(base, shape)
        model, batches, loss_fn = _build(recipe, data, model_name, 0, device)
        timings[shape.name] = _seconds_per_step(recipe, model, batches, loss_fn, precision,
                                                device)
        return timings[shape.name]

    start = time.monotonic()
    macs = {s.name: macs_of(model_name, {**s.options(), "num_classes": 10}, (3, 32, 32))
            for s in budget.SHAPES}
    chosen, candidates = budget.choose_shape(
        budget_share(config), time_step, macs, len(data.train_y),
        len(data.test_y) if config.test else 0, _eval_images(config, data), config.eval_every,
        base.tta, config.test_curve, prune=device.type == "cpu")
    spent = time.monotonic() - start
    # What more minutes would buy: the same timings, twice the share.
    double = [budget.plan_shape(budget.shape_named(c.shape), 2 * budget_share(config),
                                c.seconds_per_step, len(data.train_y),
                                len(data.test_y) if config.test else 0,
                                _eval_images(config, data), config.eval_every, base.tta,
                                config.test_curve, timed=c.timed).as_dict()
              for c in candidates]
    reporter.log(f"{model_name}: calibration chose the {chosen.name} shape (widths "
                 f"{'-'.join(map(str, chosen.widths))}, batch {chosen.batch_size}) in "
                 f"{spent:.1f} s: " + "; ".join(
                     f"{c.shape} {c.epochs:.2f} epochs -> about {c.expected_accuracy:.1f}%"
                     + ("" if c.timed else " (at best; not timed)") for c in candidates))
    return {"model": model_name, "chosen": chosen.name, "seconds": spent,
            "candidates": [c.as_dict() for c in candidates], "twice_the_budget": double,
            "step_seconds": timings.get(chosen.name)}


def _calibration(config: TrainConfig, data, device: torch.device, run_dir: RunDir,
                 reporter, resume: bool) -> dict[str, dict[str, Any]]:
    """{model: calibration record} for every model the budget calibrates; kept in
    calibration.json, so that a resumed run keeps its shapes (and its shares)."""
    from cnnlab import dist

    if not config.budget:
        return {}
    if resume and run_dir.file("calibration.json").is_file():
        return saved_calibration(run_dir)
    out = {}
    for m in config.models:
        why = calibration_skipped(config, m, data)
        if why is None:
            out[m] = _calibrate(config, data, m, device, reporter)
        elif config.calibrate and m == config.models[0] and len(config.models) == 1:
            reporter.log(f"{m}: no calibration ({why}); it trains as given")
    if dist.from_env().is_main:
        run_dir.write_json("calibration.json", out)
    return out


def macs_of(model_name: str, options: dict[str, Any], shape: tuple[int, ...]) -> int:
    from cnnlab.analysis.profile import profile_registered

    return profile_registered(model_name, shape, **options).macs


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample std; 0 for one value) in percent, or (None, None) when not measured."""
    if not values or any(v is None for v in values):
        return None, None
    pct = [100 * v for v in values]
    return statistics.fmean(pct), statistics.stdev(pct) if len(pct) > 1 else 0.0


def summarise(rows: list[dict[str, Any]], macs: dict[str, int]) -> list[dict[str, Any]]:
    """Per model: test (and validation) accuracy mean ± std over seeds (sample std; 0 for one
    seed), params, MACs, mean train seconds and images/s."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        test_mean, test_std = _mean_std([r["test_accuracy"] for r in mine])
        val_mean, val_std = _mean_std([r.get("val_accuracy") for r in mine])
        out.append({
            "model": model, "recipe": mine[0]["recipe"], "seeds": len(mine),
            # the learning rate differs between networks under one recipe (recipes.with_model)
            "lr": mine[0].get("lr"), "batch_size": mine[0].get("batch_size"),
            "test_accuracy_mean": test_mean, "test_accuracy_std": test_std,
            "val_accuracy_mean": val_mean, "val_accuracy_std": val_std,
            "params": mine[0]["params"], "macs": macs.get(model),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in mine),
            "images_per_second": statistics.fmean(r["images_per_second"] or 0 for r in mine),
            "epochs": mine[0]["epochs"], "precision": mine[0]["precision"],
            # With --budget: each (model, seed)'s share, and the steps it fitted in (mean).
            "budget_seconds": mine[0].get("budget_seconds"),
            "shape": mine[0].get("shape"),
            "steps": statistics.fmean(r["steps"] for r in mine),
            "epochs_trained": statistics.fmean(r["steps"] * r["batch_size"] / r["n_train"]
                                               for r in mine),
        })
    return out


def run(config: TrainConfig, run_dir: RunDir, reporter, resume: bool = False,
        after_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
        at_start: Callable[[nn.Module], None] | None = None, data=None
        ) -> dict[str, Any] | None:
    """Train every model with every seed into `run_dir`; results on rank 0, None elsewhere.

    With `resume`, finished (model, seed) runs are kept, an interrupted one continues from its
    last checkpoint, the rest start. `after_epoch` and `at_start` go to every `train_one`.
    `data`: the data set as `load_data(config)` gives it, when the caller has it already (the
    trials of `cnnlab experiment` share one); else it is loaded here."""
    from cnnlab import checkpoints, dist
    from cnnlab.models.registry import get_spec

    for m in config.models:
        get_spec(m)  # a misspelt name before any decoding
        recipe_for(config, m)  # and a model without a lab recipe
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    info = dist.from_env()
    if not info.is_main:
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    if data is None:
        data = load_data(config, reporter)  # before any file: bad data leaves no run behind
    reporter.log(f"data: {data.describe()}")
    if info.is_main and not resume:
        run_dir.save_config(config)
        run_dir.save_environment(seed=config.seed, device=str(device))
    calibration = _calibration(config, data, device, run_dir, reporter, resume)
    spent = sum(c["seconds"] for c in calibration.values())
    shapes = {m: budget.shape_named(c["chosen"]) for m, c in calibration.items()}
    macs = {}
    for m in config.models:
        recipe = recipe_for(config, m)
        if m in shapes:
            recipe = apply_shape(recipe, shapes[m])
        options = dict(recipe.model_options)
        options.setdefault("num_classes", data.num_classes)
        macs[m] = macs_of(m, options, tuple(data.image_shape))
    pairs = [(m, seed) for m in config.models
             for seed in range(config.seed, config.seed + config.seeds)]
    # The overall bar's weights: each run's share of a budget, else its arithmetic (MACs x
    # epochs), so the ETA over models x seeds is not a count of runs of 10 s and 10 min.
    weights = [budget_share(config, spent) if config.budget
               else macs[m] * (config.epochs or recipe_for(config, m).epochs) for m, _ in pairs]
    rows = []
    with contextlib.ExitStack() as stack:
        display = (stack.enter_context(reporter.overall("train", len(pairs), weights))
                   if len(pairs) > 1 else None)
        for k, (model_name, seed) in enumerate(pairs, start=1):
            name = f"{get_spec(model_name).name}-seed{seed}"
            rep = display.step(k, name) if display is not None else reporter
            sub = RunDir(run_dir.path / name)
            if resume and sub.file("results.json").is_file():
                rows.append(saved_results(sub, model_name, seed))
                rep.log(f"{sub.path.name}: finished earlier, kept")
                continue
            again = resume and checkpoints.exists(sub.path, "last")
            if info.is_main:
                sub.path.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            earlier = [r for r in rows if r["model"] == model_name]
            timed = calibration.get(model_name, {}).get("step_seconds")
            rows.append(train_one(config, data, model_name, seed, sub, rep, device,
                                  resume=again, after_epoch=after_epoch, at_start=at_start,
                                  tta=earlier[0]["tta"] if earlier and config.budget
                                  else None, shape=shapes.get(model_name),
                                  share=budget_share(config, spent) if config.budget else None,
                                  # the first seed reuses the calibration's timing
                                  step_seconds=None if earlier else timed))
            r = rows[-1]
            which, acc = (("test", r["test_accuracy"]) if config.test
                          else ("validation", r["val_accuracy"]))
            rep.log(f"{sub.path.name}: {which} accuracy {100 * (acc or 0):.2f}% "
                    f"({r['tta'] if config.test else 'no'} TTA) in "
                    f"{r['train_seconds']:.0f} s of training")
    if not info.is_main:
        return None
    results = {
        "data": data.source, "n_train": len(data.train_y), "n_test": len(data.test_y),
        "n_val": 0 if data.val_y is None else len(data.val_y), "classes": list(data.classes),
        "world_size": info.world_size, "device": str(device),
        "models": summarise(rows, macs), "runs": rows,
        "budget_minutes": config.budget, "calibration": list(calibration.values()),
    }
    run_dir.save_results(results)
    if config.report and config.test:  # the report compares test accuracy
        from cnnlab.report.train import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results
