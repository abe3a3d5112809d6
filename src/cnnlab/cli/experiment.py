"""`cnnlab experiment`: the lab's claims on depth, filters, pooling and ResNet, with data."""

from __future__ import annotations

import argparse

from cnnlab.api.commands import EXPERIMENT_RESUME
from cnnlab.cli.common import add_output_options, print_run_paths
from cnnlab.cli.resume import add_resume_option, refuse_changes

DESCRIPTION = """\
Studies of Lab B's claims, each a grid of `cnnlab train` runs (one per setting and seed) on
CIFAR-10, through the same Optuna machinery as `cnnlab sweep`. Every experiment: a table (test
and training accuracy with 95% intervals over seeds, whether each net had stopped learning), a
figure, and a verdict from the statistics: "held" or "did not hold" only when the interval of
the difference it rests on excludes zero, else "undecided"; one seed gives no verdict.

  depth     plain CNNs of 1-8 conv layers (width 16 doubling every second layer, 2x2 max-pool
            after every second layer) on 16x16 images: does the gain per layer drop after 3-4?
  filters   3x3 / 5x5 / 7x7 kernels at an equal parameter budget (4 layers, 32x32)
  pooling   2x2 vs 4x4, max vs average (4 layers, 32x32)
  residual  plain-20/56 vs ResNet-20/56 (He et al. 2016, Fig. 6; 8-16-32 filters on 8x8, 2 classes;
            --full adds 32 and 44): training-error curves, and per-layer gradient norms at
            initialisation and after the first epoch ("ResNet counters the derivative going
            to zero")

Each experiment's design (image size, training images, epochs, batch, recipe) is fixed so that
its nets finish their schedule: all four at 3 seeds take about 10 minutes on 2 cores.
Seeds run in rounds (seed 0 of every net, then seed 1, ...). --budget MINUTES adds rounds while
the next one fits: more minutes give more seeds and tighter intervals, not other nets.

Examples:
  cnnlab experiment depth
  cnnlab experiment depth filters pooling residual --out runs/claims
  cnnlab experiment residual --budget 20               # more seeds, tighter intervals
  cnnlab experiment residual --epochs 64               # longer runs
  cnnlab experiment --resume runs/claims --seeds 5     # two more seeds of every net
  cnnlab experiment depth filters pooling residual --workers 2   # 2 processes, 1 thread each
  cnnlab experiment depth filters pooling residual --storage postgresql://lab@db/cnnlab \
      --study lab-b                                   # the same on every machine: they share
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="check the lab's claims on depth, filters, pooling, "
                       "ResNet", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", default=[], metavar="EXPERIMENT",
                   help="depth, filters, pooling, residual (one or more)")
    p.add_argument("--data", metavar="DATA",
                   help="CIFAR-style zip or folder (default: DATA_ROOT/cifar10/cifar10-jpg.zip)")
    p.add_argument("--data-root", metavar="DIR",
                   help="(default: $CNNLAB_DATA or ../shared/data)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per setting, at least (3); with --resume: more seed rounds")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="minutes for everything: after --seeds rounds, more rounds while the "
                        "next fits (up to --max-seeds); a trial it cuts short is left out")
    p.add_argument("--max-seeds", type=int, metavar="N",
                   help="the most seeds a --budget may buy (10)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="train and test on the first N images of each class of each split "
                        "(default: each design's training sample and the whole test set)")
    p.add_argument("--epochs", type=float,
                   help="epochs of every trial (default: each design's: depth 10, filters 5, "
                        "pooling 5, residual 32)")
    p.add_argument("--full", action="store_true", default=None,
                   help="residual: depths 20, 32, 44, 56 (default 20 and 56)")
    p.add_argument("--quick", action="store_true", default=None,
                   help="seconds, not minutes: 1 epoch on 10 images per class; depth 1 2 4, "
                        "kernels 3 5, pooling 2x2 and 4x4 max, residual 20 only; no verdicts "
                        "(cnnlab lab --quick)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (per process with --workers; default: the cores "
                        "shared among the workers)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes (1): the experiments split into N groups of about equal "
                        "time, each run by its own process; the same trials as one process")
    p.add_argument("--storage", metavar="URL",
                   help="an Optuna RDB URL (postgresql://user@host/db) shared by this command "
                        "started on several machines: they share each experiment's trials, "
                        "and each writes the whole study's results when none is left "
                        "(default: SQLite in the run directory)")
    p.add_argument("--study", metavar="NAME",
                   help="with --storage: the studies' name, NAME-<experiment> (experiment)")
    p.add_argument("--one-at-a-time", dest="together", action="store_false", default=None,
                   help="train every net alone (default: the residual study's seeds of one "
                        "net train together as one batched model, 1.3-1.5x faster; the same "
                        "numbers within float rounding)")
    p.add_argument("--worker", metavar="RUN", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    add_output_options(p)
    add_resume_option(p, allowed=EXPERIMENT_RESUME.allowed,
                      per_invocation=EXPERIMENT_RESUME.per_invocation,
                      help="continue an interrupted run (or add seeds to a finished one with "
                      "--seeds N)")
    p.set_defaults(run=run)


KEYS = ("data", "data_root", "budget", "seeds", "max_seeds", "limit_per_class", "epochs",
        "full", "quick", "threads", "workers", "storage", "study", "together", "report")


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import experiment
    from cnnlab.progress import Reporter
    from cnnlab.report.experiment import interval, verdict_text

    if args.worker:
        # A process started by the experiment itself (its pool: cnnlab.workers), not a user's
        # command: its group of the run's experiments, as saved; nothing to print.
        from cnnlab.config import from_run
        from cnnlab.runs import RunDir
        from cnnlab.tasks import experiment as task

        config = from_run(task.ExperimentConfig, args.worker, "experiment")
        task.work(config, RunDir.open(args.worker), Reporter(quiet=args.quiet),
                  index=args.worker_index)
        return 0
    if args.resume:
        refuse_changes(args)
    # A tuple: the API's default, so that no names with --resume is not a change.
    result = experiment(tuple(args.experiments), out=args.out, quiet=args.quiet, resume=args.resume,
                        **{k: getattr(args, k) for k in KEYS})
    reporter = Reporter(quiet=args.quiet)
    for name, res in result.results["experiments"].items():
        rows = [[r["setting"], interval(r["test_mean"], r["test_ci"]),
                 interval(r["train_mean"], r["train_ci"]), r["seeds"],
                 r.get("plateau") or (f"{r['still_learning']}" if r["still_learning"] else "-"),
                 "-" if r["params"] is None else f"{r['params']:,}"]
                for r in result.rows if r["experiment"] == name]
        reporter.table(["setting", "test acc (95% CI)", "train acc", "seeds", "still learning",
                        "params"], rows, title=name,
                       right_align=["test acc (95% CI)", "train acc", "seeds", "params"])
        reporter.result(f"{name}: {verdict_text(res['verdict'])}")
        if res.get("gradients"):
            reporter.result(f"{name}, gradients: {verdict_text(res['gradients'])}")
    print_run_paths(reporter, result.results["run_dir"])
    return 0
