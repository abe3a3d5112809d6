"""`--workers N`: the experiments split into N groups of about equal expected seconds, the
first run here, the others in worker processes of the one pool (`cnnlab.workers.Pool`: they
die with this process, their output comes prefixed `[worker K]`, a failure is named), and the
worker's side (`work`). The plan goes through RUN/workers.json; each worker's measured round
seconds come back in RUN/worker-K.json.

A process whose own group is done helps the others (`help_groups`): it runs the trials their
processes have queued and not yet taken (the rest of the round they are in, setting by
setting), until they finish their rounds (RUN/worker-K.json, written when group K's rounds are
done, before K helps anyone) or stop. The groups are weighed by expected seconds (measured on
one kind of CPU, in one precision); the help evens out what those weights get wrong on another
machine, down to one trial. Each trial still runs once, with the numbers it has in any process
(its seed and data are the trial's own). A helper queues nothing: the owner decides its rounds,
so a worker that dies leaves its missing rounds to `--resume` as before. Main helps every
worker while that worker's process lives; a worker helps group 0 only (the main process, whose
death ends the worker too): another worker that died would leave rounds that nobody queues.
In a study whose seeds train together (residual), owner and helper claim a setting's seeds one
by one: rarely, when both claim at once, a setting's seeds split between them and a seed trains
alone, its numbers then those of `--one-at-a-time` (equal within fp32 rounding, which a deep
net's training amplifies: tests/test_experiment_together.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.rounds import expected_seconds, open_studies, run_rounds
from cnnlab.tasks.experiment.trials import DataCache, Study
from cnnlab.workers import Pool, share_cores, watch_parent


def split_groups(seconds: dict[str, float], n: int) -> list[list[str]]:
    """`seconds`' names in at most `n` groups of about equal total: the longest first, each
    into the group with the least so far (ties: the earlier group). Within a group the names
    keep their order; empty groups are dropped."""
    groups: list[list[str]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for name in sorted(seconds, key=lambda k: -seconds[k]):  # stable: ties keep their order
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += seconds[name]
    order = list(seconds)
    return [sorted(g, key=order.index) for g in groups if g]


def worker_groups(config: ExperimentConfig) -> list[list[str]]:
    """The experiments of each process: group 0 runs in the main process."""
    if config.workers <= 1 or len(config.experiments) <= 1:
        return [list(config.experiments)]
    return split_groups({n: expected_seconds(n, config) for n in config.experiments},
                        config.workers)


def worker_threads(config: ExperimentConfig, groups: list[list[str]]) -> int:
    """Torch threads per process: the user's --threads, else the cores shared out."""
    return share_cores(len(groups), config.threads)


WORKERS_FILE = "workers.json"  # the main process's plan: groups, deadline, threads
# Seconds between two looks for trials to help with while the owner is between trials: a
# SELECT of each study's trials in SQLite, well under a millisecond; a trial takes seconds.
HELP_POLL_SECONDS = 0.5


def worker_file(index: int) -> str:
    # What group `index`'s process measured (its rounds' seconds), written when its rounds
    # are done: for group 0 (the main process) too, as the sign for the helpers to stop.
    return f"worker-{index}.json"


def _write_done(run_dir: RunDir, index: int, studies: dict[str, Study]) -> None:
    run_dir.write_json(worker_file(index), {"round_seconds": {
        n: s.round_seconds for n, s in studies.items()}})


def help_groups(others: dict[int, list[Study]], run_dir: RunDir, reporter,
                alive: Callable[[int], bool], deadline: float | None,
                poll: float = HELP_POLL_SECONDS) -> int:
    """Run the trials the processes of `others` (group index -> its studies) have queued and
    not yet taken, until each group's process has finished its rounds (its worker_file) or
    is not `alive`, or `deadline` (time.time()) passes. Returns how many trials ran here."""
    ran = 0
    while deadline is None or time.time() < deadline:
        busy = [k for k in others
                if not run_dir.file(worker_file(k)).is_file() and alive(k)]
        if not busy:
            break
        took = 0
        for k in busy:
            for st in others[k]:
                took += st.take_waiting(reporter)
        ran += took
        if not took:
            time.sleep(poll)
    if ran:
        reporter.log(f"helped the other processes: {ran} of their trials ran here")
    return ran


def run_groups(config: ExperimentConfig, groups: list[list[str]], studies: dict[str, Study],
               run_dir: RunDir, reporter, data: DataCache, deadline: float | None
               ) -> dict[str, str]:
    """Group 0 here, every other group in a worker process; wait for them all. Returns, per
    experiment of a worker that failed, one line on why."""
    threads = worker_threads(config, groups)
    run_dir.write_json(WORKERS_FILE, {"groups": groups, "deadline": deadline,
                                      "threads": threads})
    reporter.log(f"{len(groups)} processes of {threads} thread{'s' if threads > 1 else ''}: "
                 + " | ".join(", ".join(g) for g in groups))
    # Decode CIFAR-10 into the disk cache here, once, before the workers would each decode it.
    data.get(studies[groups[0][0]].base)
    for k in range(len(groups)):
        run_dir.file(worker_file(k)).unlink(missing_ok=True)  # an earlier invocation's
    with Pool(["experiment", "--worker", str(run_dir.path)], len(groups) - 1, threads,
              reporter) as pool:
        run_rounds(config, [studies[n] for n in groups[0]], reporter, deadline)
        _write_done(run_dir, 0, {n: studies[n] for n in groups[0]})

        def alive(k: int) -> bool:
            return pool.workers[k - 1].proc.poll() is None

        help_groups({k: [studies[n] for n in groups[k]] for k in range(1, len(groups))},
                    run_dir, reporter, alive, deadline)
        failures = pool.wait()
    for k in range(1, len(groups)):
        f = run_dir.file(worker_file(k))
        if f.is_file():
            for name, secs in run_dir.read_json(f.name)["round_seconds"].items():
                studies[name].round_seconds = secs
    failed: dict[str, str] = {}
    for w in failures:
        names = groups[w.index]
        why = w.why(", ".join(names))
        reporter.log(why)
        for name in names:
            failed[name] = why
            _fail_orphans(studies[name], w.pid, why, reporter)
    return failed


def _fail_orphans(study: Study, pid: int, why: str, reporter) -> None:
    """The trial a dead worker was running: failed with the worker's error and queued again
    (study.recover_orphans), so that `--resume` runs it."""
    from optuna.trial import TrialState

    from cnnlab.tasks import study as machinery

    with study.study.lock():
        for t in study.study.trials():
            if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == pid:
                study.study.set_user_attr(t.number, "error", why[:500])
        machinery.recover_orphans(study.study, reporter)


def work(config: ExperimentConfig, run_dir: RunDir, reporter, index: int) -> None:
    """Worker `index`'s share: its group's seed rounds, as the main process planned them
    (RUN/workers.json); then the seconds of its rounds into RUN/worker-K.json."""
    import torch

    watch_parent()
    plan = run_dir.read_json(WORKERS_FILE)
    names = plan["groups"][index]
    torch.set_num_threads(plan["threads"])
    data = DataCache(reporter)
    studies = open_studies(config, names, run_dir, reporter, data, plan["deadline"])
    run_rounds(config, list(studies.values()), reporter, plan["deadline"])
    _write_done(run_dir, index, studies)
    # Then group 0's trials (the main process's: it outlives this one, see the docstring).
    main = open_studies(config, plan["groups"][0], run_dir, reporter, data, plan["deadline"])
    help_groups({0: list(main.values())}, run_dir, reporter, lambda k: True, plan["deadline"])
