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
    # Six trained; a process that started a trial past the count in a race (three processes
    # asking at once) marked it surplus and trained nothing for it (tasks/study.py).
    assert len(done) == 6, [(t.number, t.state, t.user_attrs) for t in trials]
    assert all(t.user_attrs.get("surplus") for t in trials if t.state.name != "COMPLETE")
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
    from cnnlab.tasks import study_rows

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
    rows = study_rows.trial_rows(s)
    assert ran == 1 and [r["state"] for r in rows] == ["FAIL", "COMPLETE"]
    assert rows[0]["retried"] and rows[1]["retry_of"] == 0
    assert rows[1]["params"] == rows[0]["params"] and seen[0][2] == 7  # settings and round kept
    assert rows[1]["host"] != "another-machine"
    # A second process looking now finds nothing stale and nothing left to run.
    again = st.open_study(url, "s")
    assert st.run_study(again, RunDir.create("y", out=Path(tempfile.mkdtemp()) / "run"),
                        objective, n_trials=1, reporter=Reporter(quiet=True)) == 0


# --------------------------------------------------------------------------- cnnlab experiment

# The smallest real experiment that shares work: depth --quick (3 nets) x 2 seeds = 6 trials of
# 10 images per class. --epochs 10 makes a trial last a few seconds, so that three processes
# started together overlap (each takes some trials, and one finishing first must wait).
EXPERIMENT = ["experiment", "depth", "--quick", "--seeds", "2", "--limit-per-class", "10",
              "--epochs", "10", "--threads", "1", "--no-report", "-q"]
SETTINGS = {(d, s) for d in (1, 2, 4) for s in (0, 1)}  # (depth, seed): the plan


