"""User-facing errors.

Anything a user can get wrong (an unknown model, a bad shape, a missing file) raises
`CnnlabError`. The command line prints its message as one line on stderr and exits with status 2;
an `OSError` is one line naming its file too, with status 2 for a `PermissionError` (the user's to
fix) and 1 for the rest (a full disk: the machine's failure, not the input's; `cli/__init__.py`).
Any other exception is a bug in cnnlab and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(Exception):
    """A mistake in the user's input, explained in one line."""


class RankFailed(CnnlabError):
    """Under torchrun: rank 0 failed with a bug, so this rank stops too. Rank 0 will not take
    part in any collective again (not even leaving the process group together)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest names, or '' when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    if not close:
        # A name that is a substring of registered names ("resnet" -> resnet18, ...) is a near miss
        # that difflib's ratio undervalues.
        close = [c for c in lowered if name.lower() in c][:n]
    if not close:
        return ""
    return " (did you mean: " + ", ".join(lowered[c] for c in close) + "?)"
