"""`cnnlab lab`: both course labs end to end, into one directory and one report."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_quiet

DESCRIPTION = """\
Run both course labs end to end: every step is one of cnnlab's commands with the lab's
settings, run into OUT/<step>/, and one report (OUT/report.html, OUT/report.md) puts cnnlab's
numbers beside the labs' own.

Steps (in order):
  concepts        conv vs locally-connected vs dense for AlexNet's layers   (cnnlab params)
  alexnet         AlexNet's parameters layer by layer; the ResNet family    (cnnlab params)
  alexnet-groups  AlexNet as published on two GPUs                          (cnnlab params)
  evaluate        pretrained CNNs on DATA/imagenet-samples                  (cnnlab evaluate)
  finetune        freeze vs fine-tune a pretrained CNN on DATA/hymenoptera   (cnnlab finetune)
  train           plain CNN vs ResNet-18 vs fast net on CIFAR-10            (cnnlab train)
  charrnn         an RNN learns hello/green/start; completes h g s e t      (cnnlab charrnn)
  experiments     Lab B's claims on depth and ResNet, with data             (cnnlab experiment)

Re-running with the same --out continues the lab: a step whose settings and input files are
unchanged is not run again (--force STEP runs it anyway), and a step that was interrupted is run
again from its start. A step whose data or weights are missing is skipped with the reason and
the rest still runs.

Exit status: 0 every step ran; 3 a step was skipped; 1 a step failed; 2 a bad option.

Examples:
  cnnlab lab                                  # data from ../shared/data (or $CNNLAB_DATA)
  cnnlab lab --quick --out runs/lab-quick     # small subsets: minutes
  cnnlab lab --budget 40                      # twice the default: tighter intervals
  cnnlab lab --only evaluate --force evaluate
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="both course labs end to end, with one report",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", metavar="DIR",
                   help="folder with imagenet-samples/, hymenoptera/, cifar10/ "
                        "(default: $CNNLAB_DATA or ../shared/data)")
    p.add_argument("--out", metavar="DIR", default="runs/lab",
                   help="lab directory; an earlier lab's directory is continued (runs/lab)")
    p.add_argument("--quick", action="store_true",
                   help="small subsets and few epochs, so the whole lab takes minutes")
    for flag, what in (("only", "run only these steps"), ("skip", "leave these steps out"),
                       ("force", "run these steps even when their results are up to date")):
        p.add_argument(f"--{flag}", nargs="+", default=[], metavar="STEP", help=what)
    p.add_argument("--finetune-data", metavar="DIR",
                   help="photos for the transfer-learning step (default: DATA/hymenoptera)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="minutes for the whole lab (not with --quick): the training steps "
                        "(train, experiments) share what the other steps leave, so more "
                        "minutes buy longer training and more seeds, i.e. tighter intervals, "
                        "in the same lab (default: the plan that fits 20 minutes on a 2-core "
                        "machine, install included)")
    p.add_argument("--precision", choices=["fp32", "auto"],
                   help="fp32: every step in fp32 (sets CNNLAB_PRECISION=fp32 for them), to time "
                        "the lab as on a CPU without native bf16; auto: each step's own choice "
                        "(default: as $CNNLAB_PRECISION says, else auto)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip report.md / report.html")
    add_quiet(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.api import lab
    from cnnlab.progress import Reporter

    result = lab(data_root=args.data_root, out=args.out, quick=args.quick, only=args.only,
                 skip=args.skip, force=args.force, finetune_data=args.finetune_data,
                 budget=args.budget, precision=args.precision, report=args.report,
                 quiet=args.quiet)
    reporter = Reporter(quiet=args.quiet)
    reporter.table(["step", "status", "seconds", "note"],
                   [[r["step"], r["status"] or "-",
                     "-" if r["seconds"] is None else f"{r['seconds']:.0f}", r["note"]]
                    for r in result.rows], right_align=["seconds"])
    if args.report:
        reporter.result(f"report: {result.run_dir / 'report.html'}")
    return result.exit_status
