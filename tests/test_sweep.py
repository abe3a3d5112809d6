"""`cnnlab sweep` on a tiny CIFAR-10 subset: three trials scored on validation only and the best
tested once; two worker processes on one SQLite study record every trial exactly once; a real
`kill -9` (mid-trial and between trials) then `--resume` loses and double-counts nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import yaml

from cnnlab.cli import main
from cnnlab.runs import RunDir


def tiny_yaml(data: Path, tmp_path: Path) -> Path:
    """A sweep config: 10 images per class (80 train + 20 validation), 2 epochs of 4 steps."""
    cfg = {
        "data": str(data),
        "trials": 3, "pruner": "none", "val_fraction": 0.2,
        "train": {"models": ["plain-cnn"], "recipe": "fast", "limit_per_class": 10,
                  "epochs": 2, "batch_size": 20, "threads": 1,
                  "model_options": {"width": 8},
                  "recipe_overrides": {"lookahead": None, "tta": "none", "precision": "fp32"}},
        "space": {"depth": [1, 2], "lr": {"low": 0.01, "high": 0.5, "log": True}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tiny_yaml(shared_data("cifar10", "cifar10-jpg.zip"), tmp_path)


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """The same config for tests of the settings alone: its data need not exist."""
    return tiny_yaml(tmp_path / "no-data-here.zip", tmp_path)


def assert_real_png(path: Path) -> None:
    """A figure that decodes and shows something: not blank, not a few flat colours."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and min(img.size) >= 200, path
        grey = np.asarray(img.convert("L"))
    assert grey.std() > 5 and len(np.unique(grey)) > 20, path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", "sweep", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def study_trials(run: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run / 'study.db'}")
    return sorted(study.get_trials(), key=lambda t: t.number)


