"""Seed rounds in one process: the studies of a group opened in RUN/<name>/, seed 0 of every
setting of every study, then seed 1, ... (more while a budget has room), one overall bar
weighted by each round's expected seconds, and the first round's estimate of the rest."""

from __future__ import annotations

import statistics
import time

from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.grids import grid
from cnnlab.tasks.experiment.trials import DataCache, Study

# Seconds of one seed round of each experiment's default design, for splitting experiments
# among --workers: BENCHMARKS.md "cnnlab experiment", three rounds on the 2-core Xeon (depth
# 117 s, filters 115 s, pooling 73 s, residual 252 s), divided by 3. Only their ratios matter.
ROUND_SECONDS = {"depth": 39.0, "filters": 38.3, "pooling": 24.3, "residual": 84.0}


def expected_seconds(name: str, config: ExperimentConfig) -> float:
    """One seed round of experiment `name` under `config`, in ROUND_SECONDS' units: scaled by
    its number of nets (--full) and epochs (--epochs); --quick counts nets only."""
    nets = len(grid(name, config).settings)
    if config.quick:
        return float(nets)
    default = ExperimentConfig(experiments=(name,))
    return (ROUND_SECONDS[name] * nets / len(grid(name, default).settings)
            * config.design(name).epochs / default.design(name).epochs)


def open_studies(config: ExperimentConfig, names: tuple[str, ...] | list[str], run_dir: RunDir,
                 reporter, data: DataCache, deadline: float | None) -> dict[str, Study]:
    """The studies of `names`, each in RUN/<name>/ (created on first use)."""
    def time_left() -> float | None:
        return None if deadline is None else deadline - time.time()

    studies = {}
    for name in names:
        sub = RunDir(run_dir.path / name)
        sub.path.mkdir(parents=True, exist_ok=True)
        studies[name] = Study(name, config, sub, reporter, data, time_left)
    return studies


def run_rounds(config: ExperimentConfig, studies: list[Study], reporter,
               deadline: float | None) -> None:
    """Seed 0 of every setting of every study, then seed 1, ...: at least `config.seeds`
    rounds, and with a budget more while the next fits (one process's share of the work)."""
    from cnnlab import checkpoints

    def time_left() -> float | None:
        return None if deadline is None else deadline - time.time()

    last_round = config.max_seeds if config.budget else config.seeds
    # One bar over the rounds every run trains (studies x --seeds), each weighted by its
    # expected seconds, so the ETA covers the whole job; a budget's extra rounds come after
    # it, on the last step's line.
    weights = [expected_seconds(st.name, config) for _ in range(config.seeds) for st in studies]
    with reporter.overall("experiment", len(weights), weights) as display:
        k = 0
        for seed in range(last_round):
            ran = False
            for study in studies:
                left = time_left()
                if left is not None and left <= 0:
                    break
                extra = seed >= config.seeds and study.round_seconds
                if extra and (left is None or statistics.fmean(study.round_seconds) > left):
                    continue  # an extra round that would not fit
                k = min(k + 1, len(weights))
                step = display.step(k, f"{study.name} seed {seed}")
                checkpoints.crash_point(f"experiment:{study.name}:seed-{seed}")
                step.log(f"experiment {study.name}: seed {seed} of every setting")
                study.run_round(seed, step)
                ran = True
            if not ran:
                break
            _estimate(config, studies, seed, time_left, reporter)


def _estimate(config: ExperimentConfig, studies: list[Study], seed: int, time_left,
              reporter) -> None:
    """After the first round: what all of them will take here, and whether a budget cuts."""
    one = sum(st.round_seconds[0] for st in studies if st.round_seconds)
    if seed == 0 and one:  # the first round is the estimate of every later one
        need = one * (config.seeds - 1)
        left = time_left()
        reporter.log(f"one seed of every net took {one:.0f} s: {config.seeds} seeds take "
                     f"about {(one + need) / 60:.1f} minutes here"
                     + (f"; the budget leaves {max(0.0, left) / 60:.1f} for "
                        f"{need / 60:.1f}, so the last trials will be cut and left out"
                        if left is not None and need > left else ""))
