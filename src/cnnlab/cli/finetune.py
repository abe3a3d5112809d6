"""`cnnlab finetune`: transfer a pretrained ImageNet CNN to your own labelled photos."""

from __future__ import annotations

import argparse

from cnnlab.api.commands import FINETUNE_RESUME
from cnnlab.cli.common import add_output_options, print_run_paths
from cnnlab.cli.resume import add_resume_option, refuse_changes

DESCRIPTION = """\
Teach a pretrained ImageNet CNN your own classes: its last layer is replaced by a new one for
your classes, trained on your photos, and scored once on held-out test photos (used for
no training and no choice).

Data layouts (DATA is a folder):
  DATA/train/<class>/*.jpg  DATA/val/<class>/*  DATA/test/<class>/*   (val may be valid/ or
      validation/; val/ and test/ may also be flat, each file named after its class:
      capacitor_12.jpg, mica_capacitor_3.jpg -- the longest class name followed by _ - space,
      a digit or the end; mica_capacitor_3.jpg is never a capacitor)
  DATA/<class>/*.jpg        one folder, split stratified by --split with --seed
No val/: validation is carved off train/ (--val-fraction). No test/: val/ becomes the held-out
test set and validation is carved off train/, so that the photos scored at the end chose
nothing: validation draws the curves and, with --keep best, chooses the epoch kept (by default
the last epoch is kept). The split is saved as split.json in the run.

Backbone (--model): by default, when the ImageNet weights of more than one backbone are on
this machine (offline: EfficientNet-Lite0/1/2), `auto`: each one's frozen features of the
training photos are scored by cross-validation and the best is kept (the table is in the
report); with one backbone here, or with --weights, efficientnet_lite0.

Strategies:
  freeze    only the new layer trains; the pretrained body is frozen (eval mode). Its features
            are computed once, cached on disk ($CNNLAB_CACHE, default ~/.cache/cnnlab), and a
            re-run costs no backbone pass at all. By default (--head-fit lbfgs) the new layer is
            logistic regression solved to convergence by full-batch L-BFGS, its L2 strength
            chosen by stratified k-fold cross-validation on the train + validation photos, then
            refitted on all of them before the one test measurement: no epochs, no learning
            rate. --head-fit epochs (implied by --epochs or --lr) trains it for epochs instead,
            as before (each epoch costs milliseconds).
  finetune  every layer trains, the body at a tenth of the head's learning rate; BatchNorm
            statistics stay the ImageNet ones (--bn frozen) unless --bn train.
  gradual   the head first, then the body unfrozen stage by stage from the top.
  partial   the body's top stage (--train-stages N) and the head train, on cached activations
            of the frozen early stages for --views fixed views of each training photo (4: the
            photo, its mirror, 2 random crops), starting from the fitted frozen head; the
            validation photos train too, and the last of 10 epochs is kept.
  auto      partial when the train + validation photos are at most 20 per class, else freeze
            (a provisional rule: BENCHMARKS.md, "--strategy auto").
--compare runs freeze and finetune on the same split and puts them side by side.

Test errors come with a Wilson 95% interval: with 24 test photos one photo is 4.2 points.

Defaults of epoch training (how they were chosen: BENCHMARKS.md, "finetune defaults"): AdamW,
batch 32, label smoothing 0.1, weight decay 0.05, one warm-up epoch then a cosine to 0, and the
last epoch's weights kept. freeze --head-fit epochs: lr 1e-3 (Adam's default, the lab's), 30
epochs, no augmentation; finetune: lr 1e-3 with the body at 1e-4, 15 epochs, random resized
crop + flip; gradual: 20 epochs. On hymenoptera and on 20- to 100-photo subsets of it,
frozen-head accuracy moved by about one photo in 153 across lr 1e-3..1e-2 and 10..100 epochs,
so the defaults need no tuning there; keeping the best validation epoch instead (--keep best)
lost 0.6-1.3 points, because a few dozen validation photos rank epochs by noise. Not yet
measured on thousands of photos.

The run directory holds split.json, metrics.jsonl, checkpoints (best, last), results.json (test
top-1 and top-k error: k = 3 for up to 10 classes, else 5; per-class accuracy), predictions.csv,
model.safetensors + model.json (for `cnnlab predict`), curves.png, confusion.png, report.md and
report.html (every misclassified test photo with its top-k and the Grad-CAM maps of the class
predicted and of the true class, cams/*.jpg; --no-explain leaves the maps out).

Examples:
  cnnlab finetune photos/
  cnnlab finetune photos/ --strategy finetune --epochs 20
  cnnlab finetune photos/ --compare --out runs/lab
  cnnlab finetune --resume runs/finetune/20250101-120000 --epochs 40
"""

