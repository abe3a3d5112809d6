"""Seed rounds in one process: the studies of a group opened in RUN/<name>/, seed 0 of every
setting of every study, then seed 1, ... (more while a budget has room), one overall bar
weighted by each round's expected seconds, and the first round's estimate of the rest."""

from __future__ import annotations

import statistics
import time

from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.grids import grid
from cnnlab.tasks.experiment.together import seeds_together
from cnnlab.tasks.experiment.trials import DataCache, Study

# Seconds of one seed round of each experiment's default design, one net at a time on ONE
# thread (each --workers process has one on a 2-core machine), for splitting experiments among
# --workers: BENCHMARKS.md "cnnlab lab", the lab's experiments step in two one-thread
# processes, three rounds each (depth 180 s, filters 115, pooling 133, residual 256), divided
# by 3. (The earlier figures were two-thread times, 1.5x faster for the plain-cnn studies but
# not for residual: they put residual alone against the other three.) Only ratios matter.
# In fp32 (CNNLAB_PRECISION=fp32, the same machine, the lab's step at commit 9cc1289) the plain
# studies are slower against residual: depth 76.3, filters 62.8, pooling 64.1, residual 83.1
# (together; the old 16x16 residual design) per round. Since a process done with its group
# helps the others (parallel.help_groups), a wrong weight costs about one trial.
# residual: its 2-class 8x8 design of issue 26 (992 steps at batch 32), scaled from the old
# design's 85.3 by the CPU seconds of `cnnlab experiment residual --seeds 3 --threads 1`, fp32,
# new design against old, measured the same evening under the same load (6-9): 162.5 / 260.3
# user+system seconds (BENCHMARKS.md "The residual question decided in the lab's minutes").
ROUND_SECONDS = {"depth": 60.0, "filters": 38.3, "pooling": 44.3, "residual": 53.3}
# How much faster a seed round is when each setting's seeds train together as one batched
# model (together.py): BENCHMARKS.md "Seeds trained together in `cnnlab experiment`", the
# residual study at 3 seeds on one thread, CPU seconds per round alone / together, at the
# lower of the loads measured: fp32 31.4 / 27.6 (1.14x), bf16 24.1 / 20.8 (1.16x).
TOGETHER_SPEEDUP = {"residual": 1.15}


def expected_seconds(name: str, config: ExperimentConfig) -> float:
    """One seed round of experiment `name` under `config`, in ROUND_SECONDS' units: scaled by
    its number of nets (--full) and epochs (--epochs), and by TOGETHER_SPEEDUP where its seeds
    train together; --quick counts nets only."""
    nets = len(grid(name, config).settings)
    if config.quick:
        return float(nets)
    default = ExperimentConfig(experiments=(name,))
    speedup = TOGETHER_SPEEDUP.get(name, 1.0) if seeds_together(name, config) > 1 else 1.0
    return (ROUND_SECONDS[name] * nets / len(grid(name, default).settings)
            * config.design(name).epochs / default.design(name).epochs / speedup)


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


def chunks(seeds: int, together: int) -> list[range]:
    """Seed rounds 0 .. seeds-1 in runs of `together` (the rounds a study trains at once: a
    setting's seeds as one batched model), the last run shorter."""
    n = max(1, together)
    return [range(s, min(s + n, seeds)) for s in range(0, seeds, n)]


def _seeds_text(seeds: range) -> str:
    return (f"seed {seeds.start}" if len(seeds) == 1
            else f"seeds {seeds.start}-{seeds.stop - 1}")


def run_rounds(config: ExperimentConfig, studies: list[Study], reporter,
               deadline: float | None) -> None:
    """Seed 0 of every setting of every study, then seed 1, ... (a study that trains k seeds
    of a setting together: rounds 0 .. k-1 at once): at least `config.seeds` rounds, and with a
    budget more while the next fits (one process's share of the work)."""
    from cnnlab import checkpoints

    def time_left() -> float | None:
        return None if deadline is None else deadline - time.time()

    # Round-major, each study's chunk where its first round falls (a stable sort).
    plan = sorted(((seeds, st) for st in studies for seeds in chunks(config.seeds, st.together)),
                  key=lambda p: p[0].start)
    # One bar over the rounds every run trains (studies x --seeds), each step weighted by its
    # expected seconds, so the ETA covers the whole job; a budget's extra rounds come after
    # it, on the last step's line.
    weights = [expected_seconds(st.name, config) * len(seeds) for seeds, st in plan]
    first = max(k for k, (seeds, _) in enumerate(plan) if seeds.start == 0)
    with reporter.overall("experiment", len(weights), weights) as display:
        for k, (seeds, study) in enumerate(plan):
            left = time_left()
            if left is not None and left <= 0:
                return
            step = display.step(k + 1, f"{study.name} {_seeds_text(seeds)}")
            checkpoints.crash_point(f"experiment:{study.name}:seed-{seeds.start}")
            step.log(f"experiment {study.name}: {_seeds_text(seeds)} of every setting")
            study.run_round(seeds, step)
            if k == first:  # every study's first round done: the estimate of the rest
                _estimate(config, studies, time_left, reporter)
        if config.budget:
            _extra_rounds(config, studies, display, len(weights), time_left)


def _extra_rounds(config: ExperimentConfig, studies: list[Study], display, last_step: int,
                  time_left) -> None:
    """A budget's rounds after --seeds, while the next fits: round by round over the studies,
    as many rounds of a study at once as it trains together and as fit in what is left."""
    from cnnlab import checkpoints

    next_seed = {st.name: config.seeds for st in studies}
    for seed in range(config.seeds, config.max_seeds):
        ran = False
        for study in studies:
            if seed < next_seed[study.name]:
                ran = True
                continue  # trained with an earlier round
            left = time_left()
            if left is not None and left <= 0:
                return
            n = min(study.together, config.max_seeds - seed)
            if study.round_seconds:
                mean = statistics.fmean(study.round_seconds)
                n = min(n, int(left // mean) if left is not None and mean > 0 else n)
            if n < 1:
                continue  # an extra round that would not fit
            seeds = range(seed, seed + n)
            step = display.step(last_step, f"{study.name} {_seeds_text(seeds)}")
            checkpoints.crash_point(f"experiment:{study.name}:seed-{seed}")
            step.log(f"experiment {study.name}: {_seeds_text(seeds)} of every setting")
            study.run_round(seeds, step)
            next_seed[study.name] = seeds.stop
            ran = True
        if not ran:
            return


def _estimate(config: ExperimentConfig, studies: list[Study], time_left, reporter) -> None:
    """After the first round: what all of them will take here, and whether a budget cuts."""
    one = sum(st.round_seconds[0] for st in studies if st.round_seconds)
    if one:  # the first round is the estimate of every later one
        # Rounds trained together with the first are done already.
        need = sum(st.round_seconds[0] * max(0, config.seeds - len(st.round_seconds))
                   for st in studies if st.round_seconds)
        left = time_left()
        reporter.log(f"one seed of every net took {one:.0f} s: {config.seeds} seeds take "
                     f"about {(one + need) / 60:.1f} minutes here"
                     + (f"; the budget leaves {max(0.0, left) / 60:.1f} for "
                        f"{need / 60:.1f}, so the last trials will be cut and left out"
                        if left is not None and need > left else ""))
