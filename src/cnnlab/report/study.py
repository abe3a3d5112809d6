"""Reports of `cnnlab sweep` and `cnnlab experiment`: titled parts, each with sentences, tables
and figures, rendered by one template pair (study.html.j2, study.md.j2) from run artifacts.

The builders (`report/sweep.py`, `report/experiment.py`) read results.json and the PNGs the
tasks wrote; nothing here reaches into training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.report.blocks import Figure, Table, environment_rows
from cnnlab.runs import RunDir


@dataclass
class Part:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    verdict: str = ""  # the one sentence that says whether the lab's claim held


def pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def write(run_path: str | Path, title: str, intro: list[str], parts: list[Part],
          environment: dict[str, Any] | None = None) -> tuple[Path, Path]:
    from cnnlab.report.env import render, trusted

    run = RunDir(Path(run_path))
    context = {"title": title, "intro": intro, "parts": parts,
               "environment": environment_rows(environment or {}),
               "trusted": trusted}
    md = run.write_text("report.md", render("study.md.j2", **context))
    html = run.write_text("report.html", render("study.html.j2", **context))
    return md, html
