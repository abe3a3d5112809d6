"""`run`: `cnnlab train` from start to end. The data loaded once, the budget's calibration,
every (model, seed) pair trained in turn by `train_one` (kept when finished earlier, continued
from its checkpoint when interrupted), the per-model summary, results.json and the report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab import budget
from cnnlab.runs import RunDir
from cnnlab.tasks.train.batch_choice import choose_batches
from cnnlab.tasks.train.budget_plan import budget_share
from cnnlab.tasks.train.build import macs_of
from cnnlab.tasks.train.calibration import calibrate_all
from cnnlab.tasks.train.config import TrainConfig
from cnnlab.tasks.train.data import load_data
from cnnlab.tasks.train.one import train_one
from cnnlab.tasks.train.recipe import apply_shape, recipe_for
from cnnlab.tasks.train.saved import saved_results
from cnnlab.tasks.train.summary import summarise


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
    calibration = calibrate_all(config, data, device, run_dir, reporter, resume)
    spent = sum(c["seconds"] for c in calibration.values())
    batches = choose_batches(config, data, device, run_dir, reporter, resume, spent)
    spent += sum(b["seconds"] for b in batches.values())
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
                                  step_seconds=None if earlier else timed,
                                  batch=batches.get(model_name)))
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
        "batches": list(batches.values()),
    }
    run_dir.save_results(results)
    if config.report and config.test:  # the report compares test accuracy
        from cnnlab.report.train import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results


def _device(requested: str) -> torch.device:
    from cnnlab import dist

    _, device = dist.init(requested)
    return device
