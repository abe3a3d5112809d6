"""The `cnnlab` command line: one thin module per subcommand.

Each module in `COMMANDS` defines `add_parser(subparsers)` (arguments only, no heavy imports so
`--help` is instant) and `run(args) -> int`, which turns the arguments into the task's config
and calls the library. A `CnnlabError` anywhere becomes one line on stderr and exit status 2, and
so does a `PermissionError` (a path the system denies: the user's to fix, not a bug). Any other
`OSError` (a full disk, a file too large for the file system, an I/O error) is the machine
failing, not the input: one line naming the file, and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cnnlab import __version__
from cnnlab.errors import CnnlabError, RankFailed

# Subcommand modules under cnnlab.cli, in the order `cnnlab --help` lists them.
COMMANDS = ["models", "params", "evaluate", "finetune", "predict", "explain", "train", "sweep",
            "experiment", "charrnn", "lab"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description=(
            "The classic CNN and RNN experiments, done properly: count a network's parameters, "
            "score pretrained ImageNet CNNs on your photos, transfer-learn them onto your own, "
            "train CNNs from scratch on CIFAR-10, test the labs' claims, train character RNNs; "
            "`cnnlab lab` runs both course labs into one report."
        ),
        epilog="Run `cnnlab COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"cnnlab.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Ranks that end normally, or with the same CnnlabError (broadcast_from_main), leave the
    # process group together; after Ctrl-C or a bug (RankFailed: rank 0's) a peer may never
    # arrive, so do not wait.
    together = False
    try:
        code = int(args.run(args) or 0)
        together = True
        return code
    except CnnlabError as exc:
        together = not isinstance(exc, RankFailed)
        # Under torchrun every rank raises the same error (dist.broadcast_from_main); one line
        # is enough, from rank 0.
        if os.environ.get("RANK", "0") == "0":
            print(f"cnnlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # PermissionError: a file or folder the system does not let cnnlab read or write (an
        # --out, a cache, a data set): the user's to fix, like a bad input (2). Any other: the
        # machine failed under cnnlab (ENOSPC, EFBIG, EIO; runs.py's writers name the file), an
        # environment failure (1). Either way the path says all there is, so no traceback.
        if os.environ.get("RANK", "0") == "0":
            where = f": {exc.filename}" if exc.filename else ""
            print(f"cnnlab {args.command}: error: {exc.strerror or exc}{where}",
                  file=sys.stderr)
        return 2 if isinstance(exc, PermissionError) else 1
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # only a command that used torch can have a group
            from cnnlab import dist

            dist.teardown(wait_for_all=together)


if __name__ == "__main__":
    sys.exit(main())
