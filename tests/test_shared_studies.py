"""Studies shared by several processes through a real PostgreSQL server (tests/postgres.py).

Each process stands in for a machine: its own --out and CNNLAB_CACHE, nothing shared but the
database. CI runs these against Debian's server (.ci/run installs it); elsewhere they skip when
PostgreSQL is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from test_sweep import tiny_yaml

pytestmark = pytest.mark.slow


def machine_env(tmp_path, name: str) -> dict[str, str]:
    """One stand-in machine: its own cache folder, one torch thread."""
    return {**os.environ, "CNNLAB_CACHE": str(tmp_path / f"cache-{name}"),
            "OMP_NUM_THREADS": "1"}


def test_three_sweeps_on_one_postgres_study_record_every_trial_exactly_once(
        shared_data, postgres, tmp_path):
    url = postgres.create_database("sweep")
    config = tiny_yaml(shared_data("cifar10", "cifar10-jpg.zip"), tmp_path)
    cmd = [sys.executable, "-m", "cnnlab", "sweep", str(config), "--storage", url,
           "--trials", "6", "--no-final", "--no-report", "-q"]
    names = ("a", "b", "c")
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / n)], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True,
                              env=machine_env(tmp_path, n)) for n in names]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = sorted(optuna.load_study(study_name="tiny", storage=url).get_trials(),
                    key=lambda t: t.number)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert [t.number for t in done] == list(range(6)), [(t.number, t.state) for t in trials]
    # Every trial's run directory exists once, in the folder of the process that ran it, and
    # its recorded value is that run's validation accuracy.
    owner = {p.pid: n for p, n in zip(procs, names, strict=True)}
    found = sorted(d.name for n in names for d in (tmp_path / n / "trials").glob("*"))
    assert len(found) == 6 and len(set(found)) == 6
    for t in done:
        run = tmp_path / owner[t.user_attrs["pid"]] / t.user_attrs["run_dir"]
        result = json.loads((run / "results.json").read_text())
        assert result["runs"][0]["val_accuracy"] == pytest.approx(t.value)


# Another machine's process takes a trial the way run_study does (owner attributes naming a
# host that is not this one, a first heartbeat) and dies without telling the storage anything.
DIES_ELSEWHERE = textwrap.dedent("""
    import os, sys
    from cnnlab.tasks import study as st
    s = st.open_study(sys.argv[1], "s")
    t = s.optuna_study.ask()
    t.suggest_float("lr", 0.01, 1.0, log=True)
    t.set_user_attr("round", 7)
    for k, v in {**st.owner(), "host": "another-machine"}.items():
        t.set_user_attr(k, v)
    with st.heartbeat(s, t.number):
        os._exit(9)
""")


def test_a_dead_machines_trial_is_failed_by_its_heartbeat_and_run_again_once(
        postgres, monkeypatch):
    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import study as st

    url = postgres.create_database("beats")
    monkeypatch.setenv("CNNLAB_HEARTBEAT", "1")  # stale after GRACE_BEATS = 3 s
    dead = subprocess.run([sys.executable, "-c", DIES_ELSEWHERE, url], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CNNLAB_HEARTBEAT": "1"})
    assert dead.returncode == 9, dead.stderr[-2000:]
    s = st.open_study(url, "s")
    assert s.storage.get_heartbeat_interval() == 1
    # Not stale yet: a live trial of another machine is left alone (its pid means nothing here).
    with s.lock():
        st.recover_orphans(s, Reporter(quiet=True))
    assert [t.state.name for t in s.trials()] == ["RUNNING"]
    time.sleep(st.GRACE_BEATS + 1.5)
    seen = []

    def objective(t: st.Trial):
        lr = t.optuna_trial.suggest_float("lr", 0.01, 1.0, log=True)
        time.sleep(4)  # longer than the grace period: its own heartbeat must keep it alive
        seen.append((t.optuna_trial.number, lr, t.optuna_trial.user_attrs.get("round")))
        return lr, {}

    ran = st.run_study(s, RunDir.create("x", out=Path(tempfile.mkdtemp()) / "run"), objective,
                       n_trials=1, reporter=Reporter(quiet=True))
    rows = st.trial_rows(s)
    assert ran == 1 and [r["state"] for r in rows] == ["FAIL", "COMPLETE"]
    assert rows[0]["retried"] and rows[1]["retry_of"] == 0
    assert rows[1]["params"] == rows[0]["params"] and seen[0][2] == 7  # settings and round kept
    assert rows[1]["host"] != "another-machine"
    # A second process looking now finds nothing stale and nothing left to run.
    again = st.open_study(url, "s")
    assert st.run_study(again, RunDir.create("y", out=Path(tempfile.mkdtemp()) / "run"),
                        objective, n_trials=1, reporter=Reporter(quiet=True)) == 0
