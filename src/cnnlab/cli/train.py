"""`cnnlab train`: image classifiers from scratch on CIFAR-10 (or alike), compared side by side."""

from __future__ import annotations

import argparse

from cnnlab.api.commands import TRAIN_RESUME
from cnnlab.cli.common import add_output_options, print_run_paths
from cnnlab.cli.resume import add_resume_option, refuse_changes

DESCRIPTION = """\
Train image classifiers from scratch and compare them: test accuracy (mean ± the half-width of
its 95% interval over seeds), parameters, MACs, training time and images/s in one table, and
the curves in one plot.

DATA: a CIFAR-style zip (train/<class>/*.jpg, test/<class>/*.jpg), such a folder, or the
official cifar-10-batches-py folder. It is decoded once and cached under ~/.cache/cnnlab
($CNNLAB_CACHE), keyed by its content.

Models (-m, repeatable; default fast-cifar): simple-cnn (the lab's plain CNN), resnet18
(torchvision's, as the lab used it), resnet18-cifar (3x3 stem), resnet20/32/44/56 and
plain20/32/44/56 (He et al. 2016), fast-cifar (airbench-style, sized for a CPU).

Recipes:
  fast  cnnlab's: SGD-Nesterov, label smoothing, triangular LR schedule, flip + translate
        augmentation on whole batches, lookahead averaging, flip/translate test-time
        augmentation, bf16 where the CPU has it (after KellerJordan/cifar10-airbench)
  lab   the course lab's own, per model: simple-cnn Adam 1e-3 batch 32, resnet18 Adam 0.01
        batch 16, 5 epochs, Normalize(0.5, 0.5), no augmentation
--epochs / --batch-size / --lr override the recipe.

Precision: --precision auto (default) uses bf16 autocast where the CPU has native bf16
(avx512_bf16 or amx_bf16 in its flags) or the GPU supports it, fp32 elsewhere; the choice and
the reason land in each run's environment.json.

Every (model, seed) trains into OUT/<model>-seed<k>/ with a checkpoint per epoch;
--resume OUT continues an interrupted run (also after kill -9) exactly where it stopped.
Under torchrun the same command trains with DistributedDataParallel:
  torchrun --standalone --nproc_per_node=2 -m cnnlab train DATA -m resnet20

Examples:
  cnnlab train ../shared/data/cifar10/cifar10-jpg.zip
  cnnlab train DATA -m simple-cnn -m resnet18 --recipe lab
  cnnlab train DATA -m simple-cnn -m resnet18-cifar -m fast-cifar --seeds 3 --epochs 10
  cnnlab train DATA -m simple-cnn -m resnet18 -m fast-cifar --seeds 3 --budget 6   # 40 s each
  cnnlab train DATA --budget 3     # the best fast-cifar for 3 minutes (width chosen by timing)
"""

KEYS = ("epochs", "batch_size", "lr", "seeds", "seed", "precision", "limit_per_class",
        "val_fraction", "time_limit", "budget", "calibrate", "eval_every", "threads", "device",
        "deterministic")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train image classifiers from scratch and compare them",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="CIFAR-style zip or folder (not with --resume)")
    p.add_argument("-m", "--model", dest="models", action="append", metavar="MODEL",
                   help="model to train (repeatable; default fast-cifar)")
    p.add_argument("--recipe", help="fast (default) or lab; see above")
    p.add_argument("--epochs", type=float, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's global batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--seeds", type=int, help="train each model with this many seeds (1)")
    p.add_argument("--seed", type=int, help="first seed (0)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="(auto)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="only the first N images of each class (train and test): quick runs")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="hold out this share of train as validation; the epoch of the best "
                   "validation accuracy is the one tested (results.json: tested_epoch)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="per (model, seed): stop after the epoch that passes it")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="minutes for the whole run (training and test of every model and "
                        "seed, shared equally): each times a few steps here and trains as "
                        "many as fit, its schedule stretched over them (not with --epochs). "
                        "The default fast-cifar is first calibrated: a few steps of its candidate "
                        "shapes (an eighth, a quarter with progressive resizing, a quarter, "
                        "the full width) are timed, and the shape expected to "
                        "reach the higher accuracy in the minutes (from accuracy-per-epoch "
                        "curves measured on CIFAR-10, BENCHMARKS.md) is trained; calibration "
                        "time counts against the budget, data loading does not")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", default=None,
                   help="with --budget, train fast-cifar at its full width whatever the "
                        "minutes")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="epochs between the curves' test-accuracy points (1)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(auto)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="bit-reproducible kernels (slower)")
    p.add_argument("--no-report", dest="report", action="store_false", default=None)
    p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    add_output_options(p)
    # Finished (model, seed) runs are kept on resume, so more --epochs would change nothing
    # there and a different schedule mid-run elsewhere: only how long and on how many threads.
    add_resume_option(p, allowed=TRAIN_RESUME.allowed, help="continue an interrupted run directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import train
    from cnnlab.progress import Reporter
    from cnnlab.report.train import accuracy_text, budget_lines

    if args.resume:
        refuse_changes(args)
    result = train(args.data, models=args.models, recipe=args.recipe, report=args.report,
                   config=args.config, out=args.out, quiet=args.quiet, resume=args.resume,
                   **{k: getattr(args, k) for k in KEYS})
    if result is None:  # a torchrun rank other than 0: rank 0 prints
        return 0
    reporter = Reporter(quiet=args.quiet)
    rows = [[m["model"], m["recipe"], "-" if m["lr"] is None else f"{m['lr']:g}",
             accuracy_text(result.results, m), m["seeds"],
             f"{m['params']:,}", f"{(m['macs'] or 0) / 1e6:.1f} M", f"{m['epochs_trained']:.3g}",
             f"{m['train_seconds']:.0f}", f"{m['images_per_second']:.0f}", m["precision"]]
            for m in result.rows]
    acc = "test acc ± 95% CI"
    reporter.table(["model", "recipe", "lr", acc, "seeds", "params", "MACs", "epochs",
                    "train s", "img/s", "precision"], rows,
                   right_align=["lr", acc, "seeds", "params", "MACs", "epochs", "train s",
                                "img/s"])
    for line in budget_lines(result.results):
        reporter.result(line)
    print_run_paths(reporter, result.results["run_dir"])
    return 0
