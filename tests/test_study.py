"""tasks/study.py, the Optuna machinery of sweep and experiment, without any training: a trial
left RUNNING by a process that really died is failed and queued again once, through Optuna's
public API; trials of live processes and of other machines are left alone; the trial loop
then runs the retry with the same settings and counts it instead of the dead attempt."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from cnnlab.progress import Reporter
from cnnlab.runs import RunDir
from cnnlab.tasks import study as st
from cnnlab.tasks import study_rows

# A separate process that takes a trial the way run_study does (owner attributes recorded),
# then dies without telling the storage anything: what `kill -9` leaves behind.
DIES_MID_TRIAL = textwrap.dedent("""
    import os, sys
    from cnnlab.tasks import study as st
    s = st.open_study(sys.argv[1], "s")
    t = s.optuna_study.ask()
    t.suggest_float("lr", 0.01, 1.0, log=True)
    t.suggest_categorical("depth", [1, 2, 3])
    for k, v in st.owner().items():
        t.set_user_attr(k, v)
    os._exit(9)
""")


def _dead_trial(url: str) -> None:
    proc = subprocess.run([sys.executable, "-c", DIES_MID_TRIAL, url], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]


def test_a_dead_processs_trial_is_failed_and_queued_again_once(tmp_path):
    run = RunDir(tmp_path)
    url = st.storage_url(None, run)
    _dead_trial(url)
    s = st.open_study(url, "s")
    # Two RUNNING trials that are not orphans: this very process, and another machine's.
    mine = s.optuna_study.ask({"lr": _float(), "depth": _choice()})
    for k, v in st.owner().items():
        mine.set_user_attr(k, v)
    theirs = s.optuna_study.ask({"lr": _float(), "depth": _choice()})
    theirs.set_user_attr("host", socket.gethostname() + "-elsewhere")
    theirs.set_user_attr("pid", 1)

    with s.lock():
        assert st.recover_orphans(s, Reporter(quiet=True)) == [0]
    with s.lock():
        assert st.recover_orphans(s, Reporter(quiet=True)) == []  # only once
    trials = sorted(s.trials(), key=lambda t: t.number)
    dead = trials[0]
    assert dead.state.name == "FAIL" and dead.user_attrs["retried"] is True
    assert [t.state.name for t in trials[1:3]] == ["RUNNING", "RUNNING"]  # left alone
    queued = [t for t in trials if t.state.name == "WAITING"]
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == 0
    assert not st.takes_slot(dead) and st.takes_slot(queued[0])
    # The storage agrees when read afresh by another client (nothing only in a cache).
    import optuna

    again = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state.name for t in sorted(again, key=lambda t: t.number)][:1] == ["FAIL"]


def test_the_trial_loop_runs_the_retry_with_the_dead_trials_settings(tmp_path):
    run = RunDir(tmp_path)
    url = st.storage_url(None, run)
    _dead_trial(url)
    s = st.open_study(url, "s")
    seen = []

    def objective(t: st.Trial) -> tuple[float, dict]:
        lr = t.optuna_trial.suggest_float("lr", 0.01, 1.0, log=True)
        depth = t.optuna_trial.suggest_categorical("depth", [1, 2, 3])
        seen.append((t.optuna_trial.number, lr, depth, t.run_dir.path.name))
        return lr * depth, {"epochs": 1}

    ran = st.run_study(s, run, objective, n_trials=2, reporter=Reporter(quiet=True))
    rows = study_rows.trial_rows(s)
    assert ran == 2 and [r["state"] for r in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert rows[0]["retried"] and rows[1]["retry_of"] == 0
    assert rows[1]["params"] == rows[0]["params"]  # the same settings, trained from the start
    assert [n for n, *_ in seen] == [1, 2] and seen[0][3] == "trial-0001"
    assert rows[1]["value"] == rows[1]["params"]["lr"] * rows[1]["params"]["depth"]
    study_rows.write_trials_csv(run, rows)
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,lr,depth,value") and len(lines) == 4
    assert ",retried," in lines[1] and lines[2].split(",")[-3] == "0"  # retry_of
    # Nothing more to run: the retry took the dead attempt's slot.
    assert st.run_study(s, run, objective, n_trials=2, reporter=Reporter(quiet=True)) == 0


def _float():
    from optuna.distributions import FloatDistribution

    return FloatDistribution(0.01, 1.0, log=True)


def _choice():
    from optuna.distributions import CategoricalDistribution

    return CategoricalDistribution([1, 2, 3])


def test_a_trial_failed_as_stale_by_another_process_is_not_told_again(tmp_path):
    """A live trial whose heartbeats slipped under load can be failed as stale by another
    process; when it then finishes, its own process must say so in one line and go on, not
    end on Optuna's UpdateFinishedTrialError (seen in the shared-storage tests at load 20)."""
    import optuna

    run = RunDir(tmp_path)
    s = st.open_study(st.storage_url(None, run), "s")
    trial = s.optuna_study.ask({"lr": _float(), "depth": _choice()})
    # What another process's stale check does: fail it from outside.
    other = optuna.load_study(study_name="s", storage=st.storage_url(None, run))
    other.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    lines: list[str] = []
    rep = Reporter(quiet=True)
    rep.log = lines.append
    st._finish(s, trial, (0.5, {"epochs": 1}), 1.0, rep, tmp_path / "trial-0000")
    assert len(lines) == 1 and "already failed as stale" in lines[0]
    state = next(t for t in s.trials() if t.number == trial.number).state.name
    assert state == "FAIL"  # the other process's verdict stands
