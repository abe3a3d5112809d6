"""`cnnlab evaluate`: score pretrained ImageNet CNNs on a labelled photo folder, side by side."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_output_options, print_run_paths

DESCRIPTION = """\
Run pretrained ImageNet CNNs on a folder of labelled photos and report each model's top-1 and
top-5 error side by side, with every image's top-k predictions.

Labels (--labels auto picks the first that applies):
  folders   PATH/<label>/*.jpg
  csv       rows 'file,label' in PATH/labels.csv or --csv FILE (paths relative to PATH)
  filename  the file name itself: volcano.jpg, n01440764_tench.JPEG, great_white_shark_2.png
A label is an ImageNet class name or synonym ("tench", "Tinca tinca"), or a WordNet id
(n01440764). Labels that match no class, or several, are all reported before any model runs;
--skip-unknown scores the rest. --match prefix scores as the old lab did: a prediction is
right when its class line ("tench, Tinca tinca") starts with the label, case-sensitively, so
"bee" accepts bee, bee eater, beer bottle and beer glass.

Models: any number of -m (default: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2,
whose weights ship as pip packages). torchvision models (alexnet, googlenet, resnet18, ...) and
timm/<arch> need their weights in $TORCH_HOME/hub/checkpoints or --weights MODEL=FILE;
`cnnlab models --pretrained` lists what is available here. Each model uses the preprocessing
(input size, resize/crop ratio, interpolation, mean/std) of its own weights.

Under torchrun the folder is shared across ranks and rank 0 writes the results:
  torchrun --standalone --nproc_per_node=2 -m cnnlab evaluate PATH

The run directory holds results.json, predictions.csv, metrics.jsonl, report.md and
report.html (every image some model gets wrong, with each model's top-5 and, for each model
that got it wrong, the Grad-CAM maps of the class it predicted and of the true class: where in
the photo each model found its evidence; cams/*.jpg). The maps are drawn after each model's
scoring pass, 4 mistakes per forward pass, the backward pass through the head only: about
0.07 s per mistake of EfficientNet-Lite0 on one CPU core (0.19 s before issue 27); on the 250
sample photos (26 mistakes) evaluate did 1.27x the work (6.5 -> 8.2 CPU-seconds, scoring on
ONNX Runtime; BENCHMARKS.md, "CAMs: cost in evaluate").
--no-explain leaves them out; --explain-limit N draws only each model's first N mistakes.
Under torchrun, rank 0 draws them.

Examples:
  cnnlab evaluate photos/
  cnnlab evaluate photos/ -m resnet18 -m googlenet --weights resnet18=~/resnet18.pth
  cnnlab evaluate photos/ --match prefix --skip-unknown --out runs/lab
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score pretrained ImageNet CNNs on a labelled photo folder",
        description=DESCRIPTION,
        # Not common.HelpFormatter: every flag defaults to None here (so that a --config file's
        # values are not overridden), and "(default: None)" would hide the real defaults, which
        # the help texts state.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="folder of labelled photos")
    p.add_argument(
        "-m", "--model", dest="models", action="append", metavar="MODEL",
        help="model to score (repeatable; default: efficientnet_lite0/1/2)",
    )
    p.add_argument(
        "--weights", action="append", metavar="[MODEL=]FILE",
        help="explicit weights file for a model (repeatable; MODEL= may be left out when "
        "there is one model)",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="predictions kept per image (5)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (8)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decoders: worker processes, or threads when every model runs on "
                        "ONNX Runtime; 0 decodes in the main thread (2)")
    p.add_argument("--labels", choices=["auto", "folders", "csv", "filename"],
                   help="where labels come from (auto)")
    p.add_argument("--csv", metavar="FILE", help="CSV of 'file,label' rows")
    p.add_argument("--match", choices=["synonym", "prefix"],
                   help="label matching rule: synonym (one exact class; default) or prefix (the "
                   "lab's rule: every class whose line starts with the label is right)")
    p.add_argument("--skip-unknown", action="store_true", default=None,
                   help="skip images whose label matches no single class instead of failing")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (by path)")
    p.add_argument("--no-draft", dest="draft", action="store_false", default=None,
                   help="always decode JPEGs at full size (slower; pixels as a full decode)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   default=None, help="keep NCHW memory format")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="skip report.md / report.html")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (auto)")
    p.add_argument("--no-explain", dest="explain", action="store_false", default=None,
                   help="no class-activation maps of the mistakes (saves about 0.07 s per "
                   "mistake and model on one CPU core)")
    p.add_argument("--explain-limit", type=int, metavar="N",
                   help="maps of each model's first N mistakes only (all)")
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="the forward passes' engine: onnxruntime runs the same weights exported "
                   "to ONNX (once, cached, checked against PyTorch); openvino runs that graph on "
                   "OpenVINO (optional: pip install openvino); auto: onnxruntime on the CPU, "
                   "torch on a GPU (auto)")
    p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    add_output_options(p)
    p.set_defaults(run=run)


KEYS = ("top_k", "batch_size", "workers", "labels", "csv", "match", "skip_unknown", "limit",
        "draft", "channels_last", "report", "device", "explain", "explain_limit", "engine")


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import evaluate
    from cnnlab.progress import Reporter

    result = evaluate(args.path, models=args.models, weights=args.weights, config=args.config,
                      out=args.out, quiet=args.quiet, **{k: getattr(args, k) for k in KEYS})
    if result is None:  # a torchrun rank other than 0: rank 0 prints
        return 0
    print_table(result, Reporter(quiet=args.quiet))
    return 0


def print_table(result, reporter) -> None:
    """The API's rows (report/evaluate.summary_rows) as the terminal's table, then the run."""
    def pct(v):
        return "-" if v is None else f"{v:.1f}%"

    reporter.table(
        ["model", "params", "top-1 err", "top-5 err", "images/s", "scored", "unreadable"],
        [(r["model"], f"{r['params']:,}", pct(r["top1_error"]), pct(r["top5_error"]),
          "-" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}",
          r["scored"], r["unreadable"]) for r in result.rows],
        right_align=["params", "top-1 err", "top-5 err", "images/s", "scored", "unreadable"],
    )
    results = result.results
    ex = results.get("explanations")
    if ex and ex["cams"]:
        reporter.result(f"{ex['method_name']} maps of {len(ex['cams'])} mistake(s) in "
                        f"{ex['seconds']:.1f} s ({ex['seconds_per_photo']:.2f} s each; "
                        "--no-explain leaves them out)")
    n_skipped = len(results["skipped"])
    reporter.result(
        f"{results['n_labelled']} labelled images"
        + (f", {n_skipped} file(s) skipped (reasons in results.json)" if n_skipped else "")
    )
    print_run_paths(reporter, results["run_dir"])