# Flags that shape a run (config fields of the same name).
RUN_KEYS = ("backbone", "weights", "strategy", "head_fit", "compare", "epochs", "batch_size",
            "optimizer", "lr", "body_lr_ratio", "weight_decay", "momentum", "warmup_epochs",
            "label_smoothing", "augment", "keep", "early_stopping", "bn", "split",
            "val_fraction", "seed", "cache", "top_k", "workers", "draft", "precision",
            "time_limit", "device", "report", "explain", "train_stages", "views", "engine")


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers train,val,test such as 0.6,0.2,0.2, not {text!r}"
        ) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="transfer a pretrained ImageNet CNN to your own labelled photos",
        description=DESCRIPTION,
        # Flags default to None so that a --config file's values are not overridden; the help
        # texts state the real defaults.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", nargs="?", help="folder of labelled photos")
    p.add_argument("-m", "--backbone", "--model", dest="backbone", metavar="BACKBONE",
                   help="pretrained ImageNet model, or auto: the best by cross-validation "
                   "of those whose weights are here (auto when there are several, else "
                   "efficientnet_lite0); `cnnlab models --pretrained` lists them")
    p.add_argument("--weights", metavar="FILE", help="the backbone's ImageNet weights file")
    p.add_argument("--strategy", choices=["freeze", "finetune", "gradual", "partial", "auto"],
                   help="what trains (freeze)")
    p.add_argument("--train-stages", type=int, metavar="N",
                   help="partial: the body's top N stages train on cached activations of the "
                   "others (1)")
    p.add_argument("--views", type=int, metavar="N",
                   help="partial: cached views per training photo: eval, mirror, N-2 random "
                   "crops (4)")
    p.add_argument("--head-fit", choices=["lbfgs", "epochs"],
                   help="freeze: solve the head by L-BFGS with a cross-validated L2, or train "
                   "it for epochs (lbfgs, unless --epochs, --lr, --augment or --no-cache)")
    p.add_argument("--compare", action="store_true", default=None,
                   help="run freeze and finetune on the same split, side by side")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs (freeze 30, finetune 15, gradual 20); with --compare, the "
                        "fine-tuned strategy's (the frozen head is still fitted by L-BFGS)")
    p.add_argument("--batch-size", type=int, metavar="N", help="photos per step (32)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], help="optimiser (adamw)")
    p.add_argument("--lr", type=float, help="head learning rate (adamw 1e-3, sgd 1e-2)")
    p.add_argument("--body-lr-ratio", type=float, metavar="R",
                   help="body learning rate = lr x R, finetune/gradual (0.1)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="weight decay (0.05)")
    p.add_argument("--momentum", type=float, help="SGD momentum, Nesterov (0.9)")
    p.add_argument("--warmup-epochs", type=float, metavar="E", help="linear warm-up (1)")
    p.add_argument("--label-smoothing", type=float, metavar="S", help="(0.1)")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random resized crop + flip (default for finetune, gradual)")
    aug.add_argument("--no-augment", dest="augment", action="store_false",
                     help="no augmentation (default for freeze: allows the feature cache)")
    p.add_argument("--keep", choices=["last", "best"],
                   help="weights kept: the last epoch's, or the epoch with the lowest "
                   "validation loss (last)")
    p.add_argument("--early-stopping", type=int, metavar="N",
                   help="with --keep best: stop after N epochs without a lower validation "
                   "loss; 0 = off (0)")
    p.add_argument("--bn", choices=["frozen", "train"],
                   help="BatchNorm of a training body: ImageNet statistics kept (frozen) or "
                   "batch statistics (train) (frozen)")
    p.add_argument("--split", type=_fractions, metavar="TRAIN,VAL,TEST",
                   help="one-folder layout: shares of each class (0.6,0.2,0.2)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="share of train/ held out for validation when there is no val/ to "
                   "use; 0 = no validation split (0.2)")
    p.add_argument("--seed", type=int, help="split, shuffling and augmentation (0)")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="freeze: re-run the frozen body on every batch, as the lab did (slow)")
    p.add_argument("--top-k", type=int, metavar="K", help="k of the top-k error (3 or 5)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (2)")
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="the frozen body's feature passes (the head's features, --model auto's "
                   "scoring): onnxruntime runs the same weights exported to ONNX (once, cached, "
                   "checked against PyTorch); openvino runs that graph on OpenVINO (optional: pip "
                   "install openvino); auto: onnxruntime on the CPU, torch on a GPU (auto)")
    p.add_argument("--no-draft", dest="draft", action="store_false", default=None,
                   help="always decode JPEGs at full size")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="training in fp32, in bf16 autocast, or auto: bf16 where the CPU has "
                   "native bf16 (avx512_bf16/amx_bf16) or the GPU supports it, else fp32; the "
                   "choice and the reason land in environment.json (fp32)")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help="seconds of training, then stop cleanly (resume later)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (auto)")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="skip curves, confusion matrix and report.md / report.html")
    p.add_argument("--no-explain", dest="explain", action="store_false", default=None,
                   help="no class-activation maps of the misclassified test photos (each "
                   "costs a forward pass and a backward pass through the head, about 0.07 s per "
                   "photo for Lite0 on one CPU core)")
    p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    add_output_options(p)
    # --time-limit is this session's training time: a resume does not inherit the last one.
    add_resume_option(p, allowed=FINETUNE_RESUME.allowed,
                      per_invocation=FINETUNE_RESUME.per_invocation, metavar="RUN_DIR",
                      help="continue this run (its data, split and model) up to --epochs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import finetune
    from cnnlab.progress import Reporter

    if args.resume:
        refuse_changes(args)  # by flag (--epochs), before the API's by keyword (epochs=)
    result = finetune(args.data, config=args.config, out=args.out, quiet=args.quiet,
                      resume=args.resume, **{k: getattr(args, k) for k in RUN_KEYS})
    if result is None:  # a torchrun rank other than 0
        return 0
    print_results(result, Reporter(quiet=args.quiet))
    return 0


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}%"


