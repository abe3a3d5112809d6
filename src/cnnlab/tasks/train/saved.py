"""The files a resumed run reads back instead of doing the work again: a (model, seed)'s
budget.json (its plan of steps), the run's calibration.json (each model's chosen shape) and a
finished (model, seed)'s results.json. Each is checked before it is trusted, so that a damaged
file is named in one line (runs.damaged), not a KeyError deep in the run."""

from __future__ import annotations

from typing import Any

from cnnlab import budget
from cnnlab.runs import RunDir, check_record, damaged

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

