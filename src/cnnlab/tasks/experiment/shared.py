"""One experiment shared by several machines (`--storage URL`): the same command on each, one
Optuna study per experiment in one database. Each process runs the seed rounds as alone
(rounds.py), taking the trials no live process holds; then, before it summarises, it waits
for the trials other processes still run (`await_peers`), so that every process's
results.json and report hold the whole study and give the same verdicts.

A process that died is noticed while waiting: run_study's recovery, each time it looks, fails
a trial whose heartbeat stopped (tasks/study.py: GRACE_BEATS missed beats of
heartbeat_seconds(); on this machine, at once when its pid is gone) and queues it again, and
the waiting process takes and runs it if no other does.
"""

from __future__ import annotations

import time

from cnnlab.tasks.experiment.trials import Study

# Seconds between two looks at the storage while waiting for other processes' trials: one
# SELECT of each study's trials per look, nothing for a database server; no more than the
# heartbeat (a dead peer's trial is then re-run within one look of being found stale).
POLL_SECONDS = 5.0


def poll_seconds() -> float:
    from cnnlab.tasks.study import heartbeat_seconds

    return min(POLL_SECONDS, float(heartbeat_seconds()))


def unfinished(studies: list[Study]) -> dict[str, list[int]]:
    """Each study's trials that some process is running now, or that were queued since this
    one last looked (by their numbers)."""
    from optuna.trial import TrialState

    out = {}
    for st in studies:
        numbers = [t.number for t in st.study.trials()
                   if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if numbers:
            out[st.name] = numbers
    return out


def await_peers(studies: list[Study], reporter, poll: float | None = None) -> int:
    """Until no trial of `studies` is queued or running anywhere: run here what is queued
    (a dead process's trial, queued again), else wait `poll` seconds (poll_seconds()) and look
    again. Returns how many trials ran here meanwhile."""
    poll = poll_seconds() if poll is None else poll
    ran, seen = 0, None
    while True:
        ran += sum(st.take_queued() for st in studies)
        busy = unfinished(studies)
        if not busy:
            return ran
        if busy != seen:  # once per change, not every poll
            reporter.log("waiting for trials other processes are running: "
                         + "; ".join(f"{name} {', '.join(map(str, nums))}"
                                     for name, nums in busy.items())
                         + f" (looking every {poll:g} s)")
            seen = busy
        time.sleep(poll)
