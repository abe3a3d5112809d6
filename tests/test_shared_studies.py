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
