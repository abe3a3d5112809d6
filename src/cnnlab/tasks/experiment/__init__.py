"""`cnnlab experiment depth|filters|pooling|residual`: Lab B's claims about choosing a CNN's
parameters and about ResNet, each checked by a grid of `cnnlab train` runs, with verdicts that
respect the noise between seeds.

    config = ExperimentConfig(experiments=("depth", "residual"))
    results = run(config, RunDir.create("experiment"), Reporter())

Every experiment is a grid of trials queued in an Optuna study (`tasks/study.run_study`: the
same storage, orphan recovery and `--resume` as `cnnlab sweep`), one trial per (setting, seed),
each a normal `cnnlab train` run in `RUN/<experiment>/trials/trial-NNNN/`. Nothing is selected:
every trial is tested once, on the whole CIFAR-10 test set, after its last step.

Runs that can decide. Each experiment has a `Design` (designs.py): image size, training
images, epochs, batch and recipe, chosen so that its nets train to the end of their schedule
(the plain-cnn studies: one-cycle, warm-up then the learning rate down to zero; the residual
study: warm-up then constant) within the lab's minutes on a 2-core CPU. What was scaled
down, and why, is in each design's `scaled` sentence, which the report prints. Every trial
records whether it had stopped learning: the share of its training-loss drop that came in the
last quarter of its steps (`plateau_share`), and its accuracy on a fixed sample of training
images; a trial still learning (or barely above chance) is marked, and a verdict that rests on
a setting where most seeds were still learning says "too short to decide". The residual claim
is about the plateau's training error, so its nets must pass the doubling test instead
(`learning.doubling_test`: the training error at the last step against at half the steps,
over >= 3 seeds, within the noise, and not at chance).

Seeds and budget. Seeds run in rounds: seed 0 of every setting of every experiment, then seed
1, ...; at least `seeds` (3) rounds. With `--budget MINUTES` the rounds go on while the next one
fits in what is left (up to `max_seeds`): more minutes give more seeds, i.e. tighter intervals,
never different nets. A trial the budget cuts short is excluded from the comparison and named.

Workers. The experiments are independent (each its own study in RUN/<name>/), and these small
nets train about as fast on one thread as on two, so `--workers N` splits the named experiments
into N groups of about equal expected seconds (`ROUND_SECONDS`) and runs each group in its own
process with cores / N torch threads: the main process runs the first group, `cnnlab experiment
--worker RUN --worker-index K` the others (parallel.py, in the pool `cnnlab.workers` shares
with `cnnlab sweep`). Each process runs its group's seed
rounds exactly as one process would (the same trials, the budget's deadline shared as a wall
time); a process done with its group then runs the trials the others have queued and not yet
taken (`help_groups`: the split's expected seconds are one CPU's, one precision's); the main
process then waits for the others and summarises every study.

Several machines. `--storage URL --study NAME` puts each experiment's study in one database
(PostgreSQL), as `NAME-<experiment>`, instead of SQLite in the run directory: the same command
started on several machines shares the trials (each takes the queued trials no live process
holds), and every process, when no trial is left anywhere, summarises the whole study into its
own --out (shared.py). The trial's seed is its `seed` setting (the round) and the training
sample is the design's fixed one, so which machine trained a trial changes none of its numbers.

Verdicts come from `analysis/stats.py`: each claim is one or more contrasts of the settings' mean
accuracies with 95% Welch intervals over seeds; "held" / "did not hold" only when the intervals
exclude zero, else "undecided"; one seed gives no verdict; a grid that cannot refute the claim
gives "not tested"; `--quick` gives "too short to decide".

- depth: `plain-cnn` with 1..8 conv layers (width 16 doubling every second layer, 2x2 max-pool
  after every second layer; models/plain_cnn.py). Claim: accuracy rises with depth, and the
  gain per added layer drops after 3-4 layers. Contrasts: acc(4) - acc(1) > 0, and the gain per
  layer from 1 to 4 minus the gain per layer from 4 to the deepest > 0.
- filters: 3x3, 5x5 and 7x7 kernels at an equal *parameter* budget (4 layers; the 5x5 and 7x7
  nets get the width whose parameter count is closest to the 3x3 net's). Claim: "usually 3x3
  or 5x5": held when 3x3 or 5x5 beats 7x7, did not hold when 7x7 beats both.
- pooling: 2x2 against 4x4, max and average, 4 layers, on 32x32 inputs (small, so the claim
  expects 2x2). Contrast: the best 2x2 minus the best 4x4 > 0.
- residual: plain-20/56 against ResNet-20/56 (He et al. 2016, option A shortcuts; 32 and 44
  with `--full`), narrower (8-16-32 filters) on 16x16 images. Training error on a fixed sample
  of training images, measured every epoch (the curves of Fig. 6), and per-layer gradient norms
  of every conv weight on one fixed batch at initialisation and after the first epoch, for
  every seed. Contrasts: err(plain-56) - err(plain-20) > 0 (degradation), err(plain-56) -
  err(ResNet-56) > 0 (the shortcuts), and err(ResNet-56) - err(ResNet-20) not above zero.

Where things live (one concern per file; imports point down this list, never up, none lazy
against it):

    designs.py   the recipes, widths and each study's `Design` (what was scaled down, and why)
    config.py    `ExperimentConfig`: the studies, data, seeds, budget, workers; `design(name)`
    grids.py     `Grid` and `grid(name, config)`: each study's settings and claim;
                 `equal_param_width` (the filters study's equal parameter budget)
    learning.py  what a trial measures besides accuracy: `plateau_share`, `still_learning`,
                 the residual study's `conv_grad_norms` on a `fixed_batch`, `log10_norm`
    claims.py    the verdicts: `verdict` (gate, one function per claim in `CLAIMS`, "too short
                 to decide"), `gradient_verdict`
    tables.py    `summarise`: one row per setting over its seeds, `depth_gains`, the verdicts
    record.py    a grid trial's settings (`trial_params`) and what it records (`trial_attrs`)
    together.py  a setting's seeds trained together as one batched model (`TOGETHER`: the
                 residual study), each trial recorded as when it trains alone
    trials.py    `base_train`, `DataCache`, the trial `objective`, `Study` (one experiment's
                 Optuna study: its queue, seed rounds and summary)
    rounds.py    seed rounds in one process (a batched study's rounds at once): `open_studies`,
                 `run_rounds`, the estimates, `ROUND_SECONDS` / `expected_seconds`
    parallel.py  `--workers`: `split_groups`, `worker_groups`, `run_groups` (the main side),
                 `work` (a worker's side), `help_groups` (the idle process takes queued trials)
    shared.py    `--storage`: `await_peers`, the wait for other machines' trials
    task.py      `run`: the command from start to end (rounds, summaries, results, report)

This package's face (below) is what callers outside it use: the CLI, the API and the lab
(`ExperimentConfig`, `EXPERIMENTS`, `DEFAULT_DATA`, `run`, `work`, `available_cores`), and the
tests of its parts.
"""

from cnnlab.tasks.experiment.claims import gradient_verdict, verdict
from cnnlab.tasks.experiment.config import DEFAULT_DATA, EXPERIMENTS, ExperimentConfig
from cnnlab.tasks.experiment.designs import TRAIN_EVAL
from cnnlab.tasks.experiment.grids import equal_param_width, grid
from cnnlab.tasks.experiment.learning import conv_grad_norms, plateau_share, still_learning
from cnnlab.tasks.experiment.parallel import split_groups, work, worker_groups
from cnnlab.tasks.experiment.rounds import ROUND_SECONDS, expected_seconds
from cnnlab.tasks.experiment.tables import summarise
from cnnlab.tasks.experiment.task import run
from cnnlab.tasks.experiment.trials import base_train
from cnnlab.workers import available_cores

__all__ = [
    "DEFAULT_DATA", "EXPERIMENTS", "ROUND_SECONDS", "TRAIN_EVAL", "ExperimentConfig",
    "available_cores", "base_train", "conv_grad_norms", "equal_param_width", "expected_seconds",
    "gradient_verdict", "grid", "plateau_share", "run", "split_groups", "still_learning",
    "summarise", "verdict", "work", "worker_groups",
]
