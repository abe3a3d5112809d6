"""One (model, seed)'s plan under `--budget`: its share of the minutes, and the optimiser steps
that fit in it with the evaluations they bring (the decisions themselves are budget.py's pure
functions; here the timings are taken and the plan kept in budget.json)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab import dist
from cnnlab.budget import TTA_PASSES, budget_steps, budget_tta
from cnnlab.runs import RunDir
from cnnlab.tasks.train.build import seconds_per_step
from cnnlab.tasks.train.config import TrainConfig
from cnnlab.tasks.train.measure import forward_seconds
from cnnlab.tasks.train.saved import saved_budget


def budget_share(config: TrainConfig, spent: float = 0.0) -> float:
    """Seconds of the budget for each (model, seed), after `spent` seconds of calibration."""
    return max(0.0, 60 * config.budget - spent) / (len(config.models) * config.seeds)


def eval_images(config: TrainConfig, data) -> int:
    """Images one evaluation measures (the per-epoch passes a budget must pay for)."""
    return (config.train_eval + (len(data.test_y) if config.test and config.test_curve else 0)
            + (0 if data.val_y is None else len(data.val_y)))


def plan_steps(config: TrainConfig, recipe, model: nn.Module, batches, loss_fn, precision,
               device, steps_per_epoch: int, data, run_dir: RunDir, resume: bool,
               share: float, tta: str | None = None,
               step_seconds: float | None = None) -> dict[str, Any]:
    """Time a few steps (or take `step_seconds`, timed by the calibration), plan the steps
    that fit this (model, seed)'s share; the plan is kept in the run directory so that a
    resumed run keeps its schedule."""
    if resume and run_dir.file("budget.json").is_file():
        return saved_budget(run_dir)
    step_s = step_seconds
    if step_s is None:
        step_s = seconds_per_step(recipe, model, batches, loss_fn, precision, device)
    info = dist.from_env()
    if info.enabled:  # every rank must plan the same steps: the mean of their timings
        step_s = float(dist.all_reduce_sum(torch.tensor([step_s], dtype=torch.float64,
                                                        device=device))) / info.world_size
    evaluated = eval_images(config, data)
    test_images = len(data.test_y) if config.test else 0
    forward = forward_seconds(model, data, recipe, precision, device)
    if tta is None:  # the first seed of this model decides, by its own timing
        tta = budget_tta(recipe.tta, share, forward * test_images)
    # Without TTA the final test reuses the last evaluation's test pass (train_one).
    final_passes = 0 if tta == "none" and config.test_curve else TTA_PASSES[tta]
    steps = budget_steps(share, step_s, recipe.batch_size, steps_per_epoch, evaluated,
                         config.eval_every, test_images, final_passes, forward=forward)
    plan = {"seconds": share, "seconds_per_step": step_s, "forward_seconds": forward,
            "steps": steps, "tta": tta}
    if info.is_main:
        run_dir.write_json("budget.json", plan)
    return plan
