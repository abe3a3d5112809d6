"""`cnnlab sweep`: hyper-parameter search with Optuna, every trial a normal `cnnlab train` run.

    config = SweepConfig(data="cifar10-jpg.zip", space=(("lr", {"low": 0.01, "high": 1,
                         "log": True}), ("depth", [2, 4, 6])), train=(("models", ["plain-cnn"]),))
    results = run(config, RunDir.create("sweep"), Reporter())

The lab's "last way is to train and test many times to pick the best parameters", done so that
the test set never picks anything:

- The training set is split once (`val_fraction`, stratified, seeded) into train and validation
  (`data/cifar.split_validation`); trials train on the first and are scored on the second.
  They never look at the test set (`TrainConfig.test=False`).
- Optuna's TPE sampler proposes each trial's settings from the search space; after every epoch
  the trial reports its validation accuracy, and the pruner (median or Hyperband) may stop it.
- At the end the best trial's settings are re-trained once on the whole training set
  (train + validation) and tested once: the one test-set number of the sweep.

Each trial is `tasks/train.run` into `RUN/trials/trial-NNNN/` (config.json, metrics.jsonl,
checkpoints, results.json: `cnnlab train --resume` works on it).

Storage, locking, orphan recovery (a trial whose process was killed is failed and queued
again) and the trial loop are `tasks/study.py`'s, shared with `cnnlab experiment`: a SQLite
database in the run directory by default (`RUN/study.db`), or any URL (`--storage
postgresql://...`) shared by several processes or machines. Trials are counted in the storage,
so `--trials N` means N trials over every process and every resume.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError, suggest
from cnnlab.runs import RunDir, save_figure
from cnnlab.tasks.study import (
    Objective,
    Pruned,
    Trial,
    derived_seed,
    open_study,
    redact_url,
    run_study,
    storage_url,
)
from cnnlab.tasks.study_rows import trial_rows, write_trials_csv
from cnnlab.workers import Pool, share_cores, watch_parent

if TYPE_CHECKING:
    import optuna

    from cnnlab.tasks.train import TrainConfig

PRUNERS = ("median", "hyperband", "none")
FINAL_DIR = "final"
# TrainConfig settings a trial may not take from the search space or `train:` (the sweep owns
# them: the data, the validation split, the test set and the report).
OWNED = ("data", "val_fraction", "test", "report")


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    """One dimension of the search space.

    YAML forms: a list is a choice (`kernel: [3, 5, 7]`); a mapping with low/high is a range,
    int when both ends are ints (`depth: {low: 1, high: 8}`), float otherwise, `log: true` for
    a log scale, `step` for a grid (`lr: {low: 0.001, high: 1.0, log: true}`).
    """

    name: str
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Any) -> Param:
        if isinstance(spec, list | tuple):
            if not spec:
                raise CnnlabError(f"search space {name}: an empty list of choices")
            return cls(name, "categorical", choices=tuple(spec))
        if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
            raise CnnlabError(f"search space {name}: give a list of choices or "
                              f"{{low: ..., high: ...}}, not {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "log", "step"})
        if unknown:
            raise CnnlabError(f"search space {name}: unknown key {unknown[0]!r} "
                              "(low, high, log, step)")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise CnnlabError(f"search space {name}: low and high must be numbers")
        if low >= high:
            raise CnnlabError(f"search space {name}: low {low} must be below high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise CnnlabError(f"search space {name}: a log scale needs low > 0")
        step = spec.get("step")
        if log and step is not None:
            raise CnnlabError(f"search space {name}: give log or step, not both")
        kind = "int" if isinstance(low, int) and isinstance(high, int) and (
            step is None or isinstance(step, int)) else "float"
        return cls(name, kind, low=low, high=high, log=log, step=step)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)


def parse_space(space: Any) -> tuple[Param, ...]:
    if isinstance(space, dict):
        space = tuple(space.items())
    params = tuple(Param.parse(str(k), v) for k, v in space)
    if not params:
        raise CnnlabError("the search space is empty: give `space:` with at least one setting")
    return params


def _pairs(value: Any, what: str) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, dict):
        return tuple((str(k), v) for k, v in value.items())
    try:
        return tuple((str(k), v) for k, v in value)
    except (TypeError, ValueError):
        raise CnnlabError(f"{what} must be a mapping, not {value!r}") from None


def train_fields() -> list[str]:
    from cnnlab.tasks.train import TrainConfig

    return [f.name for f in fields(TrainConfig)]


def trial_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """`base` with a trial's settings: `model` and cnnlab train's own settings directly, a
    model's builder options into `model_options`, any recipe setting into `recipe_overrides`."""
    from cnnlab.models.registry import get_spec
    from cnnlab.tasks.train import OVERRIDABLE

    direct, model_opts, recipe = {}, dict(base.model_options), dict(base.recipe_overrides)
    models = base.models
    if "model" in params:
        models = (str(params["model"]),)
    options = set.intersection(*(set(get_spec(m).options) for m in models))
    names = train_fields()
    for key, value in params.items():
        if key == "model":
            continue
        if key in names and key not in OWNED and key not in ("models", "model_options",
                                                               "recipe_overrides"):
            direct[key] = value
        elif key in options:
            model_opts[key] = value
        elif key in OVERRIDABLE:
            recipe[key] = value
        else:
            raise CnnlabError(
                f"search space: {key!r} is neither a `cnnlab train` setting, an option of "
                f"{', '.join(models)}, nor a recipe setting"
                f"{suggest(key, [*names, *options, *OVERRIDABLE])}")
    return replace(base, models=models, model_options=tuple(model_opts.items()),
                   recipe_overrides=tuple(recipe.items()), **direct)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SweepConfig:
    data: str  # as for cnnlab train: a CIFAR zip, class folders, the official batches
    space: tuple[tuple[str, Any], ...]  # name -> list of choices or {low, high, log, step}
    train: tuple[tuple[str, Any], ...] = ()  # fixed cnnlab train settings of every trial
    trials: int = 20  # trials over all processes and resumes (finished or pruned)
    budget: float | None = None  # minutes of search in this invocation; then no new trial
    workers: int = 1  # processes on this machine sharing the study
    storage: str | None = None  # Optuna RDB URL; default sqlite in the run directory
    study: str = "cnnlab-sweep"  # study name in the storage (shared by every process)
    pruner: str = "median"
    val_fraction: float = 0.1  # share of train held out to score the trials
    seed: int = 0  # sampler seed (each process and resume derives its own from it)
    final: bool = True  # re-train the best settings on train + validation, test once
    report: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", _pairs(self.space, "space"))
        object.__setattr__(self, "train", _pairs(self.train, "train"))
        parse_space(self.space)
        if self.trials < 1:
            raise CnnlabError(f"--trials must be at least 1, not {self.trials}")
        if self.budget is not None and self.budget <= 0:
            raise CnnlabError(f"--budget must be positive (minutes), not {self.budget}")
        if self.workers < 1:
            raise CnnlabError(f"--workers must be at least 1, not {self.workers}")
        if self.pruner not in PRUNERS:
            raise CnnlabError(f"pruner must be one of {', '.join(PRUNERS)}, not {self.pruner!r}")
        if not 0 < self.val_fraction < 1:
            raise CnnlabError(f"val_fraction must be in (0, 1): the trials are scored on a "
                              f"validation split of train, never on test (not {self.val_fraction})")
        owned = [k for k, _ in self.train if k in OWNED]
        if owned:
            raise CnnlabError(f"train: {owned[0]!r} is set by the sweep itself")

    def base_train(self) -> TrainConfig:
        """The TrainConfig every trial starts from (before its own settings)."""
        from cnnlab.config import from_mapping
        from cnnlab.tasks.train import TrainConfig

        values = dict(self.train)
        if isinstance(values.get("models"), list | str):
            m = values["models"]
            values["models"] = (m,) if isinstance(m, str) else tuple(m)
        values.update(data=self.data, val_fraction=self.val_fraction, test=False, report=False)
        return from_mapping(TrainConfig, values)


