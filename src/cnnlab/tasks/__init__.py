"""One module per command: a typed config dataclass and `run(config, run_dir, reporter)`.

Every task has that one signature, so that the command line and `cnnlab lab` call them alike:
the caller decides the run directory (`dist.open_run`), the task fills it and returns its
results (None on torchrun ranks other than 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnlab.runs import RunDir


def run_task(
    task: Callable[[Any, RunDir, Any], Any], config: Any, run: RunDir, reporter: Any
) -> Any:
    """`task(config, run, reporter)`, the one task signature; a run that fails before writing
    anything leaves no empty directory behind."""
    try:
        return task(config, run, reporter)
    except BaseException:
        import os

        if os.environ.get("RANK", "0") == "0":
            run.remove_if_empty()
        raise
