"""One model with one seed (`train_one`): the run of every (model, seed) pair of `cnnlab
train`, into its own directory `<model>-seed<k>/`. The recipe's optimiser, schedule, lookahead
and whitening, the budget's plan of steps, the shared engine's loop (`engine.fit`), then the
test set measured once on the weights it picked (`tested_checkpoint`); results.json."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from cnnlab.hardware import autocast
from cnnlab.runs import RunDir
from cnnlab.tasks.train.batch_choice import apply_batch
from cnnlab.tasks.train.budget_plan import budget_share, plan_steps
from cnnlab.tasks.train.build import build, sized_seconds_per_step
from cnnlab.tasks.train.config import TrainConfig
from cnnlab.tasks.train.data import norm
from cnnlab.tasks.train.measure import accuracy
from cnnlab.tasks.train.recipe import apply_shape, precision_for, recipe_for


def train_one(config: TrainConfig, data, model_name: str, seed: int, run_dir: RunDir,
              reporter, device: torch.device, resume: bool = False,
              after_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
              at_start: Callable[[nn.Module], None] | None = None,
              tta: str | None = None, shape=None, share: float | None = None,
              step_seconds: float | None = None,
              batch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one model with one seed into `run_dir`; returns its results (also results.json).
    With a budget: `tta` is the test-time augmentation an earlier seed of this model chose (so
    that every seed of a model is tested alike; else each plans its own); `shape` the
    calibration's choice of width, batch and learning rate (budget.Shape), `share` the seconds
    of this run, `step_seconds` a timing of this shape already made (not repeated); `batch`
    the batch size and learning rate the budget's steps call for (batch_choice.py).

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
    recipe = apply_batch(recipe, batch)
    precision, why = precision_for(config, recipe, device)
    model, batches, loss_fn = build(recipe, data, model_name, seed, device)
    if at_start is not None and not resume:
        at_start(model)
    optimizer = recipes.make_optimizer(recipe, model)
    n_train = len(data.train_y)
    steps_per_epoch = num_batches(n_train, recipe.batch_size // info.world_size,
                                  info.world_size)
    total_steps = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    plan = None
    sizes = shape.sizes if shape is not None else ()
    if config.budget:
        if sizes and step_seconds is None:  # a step's mean cost over the sizes it trains at
            step_seconds = sized_seconds_per_step(recipe, model, batches, loss_fn, precision,
                                                  device, shape.size_shares())
        plan = plan_steps(config, recipe, model, batches, loss_fn, precision, device,
                          steps_per_epoch, data, run_dir, resume,
                          budget_share(config) if share is None else share, tta,
                          step_seconds)
        total_steps = plan["steps"]
        recipe = replace(recipe, tta=plan.get("tta", recipe.tta))
        reporter.log(f"{model_name} seed {seed}: {plan['seconds']:.0f} s of the budget; one "
                     f"step takes {plan['seconds_per_step']:.3f} s here, so {total_steps} "
                     f"steps ({total_steps / steps_per_epoch:.2f} epochs), test-time "
                     f"augmentation {recipe.tta}")
    epochs = total_steps / steps_per_epoch if plan else recipe.epochs
    if sizes:  # progressive resizing over the steps this run will train (data/progressive.py)
        from cnnlab.data.progressive import progressive

        batches = progressive(batches, sizes, steps_per_epoch, total_steps)
    evaluate = _evaluator(config, data, recipe, device)
    before_epoch, after_step, extra = _recipe_hooks(recipe, model, total_steps)
    fit_cfg = FitConfig(
        epochs=math.ceil(epochs), max_steps=total_steps, seed=seed, precision=precision,
        monitor="val_accuracy",
        # With a budget, its share is also a hard stop (checked after each epoch).
        time_limit=config.time_limit or (plan["seconds"] if plan else None),
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
    tested, which = tested_checkpoint(config, data, result)
    record, test_acc, test_loss, eval_seconds = _final_test(
        config, data, model, recipe, precision, device, run_dir, result, tested)
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
        "budget_seconds": plan["seconds"] if plan else None,
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


def _evaluator(config: TrainConfig, data, recipe, device: torch.device
               ) -> Callable[[nn.Module], dict[str, float]]:
    """The engine's `evaluate`: accuracy and loss on the fixed sample of training images
    (`train_eval`), on the test set (the per-epoch curve, unless `test_curve` is off) and on
    the validation split, whichever the config has."""
    mean, std = norm(recipe, data)
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

    return evaluate


def _recipe_hooks(recipe, model: nn.Module, total_steps: int):
    """The engine's (before_epoch, after_step, extra_state) for the recipe's whitening bias
    and lookahead (each a no-op, extra_state None, when the recipe has none)."""
    from cnnlab import recipes

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
    return before_epoch, after_step, extra


def _final_test(config: TrainConfig, data, model: nn.Module, recipe, precision: str,
                device: torch.device, run_dir: RunDir, result, tested: int
                ) -> tuple[dict[str, Any], float | None, float | None, float]:
    """(the tested epoch's metrics record, test accuracy, test loss, seconds): the test set
    measured once, with the recipe's TTA, on the weights of epoch `tested` (`best` loaded when
    that is not the last)."""
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
        mean, std = norm(recipe, data)
        with autocast(precision, device):
            test_acc, test_loss = accuracy(model, data.test_x, data.test_y, mean, std, device,
                                           tta=recipe.tta)
    return record, test_acc, test_loss, time.monotonic() - start


def tested_checkpoint(config: TrainConfig, data, result) -> tuple[int, str]:
    """(epoch, "best" | "last"): the weights the test set measures. With a validation split,
    the epoch of the highest validation accuracy (the engine's `best` checkpoint, which may be
    the last epoch too); else the last."""
    if config.test and data.val_x is not None and result.best_epoch is not None:
        return int(result.best_epoch), "best"
    return result.epochs_done, "last"

