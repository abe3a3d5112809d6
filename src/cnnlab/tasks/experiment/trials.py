"""One study's trials: the `cnnlab train` config every trial starts from (`base_train`), the
data loaded once per process (`DataCache`), the objective that trains and tests one (setting,
seed), and `Study`, one experiment's Optuna study in RUN/<name>/ (its queue, its seed rounds,
its summary)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.experiment.config import ExperimentConfig
from cnnlab.tasks.experiment.designs import GRAD_BATCH, TRAIN_EVAL
from cnnlab.tasks.experiment.grids import Grid, grid
from cnnlab.tasks.experiment.learning import (
    conv_grad_norms,
    fixed_batch,
    plateau_share,
    still_learning,
)
from cnnlab.tasks.experiment.tables import summarise


def base_train(config: ExperimentConfig, g: Grid):
    from cnnlab.tasks.train import TrainConfig

    d = config.design(g.name)
    limited = config.limit_per_class is not None
    return TrainConfig(
        data=str(config.data_path()), models=g.models[:1], recipe="fast", epochs=d.epochs,
        limit_per_class=config.limit_per_class,
        train_per_class=None if limited or config.quick else d.train_per_class,
        image_size=d.image_size, train_eval=TRAIN_EVAL, test_curve=False,
        threads=config.threads, report=False,
        model_options=tuple(g.extra.items()),
        recipe_overrides=tuple((k, v) for k, v in d.recipe.items() if k != "epochs"),
        eval_every=d.curve_every,
    )


class DataCache:
    """The trials' data set, loaded (and subsampled, shrunk) once per process for all of an
    experiment's trials instead of once per trial."""

    def __init__(self, reporter):
        self.reporter = reporter
        self._data: dict[tuple, Any] = {}

    def get(self, cfg):
        from cnnlab.tasks import train

        key = (cfg.data, cfg.limit_per_class, cfg.train_per_class, cfg.image_size)
        if key not in self._data:
            self._data[key] = train.load_data(cfg, self.reporter)
        return self._data[key]


def objective(g: Grid, base, reporter, data: DataCache, time_left: Callable[[], float | None],
              grad_batch: int = GRAD_BATCH):
    """The sweep machinery's objective for one grid trial: train, test once; for the residual
    study also the gradient norms at initialisation and after the first epoch."""
    from cnnlab.tasks import sweep, train
    from cnnlab.tasks.study import Trial

    def run_trial(t: Trial) -> tuple[float, dict[str, Any]]:
        params = {}
        for key in (*g.settings[0], "seed"):
            if key == "seed":
                params[key] = t.optuna_trial.suggest_int("seed", 0, 10_000)
            else:
                choices = sorted({s[key] for s in g.settings})
                params[key] = t.optuna_trial.suggest_categorical(key, choices)
        cfg = sweep.trial_config(base, params)
        left = time_left()
        if left is not None:
            cfg = replace(cfg, time_limit=max(1.0, left))
        attrs: dict[str, Any] = {}
        at_start = after_epoch = None
        trial_data = data.get(cfg)
        if g.name == "residual":
            x, y = fixed_batch(trial_data, train.recipe_for(cfg, cfg.models[0]), grad_batch)

            def at_start(model) -> None:  # the very net training starts from
                attrs["metric_grad_init"] = conv_grad_norms(model, x, y)

            def after_epoch(model, record: dict[str, Any]) -> None:
                if record["epoch"] == 1:
                    attrs["metric_grad_epoch1"] = conv_grad_norms(model, x, y)

        res = train.run(cfg, t.run_dir, reporter, after_epoch=after_epoch, at_start=at_start,
                        data=trial_data)
        r = res["runs"][0]
        sub = RunDir(t.run_dir.path / f"{r['model']}-seed{r['seed']}")
        metrics = sub.read_metrics()
        epochs = [rec for rec in metrics if rec.get("kind") == "epoch"]
        losses = [rec["train_loss"] for rec in metrics if rec.get("kind") == "step"]
        share = plateau_share(losses)
        attrs.update({
            "epochs": r["epochs"], "stopped": r["stopped"], "params_count": r["params"],
            "metric_macs": res["models"][0]["macs"], "metric_steps": r["steps"],
            "metric_test_accuracy": r["test_accuracy"],
            "metric_train_accuracy": r.get("train_eval_accuracy"),
            "metric_plateau_share": share,
            "metric_still_learning": still_learning(share, r.get("train_eval_accuracy"),
                                                    len(trial_data.classes)),
            "metric_train_seconds": round(r["train_seconds"], 1),
            # [step, training accuracy (fixed sample, no augmentation), test accuracy]
            "metric_curve": [[rec["step"], rec.get("train_eval_accuracy"),
                              rec.get("test_accuracy")] for rec in epochs],
        })
        if g.name == "residual":  # the training loss of every logged window (4 per epoch)
            attrs["metric_loss_curve"] = [[rec["step"], rec["train_loss"]] for rec in metrics
                                          if rec.get("kind") == "step"]
        return float(r["test_accuracy"]), attrs

    return run_trial


class Study:
    """One experiment's study in RUN/<name>/: its grid, queue and trials."""

    def __init__(self, name: str, config: ExperimentConfig, run_dir: RunDir, reporter,
                 data: DataCache, time_left: Callable[[], float | None]):
        import optuna

        from cnnlab.tasks import study

        self.name, self.config, self.run_dir, self.reporter = name, config, run_dir, reporter
        self.grid = grid(name, config)
        self.base = base_train(config, self.grid)
        self.study = study.open_study(study.storage_url(None, run_dir), f"experiment-{name}",
                                      optuna.samplers.RandomSampler(seed=0),
                                      optuna.pruners.NopPruner())
        self.objective = objective(self.grid, self.base, reporter, data, time_left,
                                   32 if config.quick else GRAD_BATCH)
        self.round_seconds: list[float] = []
        if not run_dir.file("config.json").is_file():
            run_dir.save_config({"experiment": name, "config": config, "train": self.base,
                                 "design": config.design(name), "settings": self.grid.settings})

    def run_round(self, seed: int, reporter=None) -> None:
        """Every setting with `seed` (queued once; a resumed run finds them queued or done).
        `reporter`: the round's step of the overall display (else the study's own)."""
        from cnnlab.tasks import study

        with self.study.lock():
            # A queued trial has no params yet: its round is in the user attribute it was
            # queued with.
            seeds = {t.params.get("seed", t.user_attrs.get("round")) for t in self.study.trials()}
            if seed not in seeds:
                for s in self.grid.settings:
                    self.study.optuna_study.enqueue_trial({**s, "seed": seed},
                                                          user_attrs={"round": seed})
        t0 = time.monotonic()
        ran = study.run_study(self.study, self.run_dir, self.objective,
                              len(self.grid.settings) * (seed + 1), reporter or self.reporter)
        if ran:  # a round found done (a resumed run) says nothing about this machine's speed
            self.round_seconds.append(time.monotonic() - t0)

    def summarise(self) -> dict[str, Any]:
        from cnnlab.report.experiment import plot_experiment
        from cnnlab.tasks import study

        rows = study.trial_rows(self.study)
        study.write_trials_csv(self.run_dir, rows)
        if not any(r["state"] == "COMPLETE" for r in rows):
            errors = [r["error"] for r in rows if r.get("error")]
            raise CnnlabError(f"experiment {self.name}: no trial finished"
                              + (f"; the first error: {errors[0]}" if errors else ""))
        results = summarise(self.grid, self.config, self.base, rows, self.run_dir)
        results["plot"] = plot_experiment(results, self.run_dir.path)
        self.run_dir.save_results(results)
        return results
