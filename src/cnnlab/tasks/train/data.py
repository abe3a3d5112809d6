"""The images of a run: loaded once as uint8 tensors (`data/cifar.py`), cut to the config's
subset, size and validation split; and the per-channel statistics they are normalised with."""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.tasks.train.config import TrainConfig


def load_data(config: TrainConfig, reporter):
    """The data set `config` names, as uint8 tensors (decoded once and cached on disk), cut
    to its subset, image size and validation split."""
    from cnnlab import dist
    from cnnlab.data.cifar import (
        downscale,
        first_classes,
        load_cifar_once,
        split_validation,
        subset,
    )

    path = Path(config.data).expanduser()
    if not path.exists():
        raise CnnlabError(f"data not found: {path} (a CIFAR zip, class folders, or the official "
                          "cifar-10-batches-py folder)")
    data = load_cifar_once(path, dist.from_env(), limit_per_class=config.limit_per_class,
                           reporter=reporter)
    if config.classes:
        data = first_classes(data, config.classes)
    if config.train_per_class:
        # Seed 0 whatever the run's seed: every seed and setting of a study sees the same images.
        data = subset(data, per_class=config.train_per_class, seed=0, test_too=False)
    if config.image_size:
        data = downscale(data, config.image_size)
    if config.val_fraction:
        data = split_validation(data, fraction=config.val_fraction, seed=config.seed)
    return data


def norm(recipe, data) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std images are normalised with."""
    return ((0.5,) * 3, (0.5,) * 3) if recipe.normalization == "half" else (data.mean, data.std)