def print_results(result, reporter) -> None:
    """The API's rows (report/finetune.summary_rows) as the terminal's table, then the run."""
    from cnnlab.report.finetune import validation

    results = result.results
    choice = results.get("backbone_choice")
    if choice:
        reporter.table(
            ["backbone", "features", "CV folds", "CV accuracy", "CV log-loss", "time", ""],
            [(c["backbone"], c["features"], c["folds"], _pct(c["cv_accuracy"]),
              "-" if c["cv_log_loss"] is None else f"{c['cv_log_loss']:.3f}",
              f"{c['seconds']:.1f} s", "chosen" if c.get("chosen") else "")
             for c in choice],
            title="--model auto: frozen features scored on the train + validation photos",
            right_align=["features", "CV folds", "CV accuracy", "CV log-loss", "time"],
        )
    rows = result.rows
    k = rows[0]["top_k"]
    reporter.table(
        ["strategy", "epochs (kept)", "train acc", "val acc", "test top-1 err (95% CI)",
         f"test top-{k} err", "time"],
        [(r["strategy"], _epochs(r), _pct(r["train_accuracy"]), validation(r),
          _with_interval(r["top1_error"], r.get("top1_interval")), _pct(r["topk_error"]),
          f"{r['seconds']:.1f} s") for r in rows],
        right_align=["epochs (kept)", "train acc", "val acc", "test top-1 err (95% CI)",
                     f"test top-{k} err", "time"],
    )
    reporter.result(f"test error: measured once, on {rows[0]['n_test']} held-out photos "
                    f"used for no training and no choice; backbone {results['backbone']}")
    print_run_paths(reporter, results["run_dir"])


def _epochs(row: dict) -> str:
    if row.get("head_fit") == "lbfgs":
        return "L-BFGS"
    return f"{row['epochs']} ({row['selected_epoch']})"


def _with_interval(error, interval) -> str:
    """'20.8% (9.2-40.5)': the error and its Wilson 95% interval, in percent."""
    if error is None:
        return "-"
    if not interval:
        return _pct(error)
    return f"{error:.1f}% ({interval['low']:.1f}-{interval['high']:.1f})"
