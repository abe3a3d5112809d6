"""What every API function shares: its reporter, its keyword arguments compared with their
defaults, `resume=` checked like the command line's `--resume`, and the Result it returns."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Resumable:
    """The settings that may change when a run is resumed: the same for `resume=` here and
    `--resume` on the command line, which takes them from here (cli/resume.py)."""

    allowed: tuple[str, ...] = ()  # may be given with resume= and replace the run's values
    per_invocation: tuple[str, ...] = ()  # this call's only (a time limit): never inherited


def reporter(quiet: bool):
    from cnnlab.progress import Reporter

    return Reporter(quiet=quiet)


def names(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """A list of names, where one name may be given as a plain string (models="resnet20")."""
    if values is None:
        return None
    return (values,) if isinstance(values, str) else tuple(values)


def given(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `fn` whose value differs from its default: what the caller
    set (as `cli.resume.given_flags` does for flags)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in values.items() if k in params and v != params[k].default}


def resumed(cls: type, command: str, run: str | Path, changes: Mapping[str, Any],
            rules: Resumable) -> Any:
    """The config of the run `run` (its config.json) with the allowed `changes` on top; any
    other setting given is refused by name, never silently ignored."""
    from cnnlab.config import from_run

    refused = [k for k in changes if k not in rules.allowed and k not in ("quiet", "resume")]
    if refused:
        only = ", ".join(f"{k}=" for k in rules.allowed)
        raise CnnlabError(
            f"resume={str(run)!r} continues the run with the settings it was started with; "
            f"{', '.join(f'{k}=' for k in refused)} cannot be given with it "
            + (f"(only {only} can)" if only else "(no other setting can)"))
    values = {k: None for k in rules.per_invocation}
    values.update({k: v for k, v in changes.items() if k in rules.allowed})
    return from_run(cls, run, command, values)


def result(command: str, results: dict[str, Any], rows: list[dict[str, Any]],
           run_dir: str | Path | None = None, title: str = "",
           figures: Iterable[str] = ("*.png",)):
    from cnnlab.results import Result, figures_in

    where = None if run_dir is None else Path(run_dir)
    return Result(command=command, results=results, rows=rows, run_dir=where,
                  figures=figures_in(where, tuple(figures)), title=title)
