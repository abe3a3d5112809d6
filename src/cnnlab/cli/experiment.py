"""`cnnlab experiment`: the lab's claims on depth, filters, pooling and ResNet, with data."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_output_options

DESCRIPTION = """\
Ready-made studies of Lab B's claims, each a small grid of `cnnlab train` runs (one per setting
and seed) on a CIFAR-10 subset, through the same Optuna machinery as `cnnlab sweep`. Every
result: a table (test accuracy mean ± std over seeds), a plot, and one sentence saying whether
the lab's claim held here.

  depth     plain CNNs of 1-8 conv layers (width 16 doubling every second layer, 2x2 max-pool
            after every second layer), equal epochs: does the gain flatten after 3-4 layers?
  filters   3x3 / 5x5 / 7x7 kernels at an equal parameter budget (4 layers)
  pooling   2x2 vs 4x4, max vs average (4 layers)
  residual  plain-20/56 vs ResNet-20/56 (He et al. 2016, Fig. 6; --full adds 32 and 44):
            training and test error, and per-layer gradient norms at initialisation and after
            the first epoch ("ResNet counters the derivative going to zero")

Budgets: every trial of an experiment trains the same epochs; --budget MINUTES (per experiment)
is split equally over its trials as each trial's time limit, and the table shows where it cut.

Examples:
  cnnlab experiment depth --seeds 2
  cnnlab experiment residual --budget 20 --limit-per-class 500
  cnnlab experiment depth filters pooling residual --out runs/claims
  cnnlab experiment --resume runs/claims
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="check the lab's claims on depth, filters, pooling, "
                       "ResNet", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help="depth, filters, pooling, residual (one or more)")
    p.add_argument("--data", metavar="DATA",
                   help="CIFAR-style zip or folder (default: DATA_ROOT/cifar10/cifar10-jpg.zip)")
    p.add_argument("--data-root", metavar="DIR",
                   help="(default: $CNNLAB_DATA or ../shared/data)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="training minutes per experiment, split equally over its trials")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per setting (2)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="train and test on the first N images of each class (200)")
    p.add_argument("--epochs", type=float,
                   help="epochs of every trial (depth, filters, pooling 4; residual 3)")
    p.add_argument("--batch-size", type=int,
                   help="(128, He et al.'s); the learning rate scales with it (lr x batch/128)")
    p.add_argument("--full", action="store_true", default=None,
                   help="residual: depths 20, 32, 44, 56 (default 20 and 56)")
    p.add_argument("--quick", action="store_true", default=None,
                   help="minutes, not hours: 1 epoch; depth 1 2 4, kernels 3 5, pooling 2x2 "
                        "and 4x4 max, residual 20 only (cnnlab lab --quick)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    add_output_options(p)
    p.set_defaults(run=run)


KEYS = ("data", "data_root", "budget", "seeds", "limit_per_class", "epochs", "batch_size",
        "full", "quick", "threads", "report")


def run(args: argparse.Namespace) -> int:
    from cnnlab.config import from_mapping
    from cnnlab.errors import CnnlabError
    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import experiment, run_task
    from cnnlab.tasks.lab import default_data_root

    reporter = Reporter(quiet=args.quiet)
    if args.resume:
        if args.experiments or args.out:
            raise CnnlabError("--resume continues a run with its own experiments and "
                              "directory; name no EXPERIMENT and no --out with it")
        run_dir = RunDir.open(args.resume)
        if not run_dir.file("config.json").is_file():
            raise CnnlabError(f"{run_dir} has no config.json: not a cnnlab experiment run")
        config = from_mapping(experiment.ExperimentConfig, run_dir.read_json("config.json"))
        results = experiment.run(config, run_dir, reporter, resume=True)
    else:
        if not args.experiments:
            raise CnnlabError(f"name an experiment: {', '.join(experiment.EXPERIMENTS)}")
        values = {k: getattr(args, k) for k in KEYS if getattr(args, k) is not None}
        values.setdefault("data_root", default_data_root())
        values["experiments"] = tuple(args.experiments)
        config = from_mapping(experiment.ExperimentConfig, values)
        run_dir = RunDir.create("experiment", args.out)
        results = run_task(experiment.run, config, run_dir, reporter)
    for name, res in results["experiments"].items():
        rows = [[r["label"], "-" if r["test_mean"] is None
                 else f"{r['test_mean']:.2f} ± {r['test_std']:.2f}%",
                 "-" if r["train_mean"] is None else f"{r['train_mean']:.1f}%", r["seeds"],
                 "-" if r["params"] is None else f"{r['params']:,}"] for r in res["rows"]]
        reporter.table(["setting", "test acc", "train acc", "seeds", "params"], rows,
                       title=name, right_align=["test acc", "train acc", "seeds", "params"])
        reporter.result(f"{name}: {res['verdict']}")
    reporter.result(f"run directory: {results['run_dir']}")
    return 0