def test_three_trials_on_validation_then_the_best_tested_once(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sweep", str(tiny), "--out", str(out), "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["COMPLETE"] == 3 and len(res["trials"]) == 3
    for t in res["trials"]:
        trial = RunDir(out / t["run_dir"])
        run = trial.read_json("results.json")["runs"][0]
        assert run["n_train"] == 80 and run["test_accuracy"] is None  # never saw the test set
        assert run["val_accuracy"] == pytest.approx(t["value"])
        metrics = RunDir(out / t["run_dir"] / "plain-cnn-seed0").read_metrics()
        assert not any("test_accuracy" in r for r in metrics)
        epochs = [r for r in metrics if r["kind"] == "epoch"]
        assert [r["epoch"] for r in epochs] == [1, 2] and all("val_accuracy" in r for r in epochs)
        assert t["params"]["depth"] in (1, 2) and 0.01 <= t["params"]["lr"] <= 0.5
    best = max(res["trials"], key=lambda t: t["value"])
    final = res["final"]
    assert final["trial"] == best["number"] and final["params"] == best["params"]
    assert final["n_train"] == 100 and final["n_test"] == 100  # train + validation, then test
    f = json.loads((out / "final" / "results.json").read_text())
    assert f["runs"][0]["test_accuracy"] == final["test_accuracy"]
    lines = (out / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,depth,lr,value") and len(lines) == 4
    # Three finished trials that differ: Optuna draws all three figures.
    assert res["plots"] == {n: f"{n}.png" for n in ("history", "importances", "parallel")}
    assert res["plot_errors"] == {}
    for name in res["plots"].values():
        assert_real_png(out / name)
    md = (out / "report.md").read_text()
    assert "tested once" in md and f"trial {best['number']}" in md
    # The last lines say where the run and its report are.
    assert capsys.readouterr().out.splitlines()[-2:] == [f"run directory: {out}",
                                                         f"report: {out / 'report.html'}"]


def test_two_processes_on_one_sqlite_study_record_every_trial_exactly_once(tiny, tmp_path):
    """Two sweeps started together on one shared SQLite storage (as on two machines with one
    database): each takes trials, every trial is recorded once, and --trials counts them all."""
    db = tmp_path / "shared.db"
    cmd = [sys.executable, "-m", "cnnlab", "sweep", str(tiny), "--storage", f"sqlite:///{db}",
           "--trials", "6", "--no-final", "--no-report", "-q"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / name)], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert pids == {p.pid for p in procs}  # both processes took trials
    # Each trial's run directory exists once, in the directory of the process that ran it.
    found = sorted((d.parent.parent.name, d.name) for d in tmp_path.glob("[ab]/trials/*"))
    assert len(found) == 6 and len({name for _, name in found}) == 6
    for t in trials:
        owner = "a" if t.user_attrs["pid"] == procs[0].pid else "b"
        run = json.loads((tmp_path / owner / t.user_attrs["run_dir"] / "results.json")
                         .read_text())
        assert run["runs"][0]["val_accuracy"] == pytest.approx(t.value)


def test_workers_option_runs_more_processes_on_the_run_directorys_study(tiny, tmp_path):
    out = tmp_path / "run"
    proc = cli(str(tiny), "--trials", "4", "--workers", "2", "--no-final", "--no-report",
               "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_trials(out)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert len(list((out / "trials").iterdir())) == 4


def _worker_of(parent: subprocess.Popen, timeout: float = 120) -> psutil.Process:
    """The `--worker` child of a running `cnnlab sweep --workers 2`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kid in psutil.Process(parent.pid).children():
            try:
                if "--worker" in kid.cmdline():
                    return kid
            except psutil.Error:  # a short-lived child (`git`, `lscpu`) that just ended
                continue
        assert parent.poll() is None, "the sweep ended before its worker started"
        time.sleep(0.05)
    raise AssertionError("no worker started")


def test_workers_stop_when_the_main_process_is_killed(tiny, tmp_path):
    cfg = yaml.safe_load(tiny.read_text())
    cfg["train"]["epochs"] = 40  # 50 trials of 40 epochs: minutes of work for the worker
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        parent = subprocess.Popen(
            [sys.executable, "-m", "cnnlab", "sweep", str(long), "--trials", "50", "--workers",
             "2", "--no-final", "--no-report", "--out", str(tmp_path / "run")],
            stdout=subprocess.DEVNULL, stderr=err)
    worker = None
    try:
        worker = _worker_of(parent)
        # Into its first trial: its lines reach the main process's stderr, named.
        def training() -> list[str]:
            return [ln for ln in log.read_text().splitlines()
                    if ln.startswith("[worker 1] plain-cnn seed")]

        deadline = time.monotonic() + 120
        while not training() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert training(), log.read_text()[-2000:]
        assert worker.is_running() and parent.poll() is None
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _gone, alive = psutil.wait_procs([worker], timeout=15)
        assert not alive, "the worker went on training after the main process was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and worker.is_running():
            worker.kill()


def test_a_worker_that_dies_is_named_in_one_line_after_the_results(tiny, tmp_path):
    """kill -9 of the worker: the main process runs the trials, saves the results and the
    report, then ends with a one-line error that names the worker and how it ended."""
    out = tmp_path / "run"
    parent = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "sweep", str(tiny), "--trials", "3", "--workers", "2",
         "--no-final", "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _worker_of(parent).kill()
        _, err = parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cnnlab sweep: error: worker 1 stopped with exit status -9")
    assert f"--resume {out}" in lines[0]
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["COMPLETE"] == 3  # the main process ran them
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("crash_at", ["step-3", "sweep:trial-1:told"])
def test_kill_9_then_resume_loses_and_double_counts_nothing(tiny, tmp_path, crash_at):
    """step-3: mid-epoch 1 of trial 0 (4 steps per epoch); sweep:trial-1:told: right after
    trial 1 was recorded, before trial 2 starts."""
    out = tmp_path / "run"
    crashed = cli(str(tiny), "--no-final", "--no-report", "--out", str(out), "-q",
                  env={"CNNLAB_CRASH_AT": crash_at})
    assert crashed.returncode == -signal.SIGKILL
    before = study_trials(out)
    resumed = cli("--resume", str(out), "-q")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = study_trials(out)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    if crash_at == "step-3":
        assert [t.state.name for t in before] == ["RUNNING"]  # what kill -9 leaves behind
        first, *rest = trials
        assert first.state.name == "FAIL" and first.user_attrs["retried"]
        retry = [t for t in rest if t.user_attrs.get("retry_of") == 0]
        assert len(retry) == 1 and retry[0].params == first.params
        assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in rest)
    else:
        assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE"]
        assert len(trials) == 3  # only trial 2 ran after the resume
        assert [t.params for t in trials[:2]] == [t.params for t in before]
    res = json.loads((out / "results.json").read_text())
    assert res["counts"]["COMPLETE"] == 3


def test_bad_configs_are_one_line_errors(tiny_config, tmp_path, capsys):
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["space"]["deptth"] = [1, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "deptth" in err and "depth" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    cfg["space"] = {"lr": {"low": 1, "high": 0.1}}
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "below high" in capsys.readouterr().err
    cfg["space"] = {"lr": [0.1]}
    cfg["val_fraction"] = 0
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "never on test" in capsys.readouterr().err


def test_report_escapes_what_the_user_named(tmp_path):
    """Study names, data paths and categorical choices come from the user's YAML: the HTML
    report escapes them and the Markdown report shows them as text, never as markup."""
    from cnnlab.report.sweep import write_report

    evil = "<img src=x onerror=alert(1)>|`[x](y)`"
    trial = {"number": 0, "state": "COMPLETE", "params": {"model": evil}, "value": 0.5,
             "pruned": False, "epochs": 1, "stopped": "completed", "seconds": 1.0,
             "params_count": 1, "run_dir": "trials/trial-0000", "retry_of": None,
             "retried": False, "surplus": False, "error": None, "host": "h", "pid": 1,
             "intermediate": {}}
    RunDir(tmp_path).save_results({
        "study": evil, "storage": "sqlite:///x", "data": evil, "val_fraction": 0.1,
        "trials": [trial], "counts": {"COMPLETE": 1, "PRUNED": 0, "FAIL": 0, "RUNNING": 0,
                                      "WAITING": 0},
        "space": [{"name": "model", "kind": "categorical", "low": None, "high": None,
                   "log": False, "step": None, "choices": [evil]}],
        "best": trial, "final": {"trial": 0, "params": {"model": evil}, "val_accuracy": 0.5,
                                 "test_accuracy": 0.4, "n_train": 10, "n_test": 10,
                                 "epochs": 1, "train_seconds": 1.0, "run_dir": "final"},
        "importances": None, "plots": {}})
    md_path, html_path = write_report(tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    from cnnlab.report.env import markdown_text

    assert "<img" not in md and markdown_text(evil) in md and "\\|" in markdown_text(evil)


def test_resume_whose_new_best_beats_the_old_re_trains_and_tests_the_new_best(tiny, tmp_path):
    """`--resume RUN --trials N` after the final re-train: when a new trial beats the old best,
    final/ is re-trained with the new best's settings and its test accuracy reported, never the
    old best's test number under the new best's settings."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = tmp_path / "run"
    assert main(["sweep", str(tiny), "--trials", "1", "--no-report", "--out", str(out),
                 "-q"]) == 0
    first = json.loads((out / "results.json").read_text())["final"]
    # A second trial that beats the first (validation accuracy 1.0) with the other depth, as a
    # resumed sweep's new trial would: added to the study directly, so that it surely wins.
    depth = 2 if first["params"]["depth"] == 1 else 1
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(
        params={"depth": depth, "lr": 0.1}, value=1.0,
        distributions={"depth": CategoricalDistribution([1, 2]),
                       "lr": FloatDistribution(0.01, 0.5, log=True)}))
    assert main(["sweep", "--resume", str(out), "--trials", "2", "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    final = res["final"]
    assert final["trial"] == 1 and final["params"] == {"depth": depth, "lr": 0.1}
    trained = json.loads((out / "final" / "config.json").read_text())
    assert dict(trained["model_options"])["depth"] == depth and trained["lr"] == 0.1
    tested = json.loads((out / "final" / "results.json").read_text())["runs"][0]
    assert final["test_accuracy"] == tested["test_accuracy"]
    # Resumed again with nothing new: the re-train of the same best is reused, not repeated.
    stamp = (out / "final" / "results.json").stat().st_mtime_ns
    assert main(["sweep", "--resume", str(out), "-q"]) == 0
    assert (out / "final" / "results.json").stat().st_mtime_ns == stamp


def test_a_trial_failing_with_a_bug_is_one_line_with_the_traceback_in_its_directory(
        tiny, tmp_path, monkeypatch, capsys):
    from cnnlab.tasks import train

    def broken(*args, **kwargs):
        raise RuntimeError("something inside training broke\nsecond line of the message")

    monkeypatch.setattr(train, "run", broken)
    out = tmp_path / "run"
    assert main(["sweep", str(tiny), "--trials", "1", "--no-report", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "second line" not in err
    trial = out / "trials" / "trial-0000"
    failed = [line for line in err.splitlines() if "trial 0: failed" in line]
    assert len(failed) == 1 and "RuntimeError: something inside training broke" in failed[0]
    assert str(trial / "traceback.txt") in failed[0]
    assert err.strip().splitlines()[-1] == (
        "cnnlab sweep: error: no trial finished; the first error: RuntimeError: something "
        "inside training broke")
    kept = (trial / "traceback.txt").read_text()
    assert kept.startswith("Traceback") and "in broken" in kept and "second line" in kept


def test_a_plot_that_fails_is_logged_in_one_line_and_recorded(tmp_path, monkeypatch):
    """Without any training: a study of three made-up trials. Importances failing (as Optuna
    does with too few trials, or a bug) leaves its figure out with a reason, the others drawn."""
    import optuna
    import optuna.visualization.matplotlib as vis
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from cnnlab.progress import Reporter
    from cnnlab.tasks.sweep import plot_study

    study = optuna.create_study(direction="maximize")
    for depth, lr, value in ((1, 0.02, 0.3), (2, 0.1, 0.5), (2, 0.3, 0.4)):
        study.add_trial(optuna.trial.create_trial(
            params={"depth": depth, "lr": lr}, value=value,
            distributions={"depth": CategoricalDistribution([1, 2]),
                           "lr": FloatDistribution(0.01, 0.5, log=True)}))

    def broken(*args, **kwargs):
        raise RuntimeError("importances broke\nsecond line")

    monkeypatch.setattr(vis, "plot_param_importances", broken)
    logged = []
    reporter = Reporter(quiet=True)
    monkeypatch.setattr(reporter, "log", logged.append)
    plots, errors = plot_study(study, RunDir(tmp_path), reporter)
    assert plots == {"history": "history.png", "parallel": "parallel.png"}
    assert errors == {"importances": "RuntimeError: importances broke"}
    assert logged == ["sweep: no importances.png (RuntimeError: importances broke)"]
    assert not (tmp_path / "importances.png").exists()
    for name in plots.values():
        assert_real_png(tmp_path / name)


def _fake_training(monkeypatch, seen: list):
    """train.run replaced by one that reports through the reporter it is given and returns a
    made-up result: the trial loop and its progress without any training."""
    from cnnlab.tasks import train

    def fake_run(cfg, run_dir, reporter, after_epoch=None):
        seen.append(reporter)
        for _ in reporter.track(range(3), description="epoch"):
            pass
        reporter.log("training")
        return {"runs": [{"epochs": 2, "stopped": None, "params": 10, "n_train": 80,
                          "train_seconds": 1.0, "val_accuracy": 0.25 * len(seen)}]}

    monkeypatch.setattr(train, "run", fake_run)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_main_process_shows_the_trials_as_steps_of_one_overall_bar(
        tiny_config, tmp_path, monkeypatch):
    from cnnlab.progress import Reporter
    from cnnlab.tasks import sweep

    seen: list = []
    _fake_training(monkeypatch, seen)
    config = sweep.load_sweep_yaml(tiny_config, {})
    run = RunDir.create("sweep", out=tmp_path / "run")
    err = io.StringIO()  # off a terminal: every line names the trial's step of the study
    assert sweep.work(config, run, Reporter(err=err, interval=0), worker=0) == 3
    lines = err.getvalue().splitlines()
    for k in (1, 2, 3):
        step = f"[sweep {k}/3 trial {k - 1}] "
        assert f"{step}training" in lines
        assert f"{step}trial {k - 1}: {0.25 * k:.4f}" in " ".join(lines)
        assert any(line.startswith(f"{step}epoch: 3 it") for line in lines)
    # Resumed with more trials: the count goes on from the trials already finished.
    config = replace(config, trials=4)
    err = io.StringIO()
    assert sweep.work(config, run, Reporter(err=err, interval=0), worker=0) == 1
    assert "[sweep 4/4 trial 3] training" in err.getvalue().splitlines()
    # On a terminal: one bar for the whole sweep, with the trial's bars under it.
    config = replace(config, trials=5)
    err = _Terminal()
    assert sweep.work(config, run, Reporter(err=err), worker=0) == 1
    assert seen[-1].live is not None  # the trial's work draws into the sweep's display
    assert "sweep 5/5: trial 4" in err.getvalue()


def test_a_worker_process_draws_no_bars(tiny_config, tmp_path, monkeypatch):
    """A worker's own output: plain lines, no live display. The main process passes them on
    prefixed `[worker K]` (cnnlab.workers; the real processes' test below checks that)."""
    from cnnlab.progress import Reporter
    from cnnlab.tasks import sweep

    seen: list = []
    _fake_training(monkeypatch, seen)
    config = replace(sweep.load_sweep_yaml(tiny_config, {}), trials=1)
    run = RunDir.create("sweep", out=tmp_path / "run")
    err = _Terminal()  # the terminal the main process draws its bars on
    assert sweep.work(config, run, Reporter(err=err, interval=0), worker=1) == 1
    out = err.getvalue()
    assert "\x1b" not in out and "sweep 1/1" not in out  # no live display, no overall bar
    assert "training" in out.splitlines()
