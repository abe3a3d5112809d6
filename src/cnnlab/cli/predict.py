"""`cnnlab predict`: top-k classes of photos from a fine-tuned run or an ImageNet model."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_quiet, print_run_paths

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
explain` draws it; for EfficientNet-Lite on ONNX Runtime from the scoring pass's own activations
of its CAM layer, else one forward pass per photo and a backward pass through the head, about
0.06 s for Lite0 on one CPU core) into a run directory (--out, default
runs/predict/<timestamp>): cams/*.jpg, results.json and report.md / report.html, the photos
with their top-k and the map; each line (or JSON record, as "cam") names its map.

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
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime", "openvino"],
                   default="auto",
                   help="the forward passes' engine: onnxruntime runs the same weights exported "
                   "to ONNX (once, cached, checked against PyTorch); openvino runs that graph on "
                   "OpenVINO (optional: pip install openvino); auto: onnxruntime on the CPU, "
                   "torch on a GPU (auto)")
    p.add_argument("--out", metavar="DIR",
                   help="--explain: run directory (default: runs/predict/<timestamp>)")
    add_quiet(p)
    p.set_defaults(run=run)


def _safe(text: str) -> str:
    """A user's file or class name for a terminal: control characters (escape sequences,
    carriage returns) shown as '?', so a crafted name cannot rewrite the screen."""
    return "".join(c if c.isprintable() else "?" for c in text)


def run(args: argparse.Namespace) -> int:
    import sys

    from cnnlab.api import predict
    from cnnlab.progress import Reporter

    reporter = Reporter(quiet=args.quiet)

    def show(record: dict) -> None:  # each photo as soon as its batch is done
        reporter.result(_line(record, args.json))

    result = predict(args.model, args.inputs, top_k=args.top_k, weights=args.weights,
                     batch_size=args.batch_size, workers=args.workers, device=args.device,
                     explain=args.explain, engine=args.engine, out=args.out, quiet=args.quiet,
                     on_record=show)
    if result.run_dir is not None:
        # With --json, standard output stays one JSON object per line.
        print_run_paths(Reporter(quiet=args.quiet, out=sys.stderr) if args.json else reporter,
                        str(result.run_dir))
    return 0


def _line(record: dict, as_json: bool) -> str:
    """A record of cnnlab.predict as the line printed: JSON, or file, classes and map."""
    import json

    if as_json:
        return json.dumps(record)
    if "error" in record:
        return f"{_safe(record['file'])}  skipped: {_safe(record['error'])}"
    guesses = "  ".join(f"{_safe(g['class'])} {100 * g['probability']:.1f}%"
                        for g in record["top"])
    cam = f"  map: {_safe(record['cam'])}" if record.get("cam") else ""
    return f"{_safe(record['file'])}  {guesses}{cam}"
