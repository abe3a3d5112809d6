"""Reports of `cnnlab sweep` and `cnnlab experiment`: titled parts, each with sentences, tables
and figures, rendered by one template pair (study.html.j2, study.md.j2) from run artifacts.

The builders (`report/sweep.py`, `report/experiment.py`) read results.json and the PNGs the
tasks wrote; nothing here reaches into training code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.runs import RunDir


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    numeric: tuple[int, ...] = ()  # column indices aligned right


@dataclass
class Figure:
    path: str  # relative to the report's directory (report.md links it)
    data_uri: str  # embedded in report.html
    caption: str


@dataclass
class Part:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    verdict: str = ""  # the one sentence that says whether the lab's claim held


def figure(root: Path, rel: str, caption: str) -> Figure | None:
    path = root / rel
    if not path.is_file():
        return None
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return Figure(rel, uri, caption)


def pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def write(run_path: str | Path, title: str, intro: list[str], parts: list[Part],
          environment: dict[str, Any] | None = None) -> tuple[Path, Path]:
    from cnnlab.report.env import render, trusted

    run = RunDir(Path(run_path))
    context = {"title": title, "intro": intro, "parts": parts, "environment": environment or {},
               "trusted": trusted}
    md = run.write_text("report.md", render("study.md.j2", **context))
    html = run.write_text("report.html", render("study.html.j2", **context))
    return md, html
