"""Progress and tables that suit where the output goes.

On a terminal: rich progress bars and tables. Otherwise (CI logs, `> file`): a plain log line
at most every `interval` seconds, so logs stay readable and small. `quiet` silences progress
but never results or errors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")


@dataclass
class Reporter:
    """Where a command writes progress (stderr) and results (stdout)."""

    quiet: bool = False
    interval: float = 10.0  # seconds between plain log lines when not on a terminal
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        # Off a terminal rich would assume 80 columns and wrap table cells; logs and files
        # are better served by long lines.
        width = None if self.out.isatty() else 1000
        self.console = Console(file=self.out, highlight=False, soft_wrap=False, width=width)
        self.err_console = Console(file=self.err, highlight=False)

    @property
    def interactive(self) -> bool:
        return self.err.isatty()

    def log(self, message: str) -> None:
        """A progress message (stderr); silenced by --quiet."""
        if not self.quiet:
            print(message, file=self.err, flush=True)

    def result(self, message: str = "") -> None:
        """A result line (stdout); never silenced."""
        print(message, file=self.out, flush=True)

    def track(
        self, items: Iterable[T], total: int | None = None, description: str = "", unit: str = "it"
    ) -> Iterator[T]:
        """Yield from `items`, showing progress."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        if self.quiet:
            yield from items
            return
        if self.interactive:
            columns = [
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            ]
            with Progress(*columns, console=self.err_console, transient=True) as bar:
                task = bar.add_task(description, total=total)
                for item in items:
                    yield item
                    bar.advance(task)
            return
        start = last = time.monotonic()
        done = 0
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                rate = done / (now - start)
                of = f"/{total} ({100 * done / total:.0f}%)" if total else ""
                self.log(f"{description}: {done}{of} {unit}, {rate:.1f} {unit}/s")
        elapsed = time.monotonic() - start
        self.log(f"{description}: {done} {unit} in {elapsed:.1f} s")

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        title: str | None = None,
        right_align: Sequence[str] = (),
    ) -> None:
        """A results table on stdout (plain text when stdout is not a terminal)."""
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for col in columns:
            table.add_column(
                col, justify="right" if col in right_align else "left", no_wrap=not self.interactive
            )
        for row in rows:
            table.add_row(*[str(v) for v in row])
        self.console.print(table)
