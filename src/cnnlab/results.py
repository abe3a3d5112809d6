"""What a `cnnlab` API call returns: one object per run, for Python and for Jupyter.

A `Result` holds the run's results.json as `.results` (every top-level key is also an attribute:
`r.models`, `r.steps`), its summary table as a pandas DataFrame (`.table`), the figures it drew
(`.figures`), where it lies (`.run_dir`, `.report`), and renders itself in a notebook
(`_repr_html_`: the table and the figures, embedded, so the notebook file stands alone).

The rows of the table come from the command's one summary function (the same rows the command
line prints), never rebuilt here. This module imports nothing heavy: pandas loads on first use of
`.table`, and only a notebook's repr reads the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    """One cnnlab run: its numbers, table, figures and directory."""

    command: str  # "train", "charrnn complete", ...
    results: dict[str, Any]  # results.json (or what the command computed, where it saves none)
    rows: list[dict[str, Any]]  # the summary table, one dict per row (column -> value)
    run_dir: Path | None = None  # None for commands that write no run (models, charrnn complete)
    figures: list[Path] = field(default_factory=list)
    title: str = ""

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: results.json's keys as attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.__dict__["results"][name]
        except KeyError:
            raise AttributeError(
                f"{self.command} result has no {name!r}; results.json holds: "
                + ", ".join(sorted(self.__dict__["results"]))) from None

    def __dir__(self) -> list[str]:  # tab completion in a notebook offers results.json's keys
        return sorted(set(super().__dir__()) | set(self.results))

    @property
    def table(self):
        """The summary table as a pandas DataFrame (numbers as numbers, not formatted text)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def report(self) -> Path | None:
        """report.html of the run, when it wrote one."""
        if self.run_dir is None:
            return None
        path = self.run_dir / "report.html"
        return path if path.is_file() else None

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"<cnnlab {self.command} result: {len(self.rows)} row(s){where}>"

    def _repr_html_(self) -> str:
        """The table and the figures for Jupyter. Every string a user named (a model, a file, a
        label) is escaped: the one Jinja environment of the reports (autoescape always), and
        pandas' own escaping for the table."""
        from cnnlab.report.blocks import data_uri
        from cnnlab.report.env import render, trusted

        table = self.table.to_html(index=False, escape=True, na_rep="-", border=0)
        figures = [(p.name, data_uri(p)) for p in self.figures if p.is_file()]
        return render("result.html.j2", title=self.title or f"cnnlab {self.command}",
                      table=trusted(table), figures=figures,
                      run_dir=None if self.run_dir is None else str(self.run_dir),
                      report=None if self.report is None else str(self.report))


def figures_in(run_dir: Path | None, patterns: Sequence[str] = ("*.png",)) -> list[Path]:
    """The figures a run drew: its PNGs (sorted), found where the report finds them."""
    if run_dir is None:
        return []
    return sorted({p for pattern in patterns for p in run_dir.glob(pattern)})
