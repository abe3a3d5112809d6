"""`cnnlab models`: every registered model, its source, size and where its weights are."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli.common import HelpFormatter

DESCRIPTION = """\
List every registered model: who defines it (cnnlab, torchvision, timm), its parameter count,
and whether pretrained ImageNet weights can be loaded on this machine right now and from where:
  hub cache       $TORCH_HOME/hub/checkpoints/<official file name> (torch's own cache)
  package NAME    a pip package that ships the file (EfficientNet-Lite0/1/2)
  download only   not here; fetched on first use where the network allows
  -               the model has no pretrained weights in cnnlab
Any timm architecture also works as timm/<name>, e.g. timm/convnext_tiny.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list registered models, their size and weight availability",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--source", choices=["cnnlab", "torchvision", "timm"], help="only this source")
    p.add_argument("--pretrained", action="store_true",
                   help="only models whose ImageNet weights are here: the backbones `cnnlab "
                   "finetune` and the models `cnnlab predict` can use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import list_models
    from cnnlab.progress import Reporter

    rows = list_models(args.source, pretrained=args.pretrained).rows
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    Reporter().table(
        ["model", "source", "params", "pretrained weights"],
        [(r["name"], r["source"], f"{r['params']:,}", r["weights"]) for r in rows],
        right_align=["params"],
    )
    return 0
