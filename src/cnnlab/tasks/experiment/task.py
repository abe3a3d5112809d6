"""`run`: the command from start to end. Every named experiment into RUN/<name>/, seed round
after seed round (in one process, or a group each in `--workers` processes), then every
study summarised into RUN/<name>/results.json, RUN/results.json and the report; a worker that
failed ends it with a one-line error after what finished is saved."""

from __future__ import annotations

import time
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.parallel import run_groups, worker_groups, worker_threads
from cnnlab.tasks.experiment.rounds import open_studies, run_rounds
from cnnlab.tasks.experiment.shared import await_peers
from cnnlab.tasks.experiment.trials import DataCache
from cnnlab.tasks.study import redact_url


def run(config: ExperimentConfig, run_dir: RunDir, reporter, resume: bool = False
        ) -> dict[str, Any]:
    """Every named experiment into RUN/<name>/, seed round after seed round (in `workers`
    processes, a group of experiments each), then RUN/results.json and the report."""
    from cnnlab.data.cifar import detect_layout

    detect_layout(config.data_path())  # a missing data set before any file
    run_dir.save_config(config)  # on resume too: a later resume inherits --seeds N; workers read it
    if not resume:
        run_dir.save_environment()
    start = time.monotonic()
    # A wall time, not a monotonic one: the worker processes share it.
    deadline = None if config.budget is None else time.time() + 60 * config.budget
    data = DataCache(reporter)
    studies = open_studies(config, config.experiments, run_dir, reporter, data, deadline)
    total = sum(len(s.grid.settings) for s in studies.values())
    reporter.log(f"experiments {', '.join(config.experiments)}: {total} nets x "
                 f"{config.seeds} seeds"
                 + (f", more seeds while they fit in {config.budget:g} minutes"
                    if config.budget else ""))
    failed: dict[str, str] = {}  # experiment -> why its worker stopped
    groups = worker_groups(config)
    if len(groups) > 1:
        failed = run_groups(config, groups, studies, run_dir, reporter, data, deadline)
    else:
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        run_rounds(config, list(studies.values()), reporter, deadline)
    if config.storage:  # other machines may still train trials of these studies
        await_peers(list(studies.values()), reporter)
    if deadline is not None and time.time() >= deadline:
        reporter.log(f"the budget of {config.budget:g} minutes is spent")
    out: dict[str, Any] = {"experiments": {}}
    if config.storage:
        out["storage"] = {"url": redact_url(config.storage), "study": config.study}
    if len(groups) > 1:
        out["workers"] = {"processes": len(groups), "threads": worker_threads(config, groups),
                          "groups": groups}
    for name, study in studies.items():
        try:
            res = study.summarise()
        except CnnlabError as exc:
            if name not in failed:
                raise
            reporter.log(str(exc))  # its worker's failure is the error, below
            continue
        res["seconds"] = round(sum(study.round_seconds), 1)
        if name in failed:
            res["worker_error"] = failed[name]
        study.run_dir.save_results(res)
        out["experiments"][name] = res
        v = res["verdict"]
        reporter.log(f"experiment {name}: {v['status'].capitalize()}: {v['sentence']}")
    out["seconds"] = round(time.monotonic() - start, 1)
    if out["experiments"]:
        run_dir.save_results(out)
        if config.report:
            from cnnlab.report.experiment import write_report

            write_report(run_dir.path)
    if failed:
        # Like a trial that fails, but a whole group's remaining trials: the results and the
        # report hold what finished, and the run says so with a one-line error.
        why = "; ".join(dict.fromkeys(failed.values()))
        raise CnnlabError(f"{why}; the results leave out {', '.join(failed)}'s missing trials: "
                          f"`cnnlab experiment --resume {run_dir.path}` runs them")
    out["run_dir"] = str(run_dir.path)
    return out