def load_sweep_yaml(path: str | Path, overrides: dict[str, Any]) -> SweepConfig:
    """A SweepConfig from a YAML file (top level: data, space, train, trials, budget, workers,
    storage, study, pruner, val_fraction, seed, final), flags given on the command line on top."""
    from cnnlab.config import from_mapping, load_yaml

    values = load_yaml(path)
    values.setdefault("study", Path(path).stem)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data" in values:
        # A relative data path in the file is relative to the file, not to where cnnlab runs.
        data = Path(str(values["data"])).expanduser()
        if not data.is_absolute() and not data.exists():
            data = Path(path).parent / data
        values["data"] = str(data)
    return from_mapping(SweepConfig, values)


# --------------------------------------------------------------------------- the sweep


def _sampler(config: SweepConfig, worker: int, n_existing: int):
    import optuna

    # TPE proposes at random until it has a few trials to model; a third of a small sweep.
    startup = max(2, min(10, config.trials // 3))
    # A storage of the user's may be shared by processes started alike on several machines:
    # their host and pid keep them from proposing the same settings.
    who = (socket.gethostname(), os.getpid()) if config.storage else ()
    return optuna.samplers.TPESampler(seed=derived_seed(config.seed, worker, n_existing, *who),
                                      n_startup_trials=startup)


def _pruner(config: SweepConfig, max_epochs: int):
    import optuna

    if config.pruner == "median":
        # Compared from epoch 1 on with the median of earlier trials at the same epoch, once
        # two trials have finished.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def _max_epochs(config: SweepConfig) -> int:
    from cnnlab.tasks.train import recipe_for

    base = config.base_train()
    top = 1.0
    for p in parse_space(config.space):
        if p.name == "epochs":
            top = max(top, float(p.high if p.kind != "categorical" else max(p.choices)))
    for m in base.models:
        top = max(top, recipe_for(base, m).epochs)
    return math.ceil(top)


def sweep_objective(config: SweepConfig) -> Objective:
    """One trial: its settings from the space, `cnnlab train` into its directory on the
    validation split (reporting through the trial's reporter), validation accuracy after every
    epoch to the pruner."""
    import optuna

    from cnnlab.tasks import train

    params_space = parse_space(config.space)
    base = config.base_train()

    def objective(t: Trial) -> tuple[float, dict[str, Any]]:
        params = {p.name: p.suggest(t.optuna_trial) for p in params_space}
        cfg = trial_config(base, params)
        if t.deadline is not None:
            left = max(1.0, t.deadline - time.time())
            cfg = replace(cfg, time_limit=min(cfg.time_limit or left, left))
        epochs_seen: list[int] = []

        def after_epoch(model, record: dict[str, Any]) -> None:
            if record.get("val_accuracy") is None:
                return
            epochs_seen.append(record["epoch"])
            t.optuna_trial.report(record["val_accuracy"], step=record["epoch"])
            if t.optuna_trial.should_prune():
                raise optuna.TrialPruned

        try:
            res = train.run(cfg, t.run_dir, t.reporter, after_epoch=after_epoch)
        except optuna.TrialPruned:
            raise Pruned({"epochs": epochs_seen[-1] if epochs_seen else 0,
                          "stopped": "pruned"}) from None
        r = res["runs"][0]
        attrs = {"epochs": r["epochs"], "stopped": r["stopped"], "params_count": r["params"],
                 "n_train": r["n_train"], "train_seconds": round(r["train_seconds"], 1)}
        return float(r["val_accuracy"]), attrs

    return objective


def work(config: SweepConfig, run_dir: RunDir, reporter, worker: int = 0) -> int:
    """One process's share of the trials (the main process and every `--worker`). The main
    process (worker 0) shows the overall bar over the study's trials; a worker draws no bar
    and logs plain lines, which the main process passes on as `[worker K] ...`."""
    if worker:
        # Its output goes through a pipe to the main process, which prefixes each line
        # `[worker K]` and passes it on (cnnlab.workers): plain lines, no bars.
        reporter = replace(reporter, bars=False)
    url = storage_url(config.storage, run_dir)
    n_existing = len(open_study(url, config.study).trials())
    study = open_study(url, config.study, _sampler(config, worker, n_existing),
                       _pruner(config, _max_epochs(config)))
    deadline = time.time() + 60 * config.budget if config.budget else None
    with contextlib.ExitStack() as stack:
        display = None if worker else stack.enter_context(reporter.overall("sweep",
                                                                           config.trials))
        return run_study(study, run_dir, sweep_objective(config), config.trials, reporter,
                         deadline, display=display)


def work_as_worker(config: SweepConfig, run_dir: RunDir, reporter, index: int) -> int:
    """`cnnlab sweep --worker RUN --worker-index K`, a process of the main one's pool: it
    ends when the main process is gone (kill -9 included), then works as `work` does."""
    watch_parent()
    return work(config, run_dir, reporter, worker=index)


def run(config: SweepConfig, run_dir: RunDir, reporter, resume: bool = False,
        quiet_workers: bool = False) -> dict[str, Any]:
    """The whole sweep: trials (with `workers - 1` more processes), then the best re-trained on
    train + validation and tested once, then trials.csv, plots, results.json and the report.
    A worker that failed: all that, then a one-line error that names it."""
    base = config.base_train()
    from cnnlab.models.registry import get_spec

    for m in base.models:
        get_spec(m)
    trial_config(base, {p.name: _example(p) for p in parse_space(config.space)})  # names
    # Saved on resume too: the worker processes read the settings from config.json, and a
    # resume may have raised --trials.
    run_dir.save_config(config)
    if not resume:
        run_dir.save_environment(seed=config.seed)
    reporter.log(f"sweep: {config.trials} trials, storage {storage_url(config.storage, run_dir)}"
                 f"{f', {config.workers} workers' if config.workers > 1 else ''}")
    # `workers - 1` more processes of the one pool (cnnlab.workers): they die with this one,
    # their lines come prefixed `[worker K]`, the cores are shared out, a failure is named.
    with Pool(["sweep", "--worker", str(run_dir.path)], config.workers - 1,
              share_cores(config.workers), reporter, quiet=quiet_workers) as pool:
        work(config, run_dir, reporter, worker=0)
        failed = pool.wait()
    if not failed:
        return finish(config, run_dir, reporter)
    # Like experiment's: the results and the report hold what finished, and the run says
    # what failed in one line.
    why = "; ".join(f.why() for f in failed)
    reporter.log(why)
    try:
        finish(config, run_dir, reporter)
    except CnnlabError as exc:
        raise CnnlabError(f"{why}; {exc}") from None
    raise CnnlabError(f"{why}; the results and the report hold the trials that finished: "
                      f"`cnnlab sweep --resume {run_dir.path}` runs any it left unfinished")


def _example(p: Param) -> Any:
    return p.choices[0] if p.kind == "categorical" else p.low


def finish(config: SweepConfig, run_dir: RunDir, reporter) -> dict[str, Any]:
    import optuna

    from cnnlab.tasks import train

    url = storage_url(config.storage, run_dir)
    study = open_study(url, config.study)
    rows = trial_rows(study)
    write_trials_csv(run_dir, rows)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    results: dict[str, Any] = {
        "study": config.study, "storage": redact_url(url), "data": config.data,
        "val_fraction": config.val_fraction, "trials": rows,
        "counts": {s: sum(r["state"] == s for r in rows)
                   for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        "space": [vars(p) | {"choices": list(p.choices)} for p in parse_space(config.space)],
        "best": None, "final": None, "importances": None,
    }
    if not done:
        run_dir.save_results(results)
        # The first line only: an exception's message may run over many.
        errors = [r["error"].splitlines()[0] for r in rows if r.get("error")]
        raise CnnlabError("no trial finished" + (f"; the first error: {errors[0]}" if errors
                                                 else ""))
    best = study.optuna_study.best_trial
    results["best"] = next(r for r in rows if r["number"] == best.number)
    with contextlib.suppress(Exception), warnings.catch_warnings():
        # Needs two finished trials that differ; with few trials PED-ANOVA warns that its
        # quantiles coincide (the importances are then equal, and shown as such).
        warnings.simplefilter("ignore")
        results["importances"] = dict(optuna.importance.get_param_importances(study.optuna_study))
    if config.final:
        cfg = replace(trial_config(config.base_train(), dict(best.params)), val_fraction=0.0,
                      test=True, report=True, time_limit=None)
        final_dir = run_dir.path / FINAL_DIR
        if _trained_with(RunDir(final_dir), cfg):
            final = RunDir(final_dir).read_json("results.json")
        else:
            import shutil

            if final_dir.exists():
                # An interrupted re-train, or one of settings that are no longer the best (a
                # resume ran more trials): start it clean.
                shutil.rmtree(final_dir)
            reporter.log(f"re-training the best settings (trial {best.number}) on the whole "
                         "training set, then testing once")
            final = train.run(cfg, RunDir.create("final", out=final_dir), reporter)
        r = final["runs"][0]
        results["final"] = {"trial": best.number, "params": dict(best.params),
                            "val_accuracy": best.value, "test_accuracy": r["test_accuracy"],
                            "n_train": final["n_train"], "n_test": final["n_test"],
                            "epochs": r["epochs"], "train_seconds": r["train_seconds"],
                            "run_dir": FINAL_DIR}
    results["plots"], results["plot_errors"] = plot_study(study.optuna_study, run_dir, reporter)
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.sweep import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results


def _trained_with(final: RunDir, cfg: TrainConfig) -> bool:
    """Whether `final` holds a finished re-train of exactly `cfg` (compared as JSON, the form
    config.json keeps it in)."""
    import json

    from cnnlab.runs import to_jsonable

    if not (final.file("results.json").is_file() and final.file("config.json").is_file()):
        return False
    try:
        saved = final.read_json("config.json")
    except (OSError, ValueError):
        return False  # a damaged file: re-train rather than trust it
    return saved == json.loads(json.dumps(to_jsonable(cfg)))


def plot_study(study: optuna.Study, run_dir: RunDir, reporter
               ) -> tuple[dict[str, str], dict[str, str]]:
    """Optuna's matplotlib plots of the study: optimisation history, parameter importances and
    parallel coordinates. Returns ({name: file} of those drawn, {name: why} of those not): a
    plot Optuna cannot draw (importances need two finished trials that differ) or that fails
    is left out with one logged line, never silently."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    out, errors = {}, {}
    for name, fn in (("history", vis.plot_optimization_history),
                     ("importances", vis.plot_param_importances),
                     ("parallel", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = fn(study, target_name="validation accuracy")
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            out[name] = save_figure(fig, run_dir.file(f"{name}.png"), format="png", dpi=90).name
        except Exception as exc:  # a plot is a convenience: the numbers are in results.json
            first = (str(exc).strip().splitlines() or [""])[0]
            errors[name] = f"{type(exc).__name__}: {first}"
            reporter.log(f"sweep: no {name}.png ({errors[name]})")
        finally:
            plt.close("all")
    return out, errors
