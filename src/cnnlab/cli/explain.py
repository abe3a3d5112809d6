"""`cnnlab explain`: class-activation maps, first-layer filters and feature maps, as pictures."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_output_options, print_run_paths

DESCRIPTION = """\
See what a CNN looks at. For each photo, the model's top-k classes, each with a class-activation
map (CAM) over the photo as the model saw it (resized and cropped): where the evidence for that
class lies. PNGs in the run directory's cams/, and report.md / report.html beside them.

MODEL (-m): a registry model with its ImageNet weights (default efficientnet_lite0; `cnnlab
models --pretrained` lists those available here), or a `cnnlab finetune` run directory (its own
classes), loaded as `cnnlab predict` loads it.

Methods (--method), from the grad-cam package (pytorch-grad-cam):
  gradcam    Grad-CAM (default): channel weights = mean gradient of the class score; one forward
             and one backward pass per photo
  gradcam++  Grad-CAM++: weights from second/third-order gradient terms; same cost
  scorecam   Score-CAM: weights = the class score of the photo masked by each channel; one
             forward pass per channel and class (Lite0: 1,280 per class; minutes per photo on a
             CPU)
  eigencam   EigenCAM: the first principal component of the layer's maps; one forward pass,
             and the same map for every class

Layer: the last convolutional stage, from the model registry (Lite: bn2, ResNet: layer4,
GoogLeNet: inception5b, AlexNet/VGG: the last ReLU of features, MobileNet: features.-1); --layer
NAME picks another module (dotted path as `cnnlab params MODEL` lists it; a negative number
counts children from the end: features.-2).

Also:
  --filters MODEL   the first convolution's filters as an image grid (filters.png)
  --maps IMAGE      a handful of channels after each stage of -m MODEL, each map's size written
                    on it (maps.png): resolution falls and channels rise through the net

Examples:
  cnnlab explain photos/ -m efficientnet_lite0 --top-k 3
  cnnlab explain photo.jpg -m runs/finetune/20250101-120000 --method gradcam++
  cnnlab explain --filters efficientnet_lite0 --maps photo.jpg
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="class-activation maps of photos; first-layer filters; feature maps per stage",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", metavar="IMAGE|DIR", nargs="*", help="photos and/or folders")
    p.add_argument("-m", "--model", default="efficientnet_lite0", metavar="MODEL|RUN",
                   help="registry model or finetune run directory (efficientnet_lite0)")
    p.add_argument("--method", default="gradcam",
                   choices=["gradcam", "gradcam++", "scorecam", "eigencam"],
                   help="CAM method (gradcam)")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="classes explained per photo (3)")
    p.add_argument("--layer", metavar="NAME", help="module whose maps the CAM weighs "
                   "(default: the model's last convolutional stage)")
    p.add_argument("--weights", metavar="FILE", help="ImageNet weights file (model names only)")
    p.add_argument("--filters", metavar="MODEL", help="draw this model's first-layer filters")
    p.add_argument("--maps", metavar="IMAGE", help="draw -m MODEL's feature maps of this photo")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N photos")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run (auto)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip report.md / report.html")
    add_output_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import explain
    from cnnlab.cli.predict import _safe
    from cnnlab.progress import Reporter

    result = explain(args.inputs, model=args.model, method=args.method, top_k=args.top_k,
                     layer=args.layer, weights=args.weights, filters=args.filters,
                     maps=args.maps, limit=args.limit, device=args.device, report=args.report,
                     out=args.out, quiet=args.quiet)
    reporter = Reporter(quiet=args.quiet)
    results, run_dir = result.results, result.run_dir
    if results["photos"]:
        reporter.result(f"{results['method_name']} on {_safe(results['model'])} layer "
                        f"{_safe(results['layer'])} "
                        f"({'x'.join(map(str, results['layer_shape']))} maps)")
    for s in results["skipped"]:
        reporter.result(f"{_safe(s['file'])}  skipped: {_safe(s['error'])}")
    for row in result.rows:  # report/explain.summary_rows: one per photo and class
        if row["rank"] == 1:  # a photo's first class: its name above its classes
            reporter.result(_safe(row["file"]))
        reporter.result(f"  {row['rank']}. {_safe(row['class'])} "
                        f"{100 * row['probability']:.1f}%  {run_dir / row['cam']}")
    if results["photos"]:
        reporter.result(f"{results['seconds_per_photo']:.2f} s per photo")
    for part in ("filters", "maps"):
        if results[part]:
            reporter.result(f"{part}: {run_dir / results[part]['figure']}")
    if results["maps"]:
        for s in results["maps"]["stages"]:
            reporter.result(f"  {_safe(s['name'])}: {'x'.join(map(str, s['shape']))}")
    print_run_paths(reporter, str(run_dir))
    return 0