def experiment_cmd(data, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab", *EXPERIMENT, "--data", str(data), "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same experiment in one process, alone, with its SQLite study: the reference every
    shared run must equal."""
    from conftest import data_path

    tmp = tmp_path_factory.mktemp("one")
    done = subprocess.run(experiment_cmd(data_path("cifar10", "cifar10-jpg.zip"), tmp / "run"),
                          capture_output=True, text=True, timeout=600,
                          env=machine_env(tmp, "one"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "run" / "results.json").read_text())["experiments"]["depth"]


def depth_trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return sorted(optuna.load_study(study_name=f"{study}-depth", storage=url).get_trials(),
                  key=lambda t: t.number)


def completed(trials) -> list[tuple[int, int]]:
    """(depth, seed) of every completed trial, once per trial (a twice-trained one twice)."""
    return sorted((t.params["depth"], t.params["seed"]) for t in trials
                  if t.state.name == "COMPLETE")


def same_results(got: dict, want: dict) -> None:
    """The same rows (every seed's test and training accuracy, exactly: one thread makes
    training deterministic) and the same verdict."""
    keys = ("label", "seeds", "seed_ids", "test", "train", "params", "steps")
    assert [{k: r[k] for k in keys} for r in got["rows"]] == \
        [{k: r[k] for k in keys} for r in want["rows"]]
    assert got["verdict"] == want["verdict"]
    assert (got["n_train"], got["n_test"], got["completed"]) == \
        (want["n_train"], want["n_test"], want["completed"])


def test_three_experiment_processes_share_one_study_and_each_reports_all_of_it(
        shared_data, postgres, one_process, tmp_path):
    url = postgres.create_database("experiment")
    data = shared_data("cifar10", "cifar10-jpg.zip")
    names = ("a", "b", "c")
    procs = [subprocess.Popen(experiment_cmd(data, tmp_path / n, "--storage", url, "--study",
                                             "lab"),
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              env=machine_env(tmp_path, n)) for n in names]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    trials = depth_trials(url, "lab")
    # Every (depth, seed) trained exactly once over the three processes, nothing else run
    # (a twin of a round two processes queued at once is dropped unrun: study.PLAN).
    assert completed(trials) == sorted(SETTINGS)
    assert all(t.state.name == "COMPLETE" or (t.user_attrs.get("surplus") and not t.params)
               for t in trials)
    # Each trial's folder is in the --out of the process that trained it, and only there.
    owner = {p.pid: n for p, n in zip(procs, names, strict=True)}
    for t in (t for t in trials if t.state.name == "COMPLETE"):
        n = owner[t.user_attrs["pid"]]
        assert (tmp_path / n / "depth" / t.user_attrs["run_dir"] / "results.json").is_file()
        assert not any((tmp_path / m / "depth" / t.user_attrs["run_dir"]).exists()
                       for m in names if m != n)
    # Every process wrote the whole study, whichever trials it trained: the same rows and
    # verdict as the others and as one process alone.
    for n in names:
        res = json.loads((tmp_path / n / "results.json").read_text())
        assert res["storage"] == {"url": url, "study": "lab"}
        same_results(res["experiments"]["depth"], one_process)
        assert res["experiments"]["depth"]["n_train"] == 100
        assert res["experiments"]["depth"]["trials"] == len(SETTINGS)  # twins are none


def test_an_experiment_process_killed_mid_trial_loses_only_that_trial(
        shared_data, postgres, one_process, tmp_path):
    url = postgres.create_database("killed")
    data = shared_data("cifar10", "cifar10-jpg.zip")
    cmd = ["--storage", url, "--study", "lab"]
    procs = {}
    for n in ("a", "b", "c"):
        env = {**machine_env(tmp_path, n), "CNNLAB_HEARTBEAT": "1"}
        if n == "b":  # SIGKILL at the 20th of its first trial's 50 steps (faults.py)
            env["CNNLAB_CRASH_AT"] = "step-20"
        procs[n] = subprocess.Popen(experiment_cmd(data, tmp_path / n, *cmd), env=env,
                                    stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    text=True)
    errs = {n: p.communicate(timeout=600)[1] for n, p in procs.items()}
    assert procs["b"].returncode == -9, errs["b"][-3000:]
    for n in ("a", "c"):
        assert procs[n].returncode == 0, errs[n][-3000:]
    trials = depth_trials(url, "lab")
    # The killed process's trial failed, was queued again and trained by a live process; the
    # study is complete with every (depth, seed) once.
    dead = [t for t in trials if t.user_attrs.get("pid") == procs["b"].pid]
    assert [t.state.name for t in dead] == ["FAIL"], [(t.number, t.state) for t in trials]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == dead[0].number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == dead[0].params
    assert completed(trials) == sorted(SETTINGS)
    assert not (tmp_path / "b" / "results.json").exists()
    for n in ("a", "c"):
        res = json.loads((tmp_path / n / "results.json").read_text())["experiments"]["depth"]
        same_results(res, one_process)
        assert res["completed"] == len(SETTINGS) and res["trials"] == len(SETTINGS) + 1
    # Nothing else ran: the six, the dead attempt, and any twin of a round that two processes
    # queued at once (dropped unrun, see study.PLAN).
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(ran) == len(SETTINGS) + 1
    assert all(t.state.name == "FAIL" and not t.params for t in trials
               if t.user_attrs.get("surplus"))


# A process of another machine takes the first queued trial of a shared experiment the way
# run_study does, keeps it alive by its heartbeat for a while, then dies without a word.
HOLDS_THEN_DIES = textwrap.dedent("""
    import os, sys, time
    from cnnlab.tasks import study as st
    s = st.open_study(sys.argv[1], sys.argv[2])
    t = s.optuna_study.ask()
    for k, v in {**st.owner(), "host": "another-machine"}.items():
        t.set_user_attr(k, v)
    with st.heartbeat(s, t.number):
        print(t.number, flush=True)
        time.sleep(float(sys.argv[3]))
        os._exit(9)
""")


def test_a_process_done_with_its_share_waits_for_a_live_peer_and_reruns_a_dead_ones_trial(
        shared_data, postgres, tmp_path, monkeypatch):
    import threading

    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import study as st
    from cnnlab.tasks.experiment import ExperimentConfig
    from cnnlab.tasks.experiment.shared import await_peers
    from cnnlab.tasks.experiment.trials import DataCache, Study

    url = postgres.create_database("peers")
    monkeypatch.setenv("CNNLAB_HEARTBEAT", "1")  # stale after GRACE_BEATS = 3 s
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    config = ExperimentConfig(experiments=("depth",), quick=True, seeds=1, limit_per_class=10,
                              threads=1, storage=url, study="w", report=False,
                              data=str(shared_data("cifar10", "cifar10-jpg.zip")))
    rep = Reporter(quiet=True)
    run = RunDir(tmp_path / "run" / "depth")
    run.path.mkdir(parents=True)
    here = Study("depth", config, run, rep, DataCache(rep), lambda: None)
    here.queue(range(1))  # seed 0 of depth 1, 2, 4
    # Another process queued the same round at the same moment (no lock on a server): a twin
    # of depth 2's entry, which must not be trained a second time.
    twin = {"depth": 2, "seed": 0}
    here.study.optuna_study.enqueue_trial(twin, user_attrs={"round": 0,
                                                            st.PLAN: st.plan_key(twin)})
    hold = 6.0  # seconds the peer stays alive, longer than the grace period (3 s)
    peer = subprocess.Popen([sys.executable, "-c", HOLDS_THEN_DIES, url, "w-depth", str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CNNLAB_HEARTBEAT": "1"})
    held = int(peer.stdout.readline())  # the peer holds its trial from now on
    returned = []
    waiter = threading.Thread(target=lambda: returned.append((await_peers([here], rep, 0.5),
                                                              time.time())))
    waiter.start()
    assert peer.wait(timeout=120) == 9, peer.stderr.read()[-2000:]
    died = time.time()
    waiter.join(timeout=300)
    ran, at = returned[0]
    trials = here.study.trials()
    by = {t.number: t for t in trials}
    # The live peer's trial was left to it (its heartbeat kept it alive past the grace
    # period), failed only after the peer died, and re-run here: the wait returned after that.
    assert by[held].state.name == "FAIL" and by[held].user_attrs["host"] == "another-machine"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == held]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["pid"] == os.getpid()
    assert retry[0].datetime_start.timestamp() >= died - 0.5 and at > died
    # Every entry of the plan trained once (here): the twin dropped unrun.
    assert completed(trials) == [(1, 0), (2, 0), (4, 0)] and ran == 3
    assert [t.user_attrs.get("surplus") for t in trials if t.state.name == "FAIL"
            and t.number != held] == [True]
    # A machine that trained none of it summarises the same study to the same results (the
    # sizes too: they are in the storage, not only in the trial folders here).
    there = RunDir(tmp_path / "elsewhere" / "depth")
    there.path.mkdir(parents=True)
    mine = here.summarise()
    theirs = Study("depth", config, there, rep, DataCache(rep), lambda: None).summarise()
    assert not (there.path / "trials").exists()
    assert (theirs["n_train"], theirs["n_test"]) == (mine["n_train"], mine["n_test"]) == (100, 100)
    for key in ("rows", "verdict", "trials", "completed"):
        assert json.dumps(theirs[key], default=str) == json.dumps(mine[key], default=str), key


def test_what_a_shared_experiment_refuses_is_one_line_each(shared_data, tmp_path, capsys):
    from cnnlab.cli import main

    url = "postgresql://lab:secret@/cnnlab?host=/nonexistent"
    for extra, why in ((["--workers", "2"], "--workers with --storage"),
                       (["--budget", "3"], "--budget with --storage"),
                       (["--study", " "], "--study must name")):
        assert main(["experiment", "depth", "--storage", url, *extra, "--out",
                     str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1
    # A server that is not there: one line, without the password.
    assert main(["experiment", "depth", "--quick", "--storage", url, "--out",
                 str(tmp_path / "y"), "--data", str(shared_data("cifar10", "cifar10-jpg.zip"))]
                ) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot open the study storage" in err and len(err.splitlines()) == 1
    assert "secret" not in err and "lab:***@" in err
