"""`--workers N`: the experiments split into N groups of about equal expected seconds, the
first run here, the others in worker processes of the one pool (`cnnlab.workers.Pool`: they
die with this process, their output comes prefixed `[worker K]`, a failure is named), and the
worker's side (`work`). The plan goes through RUN/workers.json; each worker's measured round
seconds come back in RUN/worker-K.json."""

from __future__ import annotations

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


def worker_file(index: int) -> str:
    return f"worker-{index}.json"  # what worker `index` measured: its rounds' seconds


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
    for k in range(1, len(groups)):
        run_dir.file(worker_file(k)).unlink(missing_ok=True)  # an earlier invocation's
    with Pool(["experiment", "--worker", str(run_dir.path)], len(groups) - 1, threads,
              reporter) as pool:
        run_rounds(config, [studies[n] for n in groups[0]], reporter, deadline)
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
    studies = open_studies(config, names, run_dir, reporter, DataCache(reporter),
                           plan["deadline"])
    run_rounds(config, list(studies.values()), reporter, plan["deadline"])
    run_dir.write_json(worker_file(index), {"round_seconds": {
        n: s.round_seconds for n, s in studies.items()}})
