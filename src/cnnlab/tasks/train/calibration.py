"""The shape of the default network for a budget (`--budget` without `--no-calibrate`): time
fast-cifar's candidate shapes (budget.SHAPES: width, batch size, learning rate) on this
machine and train the one expected to reach the highest accuracy in the minutes
(budget.choose_shape); the records are kept in calibration.json, so that a resumed run keeps
its shapes and its shares."""

from __future__ import annotations

import time
from typing import Any

import torch

from cnnlab import budget, dist, hardware
from cnnlab.runs import RunDir
from cnnlab.tasks.train.budget_plan import budget_share, eval_images
from cnnlab.tasks.train.build import build, macs_of, seconds_per_step, sized_seconds_per_step
from cnnlab.tasks.train.config import DEFAULT_MODEL, TrainConfig
from cnnlab.tasks.train.recipe import apply_shape, precision_for, recipe_for
from cnnlab.tasks.train.saved import saved_calibration

CIFAR_TRAIN = 50_000  # the shapes' curves were measured on the whole CIFAR-10 training set


def calibration_skipped(config: TrainConfig, model_name: str, data) -> str | None:
    """Why `model_name` keeps its recipe's shape under this budget (None: it is calibrated).
    Only the default network under the `fast` recipe, as the user left it, on data like the
    curves' (CIFAR-10's 50,000 32x32 training images, 10 classes), in one process."""
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


def _calibrate(config: TrainConfig, data, model_name: str, device: torch.device,
               reporter) -> dict[str, Any]:
    """Time the candidate shapes of `model_name` on this machine and choose one (budget.py);
    returns the record kept in calibration.json."""
    base = recipe_for(config, model_name)
    precision, _ = precision_for(config, base, device)
    timings: dict[str, float] = {}

    def time_step(shape) -> float:
        recipe = apply_shape(base, shape)
        model, batches, loss_fn = build(recipe, data, model_name, 0, device)
        if shape.sizes:  # progressive resizing: each side timed, weighted by its steps
            timings[shape.name] = sized_seconds_per_step(recipe, model, batches, loss_fn,
                                                         precision, device, shape.size_shares())
        else:
            timings[shape.name] = seconds_per_step(recipe, model, batches, loss_fn, precision,
                                                   device)
        return timings[shape.name]

    start = time.monotonic()
    # MACs of an average training image: a progressive shape's sizes weighted by their steps.
    macs = {s.name: round(sum(share * macs_of(model_name, {**s.options(), "num_classes": 10},
                                                (3, side, side))
                              for side, share in s.size_shares()))
            for s in budget.SHAPES}
    chosen, candidates = budget.choose_shape(
        budget_share(config), time_step, macs, len(data.train_y),
        len(data.test_y) if config.test else 0, eval_images(config, data), config.eval_every,
        base.tta, config.test_curve, prune=device.type == "cpu")
    spent = time.monotonic() - start
    # What more minutes would buy: the same timings, twice the share.
    double = [budget.plan_shape(budget.shape_named(c.shape), 2 * budget_share(config),
                                c.seconds_per_step, len(data.train_y),
                                len(data.test_y) if config.test else 0,
                                eval_images(config, data), config.eval_every, base.tta,
                                config.test_curve, timed=c.timed).as_dict()
              for c in candidates]
    reporter.log(f"{model_name}: calibration chose the {chosen.name} shape (widths "
                 f"{'-'.join(map(str, chosen.widths))}, batch {chosen.batch_size}) in "
                 f"{spent:.1f} s: " + "; ".join(
                     f"{c.shape} {c.epochs:.2f} epochs -> about {c.expected_accuracy:.1f}%"
                     + ("" if c.timed else " (at best; not timed)") for c in candidates))
    # Which kind of CPU the promise rests on: the curves' (budget.CURVE_KINDS) against this
    # run's precision; the report and the summary print the note (report/train.budget_lines).
    note = budget.other_kind_note(chosen, precision)
    if note:
        reporter.log(f"{model_name}: note: {note}")
    return {"model": model_name, "chosen": chosen.name, "seconds": spent,
            "candidates": [c.as_dict() for c in candidates], "twice_the_budget": double,
            "step_seconds": timings.get(chosen.name), "precision": precision,
            "cpu_kind": cpu_kind(), "curve_precision": chosen.curve_precision,
            "curve_note": note}


def cpu_kind(flags: frozenset[str] | None = None) -> str:
    """"bf16-capable" (avx512_bf16 or amx_bf16: hardware.BF16_FLAGS) or "fp32-only": the kind
    of CPU this calibration ran on, kept beside the curves' kind in calibration.json."""
    present = hardware.cpu_flags() if flags is None else flags
    return "bf16-capable" if any(f in present for f in hardware.BF16_FLAGS) else "fp32-only"


def calibrate_all(config: TrainConfig, data, device: torch.device, run_dir: RunDir,
                  reporter, resume: bool) -> dict[str, dict[str, Any]]:
    """{model: calibration record} for every model the budget calibrates; kept in
    calibration.json, so that a resumed run keeps its shapes (and its shares)."""
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
