"""A study's results: one row per setting over its seeds (mean, sample std, 95% interval),
convergence, the trials the budget cut (left out and named), the depth study's gain per
added layer, and the verdicts (claims.py)."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from cnnlab.analysis import stats
from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.claims import gradient_verdict, verdict
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.designs import GRAD_BATCH, TRAIN_EVAL
from cnnlab.tasks.experiment.grids import Grid
from cnnlab.tasks.experiment.learning import (
    CHANCE_MARGIN,
    GRAD_FLOOR,
    PLATEAU_SHARE,
    doubling_test,
    error_band,
)


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
        if r["state"] == "COMPLETE" and r.get("metric_n_train") is not None:
            n_train, n_test = r["metric_n_train"], r["metric_n_test"]
            break
        # A study from before the sizes were recorded with each trial: its folder here.
        f = run_dir.path / (r["run_dir"] or "-") / "results.json"
        if r["state"] == "COMPLETE" and f.is_file():
            first = RunDir(f.parent).read_json("results.json")
            n_train, n_test = first["n_train"], first["n_test"]
            break
    table, excluded = [], []
    design = config.design(g.name)
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
               "failed": sum(r["state"] == "FAIL" and not r["retried"]
                             and not r.get("surplus") for r in rows
                             if all(r["params"].get(k) == v for k, v in s.items()))}
        if g.name == "residual" and mine:
            for key in ("grad_init", "grad_epoch1"):
                row[key] = [r.get(f"metric_{key}") for r in mine]
            row["curves"] = [r.get("metric_curve") for r in mine]
            row["loss_curves"] = [r.get("metric_loss_curve") for r in mine]
            # the claim's plateau check and Fig. 6's curves with a 95% band (learning.py)
            row["plateau"] = doubling_test(row["curves"], design.classes).as_dict()
            row["curve_band"] = error_band(row["curves"])
        table.append(row)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    results = {
        "experiment": g.name, "claim": g.question, "note": g.note, "scaled": design.scaled,
        "data": base.data, "limit_per_class": base.limit_per_class,
        "train_per_class": base.train_per_class, "image_size": base.image_size,
        "epochs": base.epochs, "batch_size": design.recipe["batch_size"],
        "seeds": max((r["seeds"] for r in table), default=0), "min_seeds": config.seeds,
        "budget_minutes": config.budget, "quick": config.quick,
        "recipe": design.recipe, "rows": table, "n_train": n_train, "n_test": n_test,
        "grad_batch": 32 if config.quick else GRAD_BATCH, "grad_floor": GRAD_FLOOR,
        "train_eval": TRAIN_EVAL, "classes": design.classes,
        "plateau_rule": {"share": PLATEAU_SHARE, "chance_margin": CHANCE_MARGIN},
        # A twin that two processes queued at once and that never ran is no trial.
        "trials": sum(not r.get("surplus") for r in rows), "completed": len(done),
        "excluded": excluded,
        # Wall time of every trial (training, evaluation, loading), over all invocations.
        "trial_seconds": round(sum(r.get("seconds") or 0 for r in rows), 1),
    }
    v = verdict(g.name, table, quick=config.quick, excluded=excluded,
                looks=looks(run_dir, results["seeds"]))
    results["verdict"] = v.as_dict()
    if g.name == "residual":
        results["gradients"] = gradient_verdict(table).as_dict()
    if g.name == "depth":
        results["gains"] = depth_gains(table)
    return results


def looks(run_dir: RunDir, seeds: int) -> int:
    """The looks at this run's verdict (stats rule 6): 1 on a first summary; the earlier
    summary's looks + 1 when seeds were added after it (`--resume RUN --seeds N`, the user
    having read a verdict), so each level is divided by the number of looks."""
    earlier = run_dir.path / "results.json"
    if not earlier.is_file():
        return 1
    before = run_dir.read_json("results.json")
    if not isinstance(before, dict) or before.get("quick") or not before.get("verdict"):
        return 1
    seen = int(before["verdict"].get("looks") or 1)
    return seen + 1 if seeds > int(before.get("seeds") or 0) else seen


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
