"""The batch size a budget's steps call for, for the nets a recipe was not tuned on (issue 26).

The `fast` recipe's batch of 1024 is fast-cifar's; carried over to ResNet-18 under the lab's 40 s
a run, it buys 17-18 optimiser steps, and the net stays at chance (9.96 ± 0.54% over 3 seeds,
BENCHMARKS.md). Here each such net gets the largest of the recipe's batch, half of it, ... down
to 64 that still buys `budget.MIN_BUDGET_STEPS` steps, with the learning rate scaled by the
square root of the ratio (`budget.batch_for_steps`). One step at the smallest batch is timed
here (2 warm-up + 3 timed steps) and larger batches are estimated from it in proportion to
their images. That is an estimate, not a bound: in the lab's train step (fp32, 2 cores,
2026-12-07) simple-cnn at batch 512 took 0.284 s a step against 0.23 s estimated, so it made 98
steps where 157 were expected. Timing every candidate would cost more of a 40 s share than the
error does. The steps a batch buys are counted after the run's evaluations (the final test over
the test set, with its TTA, and any evaluations during training), with an evaluation pass timed
here too: the first rule gave every second to steps; in its run ResNet-18 kept 9-28 of the 132
steps expected, partly a neighbour's load, partly its final test (10,000 images, ~10 one-core
CPU seconds in fp32, measured). The chosen batch's own steps are then timed by the run's plan
as always. Records go to batches.json, so a resumed run keeps them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from cnnlab import budget, dist
from cnnlab.runs import RunDir, damaged
from cnnlab.tasks.train.budget_plan import budget_share, eval_images
from cnnlab.tasks.train.build import build, seconds_per_step
from cnnlab.tasks.train.config import TrainConfig
from cnnlab.tasks.train.measure import forward_seconds
from cnnlab.tasks.train.recipe import precision_for, recipe_for

BATCHES_FILE = "batches.json"


def batch_skipped(config: TrainConfig, model_name: str) -> str | None:
    """Why `model_name` keeps its recipe's batch under this budget (None: it is chosen here):
    only under --budget, with calibration on, for a net the named recipe was not written for,
    with the batch size and learning rate left to the recipe, in one process."""
    from cnnlab import recipes
    from cnnlab.models.registry import get_spec

    if not config.budget or not config.calibrate:
        return "no budget, or calibration off"
    if config.recipe == "lab" or recipes.get_recipe(config.recipe).model == get_spec(
            model_name).name:
        return "the recipe was tuned on this net"
    touched = {k for k, _ in config.recipe_overrides} & {"batch_size", "lr"}
    if config.batch_size or config.lr or touched:
        return "the batch size or learning rate was given"
    if dist.from_env().enabled:
        return "chosen in a single process only"
    return None


def eval_cost(config: TrainConfig, data, recipe, share: float, forward: float
              ) -> tuple[budget.EvalCost, str]:
    """(what the run's evaluations will cost, its test-time augmentation): the terms the
    run's own plan counts (budget_plan.plan_steps), from `forward` seconds per image."""
    test_images = len(data.test_y) if config.test else 0
    tta = budget.budget_tta(recipe.tta, share, forward * test_images)
    # Without TTA the final test reuses the last evaluation's test pass (train_one).
    passes = 0 if tta == "none" and config.test_curve else budget.TTA_PASSES[tta]
    return budget.EvalCost(forward, len(data.train_y), eval_images(config, data),
                           config.eval_every, test_images, passes), tta


def _choose(config: TrainConfig, data, model_name: str, device: torch.device, share: float,
            reporter) -> dict[str, Any]:
    recipe = recipe_for(config, model_name)
    precision, _ = precision_for(config, recipe, device)
    floor = min(budget.MIN_BUDGET_BATCH, recipe.batch_size)
    start = time.monotonic()
    timed = replace(recipe, batch_size=floor)
    model, batches, loss_fn = build(timed, data, model_name, 0, device)
    per_image = seconds_per_step(timed, model, batches, loss_fn, precision, device) / floor
    forward = forward_seconds(model, data, timed, precision, device)
    evals, tta = eval_cost(config, data, recipe, share, forward)
    estimates, b = {}, recipe.batch_size
    while b >= floor:
        estimates[b] = per_image * b
        b //= 2
    batch, lr = budget.batch_for_steps(recipe.batch_size, recipe.lr, share, estimates,
                                       floor=floor, evals=evals)
    spent = time.monotonic() - start
    steps = budget.steps_bought(share, batch, estimates[batch], evals)
    # The final test (one pass without TTA, when the last evaluation is it).
    tests = forward * evals.test_images * max(1, evals.test_passes)
    at_recipe = budget.steps_bought(share, recipe.batch_size, estimates[recipe.batch_size],
                                    evals)
    reporter.log(f"{model_name}: batch {batch} (lr {lr:.3g}) buys about {steps} steps in its "
                 f"{share:.0f} s, its evaluations paid (the final test about {tests:.0f} s, "
                 f"{tta} TTA); the recipe's {recipe.batch_size} would buy {at_recipe} (timed "
                 f"at batch {floor} in {spent:.1f} s)")
    return {"model": model_name, "batch_size": batch, "lr": lr, "seconds": spent,
            "recipe_batch_size": recipe.batch_size, "recipe_lr": recipe.lr,
            "seconds_per_image": per_image, "forward_seconds": forward, "tta": tta,
            "test_seconds": tests, "expected_steps": steps}


def choose_batches(config: TrainConfig, data, device: torch.device, run_dir: RunDir,
                   reporter, resume: bool, spent: float) -> dict[str, dict[str, Any]]:
    """{model: record} for every model whose batch the budget chooses (batches.json); `spent`:
    the seconds the shape calibration already took from the budget."""
    if not config.budget:
        return {}
    if resume and run_dir.file(BATCHES_FILE).is_file():
        records = run_dir.read_json(BATCHES_FILE)
        if not isinstance(records, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("batch_size"), int)
                and isinstance(r.get("lr"), int | float) for r in records.values()):
            raise damaged(run_dir.file(BATCHES_FILE), "it holds no batch size and learning "
                          "rate per model")
        return records
    out = {}
    for m in config.models:
        if batch_skipped(config, m) is None:
            out[m] = _choose(config, data, m, device, budget_share(config, spent), reporter)
    if dist.from_env().is_main:
        run_dir.write_json(BATCHES_FILE, out)
    return out


def apply_batch(recipe, record: dict[str, Any] | None):
    """The recipe with the budget's batch size and learning rate (unchanged without one)."""
    if record is None:
        return recipe
    return replace(recipe, batch_size=int(record["batch_size"]), lr=float(record["lr"]))
