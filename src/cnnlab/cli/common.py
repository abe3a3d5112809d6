"""Options several subcommands share, spelled the same everywhere."""

from __future__ import annotations

import argparse


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="run directory for config, results and reports "
        "(default: runs/<command>/<timestamp>; an existing non-empty directory is refused)",
    )
    add_quiet(parser)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output (results still print)"
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the hand-wrapped examples in descriptions."""



def print_run_paths(reporter, run_dir: str) -> None:
    """The run directory and, when the command wrote one, its report (the last lines every
    command prints, so the file to open is where the eye lands)."""
    from pathlib import Path

    reporter.result(f"run directory: {run_dir}")
    report = Path(run_dir) / "report.html"
    if report.is_file():
        reporter.result(f"report: {report}")
