"""`cnnlab params`: the architecture inspector."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import HelpFormatter, add_output_options

DESCRIPTION = """\
Per-layer table of any registered model: output shape, kernel/stride, weights, biases,
parameters and MACs, with totals and the trainable/frozen split.
Convention: MACs are multiply-accumulates for ONE input; FLOPs = 2 x MACs.

examples:
  cnnlab params alexnet-paper                      AlexNet as published (62,378,344 params)
  cnnlab params alexnet-paper --groups 2           the paper's two-GPU connectivity (60,965,224)
  cnnlab params resnet18 resnet34 resnet50 resnet101 resnet152 --summary
  cnnlab params resnet50 --depth 1                 one row per top-level block
  cnnlab params --layer "conv 3x224x224 -> 96 k11 s4 p2"
                                                   one conv vs locally-connected vs dense layer
  cnnlab params alexnet-paper --sharing            the same comparison for every conv layer
  cnnlab params --sharing --demo photo.jpg         shift the photo: conv maps shift with it,
                                                   locally-connected and dense maps do not
  cnnlab params timm/convnext_tiny --input 3x288x288 --json

layer syntax: conv CxHxW -> COUT kK [sS] [pP] [gG]  (kernel, stride, padding, groups)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "params",
        help="per-layer parameters, MACs and shapes; weight sharing in numbers",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="registered model names")
    p.add_argument("--input", metavar="CxHxW", help="input shape (default: the model's own)")
    p.add_argument("--depth", type=int, metavar="N", help="group layers N module levels deep")
    p.add_argument("--summary", action="store_true", help="one row per model (depth, blocks...)")
    p.add_argument(
        "--sharing", action="store_true", help="conv vs locally-connected vs dense, every conv"
    )
    p.add_argument("--layer", metavar="SPEC", help="compare one conv layer, e.g. "
                   "'conv 3x224x224 -> 96 k11 s4 p2'")
    p.add_argument("--demo", metavar="IMAGE", help="shift this photo by a few pixels and "
                   "measure whose maps shift with it: conv vs locally-connected vs dense "
                   "(shift_demo.png)")
    p.add_argument("--groups", type=int, help="alexnet-paper: 1 (all-to-all) or 2 (two GPUs)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of tables")
    add_output_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from cnnlab.api import params
    from cnnlab.progress import Reporter
    from cnnlab.report.params import render

    result = params(args.models, input=args.input, depth=args.depth, summary=args.summary,
                    sharing=args.sharing, layer=args.layer, demo=args.demo, groups=args.groups,
                    out=args.out, quiet=args.quiet)
    reporter = Reporter(quiet=args.quiet)
    if args.json:
        print(json.dumps(result.results, indent=2))
    else:
        render(result.results, args.summary, reporter)
    reporter.log(f"saved {result.run_dir / 'results.json'}")
    return 0
