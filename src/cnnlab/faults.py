"""Deliberate crashes at named points, so that tests can prove what survives a `kill -9`.

    CNNLAB_CRASH_AT=last:files-written      SIGKILL the first time that point is reached
    CNNLAB_CRASH_AT=last:files-written#2    ... the second time (the first checkpoint completes)

Points in use: `<checkpoint name>:files-written` and `<checkpoint name>:json-written`
(`checkpoints.save`), `metrics:mid-line` (`RunDir.append_metrics`: half a line written and
fsynced, the rest never). Without the variable every point is a dictionary look-up.

This module sits at the bottom of the import graph (beside `runs` and `errors`) so that any
layer can place a crash point.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

ENV = "CNNLAB_CRASH_AT"

# How often each point has been reached in this process: `#n` counts from here.
_hits: Counter[str] = Counter()


def crash_point(name: str, before: Callable[[], None] | None = None) -> None:
    """SIGKILL this process here when CNNLAB_CRASH_AT names this point (and, with `#n`, this is
    its n-th visit); `before` runs first, to leave a half-done state behind (a torn line).

    SIGKILL, not an exception: nothing is flushed, no `finally` runs — the same as a power cut
    or the OOM killer, which is what resume must survive.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] != (int(nth) if nth else 1):
        return
    if before is not None:
        before()
    os.kill(os.getpid(), signal.SIGKILL)
