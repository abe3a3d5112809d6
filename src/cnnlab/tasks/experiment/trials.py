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
from cnnlab.tasks.experiment.designs import CLASSES, GRAD_BATCH, TRAIN_EVAL
from cnnlab.tasks.experiment.grids import Grid, grid
from cnnlab.tasks.experiment.learning import conv_grad_norms, fixed_batch
from cnnlab.tasks.experiment.record import trial_attrs, trial_params
from cnnlab.tasks.experiment.tables import summarise
from cnnlab.tasks.experiment.together import group_objective, seeds_together, setting_of


def base_train(config: ExperimentConfig, g: Grid):
    from cnnlab.tasks.train import TrainConfig

    d = config.design(g.name)
    limited = config.limit_per_class is not None
    return TrainConfig(
        data=str(config.data_path()), models=g.models[:1], recipe="fast", epochs=d.epochs,
        limit_per_class=config.limit_per_class,
        train_per_class=None if limited or config.quick else d.train_per_class,
        image_size=d.image_size, train_eval=TRAIN_EVAL, test_curve=False,
        classes=None if d.classes == CLASSES else d.classes,
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

        key = (cfg.data, cfg.limit_per_class, cfg.train_per_class, cfg.image_size, cfg.classes)
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
        cfg = sweep.trial_config(base, trial_params(g, t.optuna_trial))
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
        value, measured = trial_attrs(g.name, res, t.run_dir, len(trial_data.classes))
        return value, {**attrs, **measured}

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
        # Without --storage: RUN/<name>/study.db, named `experiment-<name>` as before.
        self.study = study.open_study(study.storage_url(config.storage, run_dir),
                                      f"{config.study}-{name}",
                                      optuna.samplers.RandomSampler(seed=0),
                                      optuna.pruners.NopPruner())
        self.objective = objective(self.grid, self.base, reporter, data, time_left,
                                   32 if config.quick else GRAD_BATCH)
        # Seeds of one setting trained together as one batched model (1: one at a time).
        self.together = seeds_together(name, config)
        self.run_group = group_objective(self.grid, self.base, reporter, data, time_left,
                                         32 if config.quick else GRAD_BATCH, self.objective)
        self.round_seconds: list[float] = []
        if not run_dir.file("config.json").is_file():
            run_dir.save_config({"experiment": name, "config": config, "train": self.base,
                                 "design": config.design(name), "settings": self.grid.settings})

    def queue(self, rounds: range) -> None:
        """Queue every (setting, seed) of these seed rounds that no trial has yet: a round
        at first, the rest of one that a process died while queueing (shared studies), and
        nothing on a resume that finds them queued or done."""
        from cnnlab.tasks import study

        with self.study.lock():
            trials = self.study.trials()
            have = {t.user_attrs.get(study.PLAN) or study.plan_key(t.params) for t in trials}
            # Queued before trials named their plan entry (an older run, resumed): a queued
            # trial has no params yet, its round is in the user attribute it was queued with.
            old = {t.user_attrs.get("round") for t in trials
                   if study.PLAN not in t.user_attrs and not t.params}
            # Setting by setting, each setting's seeds in a row: the seeds trained together
            # (together.py) are claimed from the head of the queue.
            for s in self.grid.settings:
                for seed in rounds:
                    if seed in old:
                        continue
                    params = {**s, "seed": seed}
                    key = study.plan_key(params)
                    if key not in have:
                        # On a server storage the lock is no lock: two machines may queue
                        # an entry at once. run_study runs the first of such twins, drops
                        # the other unrun (study.PLAN).
                        self.study.optuna_study.enqueue_trial(
                            params, user_attrs={"round": seed, study.PLAN: key})

    def rounds_queued(self) -> int:
        """Seed rounds queued so far, by any process (another machine may have been given
        more --seeds)."""
        rounds = [t.user_attrs.get("round", t.params.get("seed")) for t in self.study.trials()]
        return 1 + max((r for r in rounds if r is not None), default=-1)

    def run_round(self, seeds: range, reporter=None) -> None:
        """Every setting with each of `seeds` (queued once; a resumed run finds them queued or
        done), with any other queued trial of the study; a setting's seeds trained together
        where the study does (`together`). `reporter`: the round's step of the overall
        display (else the study's own)."""
        self.queue(seeds)
        t0 = time.monotonic()
        ran = self._run_queued(len(self.grid.settings) * seeds.stop, reporter, len(seeds))
        if ran:  # a round found done (a resumed run) says nothing about this machine's speed
            # Seconds per seed round: rounds trained together share their time equally.
            self.round_seconds += [(time.monotonic() - t0) / len(seeds)] * len(seeds)

    def _run_queued(self, n_trials: int, reporter, seeds: int) -> int:
        """The queued trials, up to `seeds` of a setting at a time as one batched model where
        the study trains seeds together, else one by one. Returns how many ran here."""
        from cnnlab.tasks import study

        size = min(self.together, seeds)
        if size > 1:
            return study.run_study_groups(self.study, self.run_dir, self.run_group, n_trials,
                                          reporter or self.reporter, setting_of, size)
        return study.run_study(self.study, self.run_dir, self.objective, n_trials,
                               reporter or self.reporter, queued_only=True)

    def take_queued(self, reporter=None) -> int:
        """Run here every trial of the plan that is queued and not yet taken (the retry of a
        trial whose process died: run_study's recovery, first thing, fails and queues it; an
        entry of a round whose queueing process died), and no new one. Returns how many ran
        here."""

        rounds = self.rounds_queued()
        self.queue(range(rounds))
        return self._run_queued(len(self.grid.settings) * rounds, reporter, self.together)

    def take_waiting(self, reporter=None) -> int:
        """Run here the trials of this study that its own process queued and no process has
        taken yet (another `--workers` process helping once its own group is done), queueing
        nothing: the owner decides the rounds. Returns how many ran here."""
        return self._run_queued(len(self.grid.settings) * self.rounds_queued(), reporter,
                                self.together)

    def summarise(self) -> dict[str, Any]:
        from cnnlab.report.experiment import plot_experiment
        from cnnlab.tasks import study_rows

        rows = study_rows.trial_rows(self.study)
        study_rows.write_trials_csv(self.run_dir, rows)
        if not any(r["state"] == "COMPLETE" for r in rows):
            errors = [r["error"] for r in rows if r.get("error")]
            raise CnnlabError(f"experiment {self.name}: no trial finished"
                              + (f"; the first error: {errors[0]}" if errors else ""))
        results = summarise(self.grid, self.config, self.base, rows, self.run_dir)
        results["plot"] = plot_experiment(results, self.run_dir.path)
        self.run_dir.save_results(results)
        return results
