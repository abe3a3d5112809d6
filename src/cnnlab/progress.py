"""Progress and tables that suit where the output goes.

On a terminal, or in Jupyter with ipywidgets: rich progress bars and tables. Otherwise (CI
logs, `> file`, a notebook without ipywidgets): a plain log line at most every `interval`
seconds, so logs stay readable and small. `quiet` silences progress
but never results or errors.

Work made of steps (`cnnlab lab`) opens `Reporter.overall`: on a terminal one display holds
the overall bar (step k of n) and, under it, whatever bars the current step opens; off a
terminal every line the step logs starts with `[lab k/n step]`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

T = TypeVar("T")

# A step of an overall display that ends sooner than this was not run but kept (finished before
# a resume): it says nothing about speed, so the ETA is measured from after it.
KEPT_STEP_SECONDS = 1.0


@dataclass
class Reporter:
    """Where a command writes progress (stderr) and results (stdout)."""

    quiet: bool = False
    interval: float = 10.0  # seconds between plain log lines when not on a terminal
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    prefix: str = ""  # put before every log line: the step this reporter works for
    live: Progress | None = None  # a display shared with an enclosing `overall`, if any
    # False: plain log lines even on a terminal. For a process that shares its terminal with
    # another one drawing bars (a `sweep --workers` child): two live displays overwrite
    # each other's lines.
    bars: bool = True

    def __post_init__(self) -> None:
        # Off a terminal rich would assume 80 columns and wrap table cells; logs and files
        # are better served by long lines.
        width = None if self.out.isatty() else 1000
        self.console = Console(file=self.out, highlight=False, soft_wrap=False, width=width)
        self.err_console = Console(file=self.err, highlight=False)

    @property
    def interactive(self) -> bool:
        """Live bars: on a terminal, or in a Jupyter notebook, where rich draws them as a
        widget (ipywidgets); without ipywidgets a notebook gets the plain log lines."""
        if not self.bars:
            return False
        return self.err.isatty() or (self.err_console.is_jupyter and _has_widgets())

    def log(self, message: str) -> None:
        """A progress message (stderr); silenced by --quiet."""
        if self.quiet:
            return
        if self.live is not None:  # above the live bars, which stay at the bottom
            self.live.console.print(self.prefix + message, markup=False, highlight=False,
                                    soft_wrap=True)
        else:
            print(self.prefix + message, file=self.err, flush=True)

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
        if self.live is not None:  # a bar under the enclosing display's, gone when done
            task = self.live.add_task(f"  {description}", total=total)
            try:
                for item in items:
                    yield item
                    self.live.advance(task)
            finally:
                self.live.remove_task(task)
            return
        if self.interactive:
            with Progress(*_columns(), console=self.err_console, transient=True) as bar:
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

    @contextmanager
    def overall(self, description: str, total: int,
                estimates: Sequence[float] | None = None) -> Iterator[Overall]:
        """One display for work made of `total` steps; `Overall.step` gives each step its
        reporter. On a terminal the display lasts as long as this context. With `estimates`
        (seconds per step) the bar advances by each finished step's estimate, so its
        time-remaining column comes from the estimates of the steps left (scaled by how the
        finished ones compared with theirs), not from a count of steps of 2 s and 800 s."""
        weights = list(estimates) if estimates else [1.0] * total
        if self.quiet or (not self.interactive and self.live is None):
            yield Overall(self, description, total, None, None, weights)
            return
        if self.live is not None:  # inside another overall display (a lab step): a bar in it
            task = self.live.add_task(f"  {description}", total=sum(weights))
            try:
                yield Overall(self, f"  {description}", total, self.live, task, weights)
            finally:
                self.live.remove_task(task)
            return
        with Progress(*_overall_columns(), console=self.err_console) as bar:
            task = bar.add_task(description, total=sum(weights))
            yield Overall(self, description, total, bar, task, weights)
            bar.update(task, completed=sum(weights))

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


@dataclass
class Overall:
    """The display of `Reporter.overall`: `step(k, name)` moves it to step k (from 1) and
    returns the reporter that step's own work reports through."""

    parent: Reporter
    description: str
    total: int
    bar: Progress | None
    task: Any
    weights: list[float] = field(default_factory=list)  # estimated seconds per step
    # (time, completed) where the ETA's measure starts, and when the current step started
    _since: tuple[float, float] | None = field(default=None, init=False)
    _step_start: float | None = field(default=None, init=False)

    def step(self, k: int, name: str) -> Reporter:
        if self.bar is not None:
            now, completed = self.bar.get_time(), sum(self.weights[: k - 1])
            if self._step_start is None or now - self._step_start < KEPT_STEP_SECONDS:
                self._since = (now, completed)
            self._step_start = now
            self.bar.update(self.task, completed=completed,
                            description=f"{self.description} {k}/{self.total}: {name}",
                            eta=(*self._since, now))
        # Nested in a lab step, the lines carry both: "[lab 6/8 train] [train 2/9 ...] ".
        return replace(self.parent, prefix=f"{self.parent.prefix}[{self.description.strip()} "
                       f"{k}/{self.total} {name}] ", live=self.bar)


def _has_widgets() -> bool:
    """Whether ipywidgets is installed (`pip install cnnlab[notebook]`): rich's live display in
    Jupyter needs it, and without it only warns and draws nothing."""
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def _columns() -> list[Any]:
    return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn()]


def _overall_columns() -> list[Any]:
    """The overall bar counts estimated seconds, so it shows a percentage, not 'M of N'."""
    return [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), _OverallRemaining()]


class _OverallRemaining(ProgressColumn):
    """Time left on an overall bar: the seconds per unit of estimated work that this run's
    finished steps took, times the work left, less what the current step has run already.
    rich's TimeRemainingColumn averages the updates of the last 30 s, and an overall bar moves
    once a step: with steps of minutes it would never show a time. The steps' own bars in the
    same display (no `eta` field) keep rich's."""

    def __init__(self) -> None:
        super().__init__()
        self.rich = TimeRemainingColumn()

    def render(self, task: Any) -> Text:
        if "eta" not in task.fields:
            return self.rich.render(task)
        since, base, step_start = task.fields["eta"]
        done = task.completed - base
        if done <= 0 or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = ((task.total - task.completed) * (step_start - since) / done
                - (task.get_time() - step_start))
        minutes, seconds = divmod(int(max(left, 0.0)), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")
