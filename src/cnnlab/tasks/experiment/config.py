"""The experiment's settings: which studies, the data, seeds and budget, workers
(`ExperimentConfig`), validated where they are made; `design(name)` picks each study's
training design (designs.py) under --quick / --epochs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.tasks.experiment.designs import DESIGNS, QUICK, Design

EXPERIMENTS = ("depth", "filters", "pooling", "residual")
DEFAULT_DATA = "cifar10/cifar10-jpg.zip"  # under the data root
DEFAULT_DATA_ROOT = "../shared/data"  # beside a checkout; CNNLAB_DATA overrides


def default_data_root() -> str:
    return os.environ.get("CNNLAB_DATA", DEFAULT_DATA_ROOT)



@dataclass(frozen=True)
class ExperimentConfig:
    experiments: tuple[str, ...] = EXPERIMENTS
    data: str | None = None  # default: DATA_ROOT/cifar10/cifar10-jpg.zip
    data_root: str = field(default_factory=default_data_root)
    seeds: int = 3  # at least this many seeds (0 .. seeds-1) per setting
    budget: float | None = None  # minutes for everything: more seed rounds while they fit
    max_seeds: int = 10  # the most rounds a budget may buy
    # Train and test on the first N images of each class of each split, instead of the
    # design's sample of train and the whole test set (tests, --quick).
    limit_per_class: int | None = None
    epochs: float | None = None  # override every design's epochs (a longer or shorter study)
    full: bool = False  # residual: 20, 32, 44, 56 (default: 20 and 56)
    quick: bool = False  # the lab's --quick: 1 epoch, fewer settings, no verdicts
    threads: int | None = None  # torch threads (with workers: per process; cores / workers)
    workers: int = 1  # processes, each running a group of the experiments (see `run`)
    # An Optuna RDB URL (postgresql://...) shared by the same command on several machines,
    # each of which takes the trials no live process holds (shared.py); default: SQLite in
    # RUN/<name>/study.db, this run's alone.
    storage: str | None = None
    study: str = "experiment"  # each experiment's study is `{study}-{name}` in the storage
    # Seeds of one setting trained together as one batched model where that pays
    # (together.TOGETHER); False: every net alone (`--one-at-a-time`).
    together: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "experiments", tuple(self.experiments))
        if not self.experiments:
            raise CnnlabError(f"name an experiment: {', '.join(EXPERIMENTS)}")
        for name in self.experiments:
            if name not in EXPERIMENTS:
                from cnnlab.errors import suggest

                raise CnnlabError(f"unknown experiment {name!r}{suggest(name, EXPERIMENTS)}; "
                                  f"choose from {', '.join(EXPERIMENTS)}")
        if len(set(self.experiments)) != len(self.experiments):
            raise CnnlabError("an experiment is named twice")
        if self.budget is not None and self.budget <= 0:
            raise CnnlabError(f"--budget must be positive (minutes), not {self.budget}")
        if self.seeds < 1:
            raise CnnlabError(f"--seeds must be at least 1, not {self.seeds}")
        if self.max_seeds < self.seeds:
            raise CnnlabError(f"--max-seeds ({self.max_seeds}) must be at least --seeds "
                              f"({self.seeds})")
        if self.epochs is not None and self.epochs <= 0:
            raise CnnlabError(f"--epochs must be positive, not {self.epochs}")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise CnnlabError("--limit-per-class must be at least 2")
        if self.workers < 1:
            raise CnnlabError(f"--workers must be at least 1, not {self.workers}")
        if not self.study.strip():
            raise CnnlabError("--study must name the study, not be empty")
        if self.storage is not None:
            self._check_shared()

    def _check_shared(self) -> None:
        """What a study shared by several machines cannot do: each machine would decide alone
        what every machine's share is."""
        if not self.storage or not self.storage.strip():
            raise CnnlabError("--storage must be a database URL (e.g. postgresql://...), not "
                              "empty")
        if self.workers > 1:
            raise CnnlabError("--workers with --storage: start the same `cnnlab experiment "
                              "--storage` command once per process instead (they share the "
                              "study like machines do)")
        if self.budget is not None:
            raise CnnlabError("--budget with --storage: each machine would decide alone how "
                              "many seed rounds fit; give --seeds N, the plan every machine "
                              "shares")

    def data_path(self) -> Path:
        return Path(self.data) if self.data else Path(self.data_root) / DEFAULT_DATA

    def design(self, name: str) -> Design:
        d = QUICK if self.quick else DESIGNS[name]
        if self.quick and name in ("filters", "pooling"):
            d = replace(d, image_size=32)
        return replace(d, epochs=self.epochs) if self.epochs else d
