"""The run's table: per model, test (and validation) accuracy as mean ± sample std over its
seeds, with params, MACs, the cost in seconds and images/s, and what a budget gave it."""

from __future__ import annotations

import statistics
from typing import Any


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
