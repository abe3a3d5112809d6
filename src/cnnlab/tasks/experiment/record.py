"""What a trial records (its user attributes in the study, the rows of results.json) from
its training run's results and metrics.jsonl: the same whether the trial was trained alone
(`cnnlab train`'s run) or with its setting's other seeds as one batched model (together.py)."""

from __future__ import annotations

from typing import Any

from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.learning import plateau_share, still_learning


def trial_params(g, optuna_trial) -> dict[str, Any]:
    """A grid trial's settings and seed, as its queued entry fixes them (each suggested from
    the grid's choices, so that a sampled trial stays on the grid)."""
    params: dict[str, Any] = {}
    for key in (*g.settings[0], "seed"):
        if key == "seed":
            params[key] = optuna_trial.suggest_int("seed", 0, 10_000)
        else:
            choices = sorted({s[key] for s in g.settings})
            params[key] = optuna_trial.suggest_categorical(key, choices)
    return params


def trial_attrs(name: str, res: dict[str, Any], run_dir: RunDir, classes: int
                ) -> tuple[float, dict[str, Any]]:
    """(test accuracy, the metric_* attributes) of experiment `name`'s trial whose training
    run (results `res`, as `cnnlab train` returns them) lies in `run_dir`."""
    r = res["runs"][0]
    sub = RunDir(run_dir.path / f"{r['model']}-seed{r['seed']}")
    metrics = sub.read_metrics()
    epochs = [rec for rec in metrics if rec.get("kind") == "epoch"]
    losses = [rec["train_loss"] for rec in metrics if rec.get("kind") == "step"]
    share = plateau_share(losses)
    attrs: dict[str, Any] = {
        "epochs": r["epochs"], "stopped": r["stopped"], "params_count": r["params"],
        "metric_macs": res["models"][0]["macs"], "metric_steps": r["steps"],
        "metric_test_accuracy": r["test_accuracy"],
        "metric_train_accuracy": r.get("train_eval_accuracy"),
        "metric_plateau_share": share,
        "metric_still_learning": still_learning(share, r.get("train_eval_accuracy"), classes),
        "metric_train_seconds": round(r["train_seconds"], 1),
        # In the storage, not only in this machine's trial folder: every machine's summary
        # of a shared study reports the same sizes.
        "metric_n_train": res["n_train"], "metric_n_test": res["n_test"],
        # [step, training accuracy (fixed sample, no augmentation), test accuracy]
        "metric_curve": [[rec["step"], rec.get("train_eval_accuracy"),
                          rec.get("test_accuracy")] for rec in epochs],
    }
    if name == "residual":  # the training loss of every logged window (4 per epoch)
        attrs["metric_loss_curve"] = [[rec["step"], rec["train_loss"]] for rec in metrics
                                      if rec.get("kind") == "step"]
    return float(r["test_accuracy"]), attrs
