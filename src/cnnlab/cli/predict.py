"""`cnnlab predict`: top-k classes of photos from a fine-tuned run or an ImageNet model."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_quiet

DESCRIPTION = """\
Classify photos with a model cnnlab fine-tuned (give its run directory) or with any pretrained
ImageNet model (give its name), and print each photo's top-k classes with probabilities.

MODEL:
  runs/finetune/20250101-120000   a `cnnlab finetune` run (its model.json + model.safetensors;
                                  for a --compare run, one of its freeze/ or finetune/ folders)
  efficientnet_lite0              a registry model with its ImageNet weights (`cnnlab models
                                  --pretrained` lists those available here)

Each IMAGE is classified; each DIR is walked (sorted, sub-folders included) and streamed in
batches, so results appear as they are computed. Files that cannot be read are listed with the
reason and skipped; the exit status is 2 only when no photo could be classified.

Output: one line per photo (file, then class probability% ...), or with --json one JSON object
per line: {"file": ..., "top": [{"class": ..., "probability": ..., "index": ...}]} or {"file":
..., "error": ...}.

--explain also draws each photo's top class's class-activation map (Grad-CAM, as `cnnlab
explain` draws it; one forward and backward pass per photo, about 0.3 s for Lite0 on one CPU
core) into a run directory (--out, default runs/predict/<timestamp>): cams/*.jpg, results.json
and report.md / report.html, the photos with their top-k and the map; each line (or JSON
record, as "cam") names its map.

Examples:
  cnnlab predict runs/finetune/20250101-120000 photo.jpg
  cnnlab predict efficientnet_lite0 photos/ --top-k 3 --json > predictions.jsonl
  cnnlab predict runs/finetune/20250101-120000 test_photos/ --explain --out runs/seen
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k classes of photos from a fine-tuned run or an ImageNet model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                   help="finetune run directory, or a pretrained model name")
    p.add_argument("inputs", metavar="IMAGE|DIR", nargs="+", help="photos and/or folders")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="classes per photo (the run's k; 5 for ImageNet models)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--weights", metavar="FILE", help="ImageNet weights file (model names only)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="photos per forward pass (16)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding processes (2)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run (auto)")
    p.add_argument("--explain", action="store_true",
                   help="draw each photo's top-class Grad-CAM map; writes a run directory "
                   "with the maps and a report")
    p.add_argument("--out", metavar="DIR",
                   help="--explain: run directory (default: runs/predict/<timestamp>)")
    add_quiet(p)
    p.set_defaults(run=run)


def _safe(text: str) -> str:
    """A user's file or class name for a terminal: control characters (escape sequences,
    carriage returns) shown as '?', so a crafted name cannot rewrite the screen."""
    return "".join(c if c.isprintable() else "?" for c in text)


def run(args: argparse.Namespace) -> int:

    from cnnlab.errors import CnnlabError
    from cnnlab.progress import Reporter
    from cnnlab.tasks.predict import PredictConfig, predict, predict_explained

    config = PredictConfig(model=args.model, inputs=tuple(args.inputs), top_k=args.top_k,
                           weights=args.weights, batch_size=args.batch_size,
                           workers=args.workers, device=args.device, explain=args.explain)
    reporter = Reporter(quiet=args.quiet)
    if args.out is not None and not args.explain:
        raise CnnlabError("--out is where --explain puts its maps; give --explain with it")
    run_dir = None
    if config.explain:
        from cnnlab.dist import open_run

        run_dir = open_run("predict", args.out)
        records = predict_explained(config, reporter, run_dir)
    else:
        records = predict(config, reporter)
    try:
        n_ok, n_bad = _print(records, args, reporter, run_dir)
        reporter.log(f"predict: {n_ok} photo(s) classified, {n_bad} skipped")
        if n_ok == 0:
            raise CnnlabError(f"no photo could be classified ({n_bad} skipped)")
    except BaseException:
        if run_dir is not None:
            run_dir.remove_if_empty()  # a refused run leaves no directory
        raise
    if run_dir is not None:
        reporter.result(f"maps and report: {run_dir.file('report.html')}")
    return 0


def _print(records, args: argparse.Namespace, reporter, run_dir) -> tuple[int, int]:
    import json

    n_ok = n_bad = 0
    for record in records:
        if run_dir is not None and record.get("cam"):
            record = {**record, "cam": str(run_dir.file(record["cam"]))}
        if "error" in record:
            n_bad += 1
        else:
            n_ok += 1
        if args.json:
            reporter.result(json.dumps(record))
        elif "error" in record:
            reporter.result(f"{_safe(record['file'])}  skipped: {_safe(record['error'])}")
        else:
            guesses = "  ".join(f"{_safe(g['class'])} {100 * g['probability']:.1f}%"
                                for g in record["top"])
            cam = f"  map: {_safe(record['cam'])}" if record.get("cam") else ""
            reporter.result(f"{_safe(record['file'])}  {guesses}{cam}")
    return n_ok, n_bad
