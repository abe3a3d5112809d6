"""`cnnlab sweep`: hyper-parameter search with Optuna; every trial a `cnnlab train` run."""

from __future__ import annotations

import argparse

from cnnlab.api.commands import SWEEP_RESUME
from cnnlab.cli.common import add_output_options, print_run_paths
from cnnlab.cli.resume import add_resume_option, refuse_changes

DESCRIPTION = """\
Search a CNN's settings with Optuna (TPE sampler; median or Hyperband pruning on each epoch's
validation accuracy). Every trial is a normal `cnnlab train` run in OUT/trials/trial-NNNN/.

The trials are scored on a validation split carved from the training set (val_fraction,
stratified); they never see the test set. At the end the best settings are re-trained on the
whole training set and tested once (OUT/final/): the sweep's one test number.

CONFIG.yaml:
  data: ../shared/data/cifar10/cifar10-jpg.zip
  trials: 20                 # over every process and resume
  pruner: median             # median, hyperband or none
  val_fraction: 0.1
  train:                     # fixed `cnnlab train` settings of every trial
    models: [plain-cnn]
    recipe: fast
    limit_per_class: 200
    epochs: 4
    recipe_overrides: {lookahead: null, tta: none}
  space:                     # list = choices; {low, high[, log, step]} = a range
    depth: {low: 1, high: 8}           # plain-cnn's options: depth width kernel pool pool_kind
    kernel: [3, 5, 7]
    lr: {low: 0.01, high: 1.0, log: true}
    batch_size: [128, 256, 512]
    momentum: {low: 0.8, high: 0.95}   # any recipe setting

Storage: SQLite in OUT (study.db) by default; --storage URL (any Optuna RDB URL, e.g.
postgresql://user:pw@host/db) lets processes on several machines share the study: start the same
command on each, with the same --study name. --workers N runs N processes here.
A sweep stopped in any way (Ctrl-C, kill -9) continues with --resume OUT: finished trials are
kept, a trial whose process died is run again, and --trials counts each trial once.

Outputs: trials.csv (settings, validation accuracy, seconds, pruned), history.png,
importances.png, parallel.png, results.json, report.html / report.md.

Examples:
  cnnlab sweep sweep.yaml --trials 30 --budget 60
  cnnlab sweep sweep.yaml --workers 2 --out runs/sweep-depth
  cnnlab sweep --resume runs/sweep-depth
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter search (Optuna) over cnnlab train runs",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG.yaml", nargs="?",
                   help="the search: data, space, train settings (not with --resume)")
    p.add_argument("--trials", type=int, metavar="N", help="trials in all (20)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="minutes of search: no new trial after them, and a running one is "
                        "cut to fit (the best's re-training on train + validation and its one "
                        "test come after, outside these minutes)")
    p.add_argument("--workers", type=int, metavar="N", help="processes on this machine (1)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna RDB storage URL (default: sqlite in the run directory)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the config's name)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], help="(median)")
    p.add_argument("--seed", type=int, help="sampler seed (0)")
    p.add_argument("--no-final", dest="final", action="store_false", default=None,
                   help="do not re-train and test the best settings")
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    p.add_argument("--worker", metavar="RUN", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=1, help=argparse.SUPPRESS)
    add_output_options(p)
    # --trials counts over every resume, so more of them continue the search; the budget and
    # the processes are this session's.
    add_resume_option(p, allowed=SWEEP_RESUME.allowed,
                      help="continue an interrupted sweep (or one that should run more trials)")
    p.set_defaults(run=run)


FLAGS = ("trials", "budget", "workers", "storage", "study", "pruner", "seed", "final", "report")


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import sweep
    from cnnlab.progress import Reporter

    if args.worker:
        # A process started by the sweep itself (its pool: cnnlab.workers), not a user's
        # command: it works on the run's study as saved and returns nothing to print.
        from cnnlab.config import from_run
        from cnnlab.runs import RunDir
        from cnnlab.tasks import sweep as task

        config = from_run(task.SweepConfig, args.worker, "sweep")
        task.work_as_worker(config, RunDir.open(args.worker), Reporter(quiet=args.quiet),
                            index=args.worker_index)
        return 0
    if args.resume:
        refuse_changes(args)
    result = sweep(args.config, out=args.out, quiet=args.quiet, resume=args.resume,
                   **{k: getattr(args, k) for k in FLAGS})
    names = [p["name"] for p in result.results["space"]]
    rows = []
    for r in result.rows:
        value = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}%"
        state = r["state"] + (" (retried)" if r["retried"] else "")
        rows.append([r["trial"], state, *[_fmt(r[n]) for n in names], value,
                     r["epochs"] if r["epochs"] is not None else "-",
                     "-" if r["seconds"] is None else f"{r['seconds']:.0f}"])
    reporter = Reporter(quiet=args.quiet)
    reporter.table(["trial", "state", *names, "val acc", "epochs", "s"], rows,
                   right_align=["trial", "val acc", "epochs", "s"])
    final = result.results.get("final")
    if final:
        reporter.result(f"best: trial {final['trial']} (val {100 * final['val_accuracy']:.2f}%); "
                        f"re-trained on {final['n_train']:,} images and tested once: "
                        f"{100 * final['test_accuracy']:.2f}% on {final['n_test']:,}")
    print_run_paths(reporter, result.results["run_dir"])
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
