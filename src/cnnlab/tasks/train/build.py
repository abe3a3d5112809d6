"""The pieces of one (model, seed) run, built the same way for training and for timing: the
model initialised under its seed, this rank's batches of each epoch, the loss; what one
optimiser step of them costs here; and a model's MACs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.tasks.train.data import norm


def build(recipe, data, model_name: str, seed: int, device: torch.device):
    """(model, batches(epoch), loss_fn) of one run: the model built and initialised under
    `seed` (with the recipe's whitening), this rank's share of each epoch's batches."""
    from cnnlab import dist, recipes
    from cnnlab.data.tensor_batches import iter_batches, normalize, num_batches
    from cnnlab.models.registry import create_model

    info = dist.from_env()
    if recipe.batch_size % info.world_size:
        raise CnnlabError(f"batch size {recipe.batch_size} does not split evenly over "
                          f"{info.world_size} processes")
    per_rank = recipe.batch_size // info.world_size
    n_train = len(data.train_y)
    if num_batches(n_train, per_rank, info.world_size) < 1:
        raise CnnlabError(f"{n_train} training images do not make one batch of "
                          f"{recipe.batch_size}; lower --batch-size")
    mean, std = norm(recipe, data)
    torch.manual_seed(seed)
    options = dict(recipe.model_options)
    options.setdefault("num_classes", data.num_classes)
    model = create_model(model_name, **options)
    if recipe.whiten_images:
        recipes.prepare_model(recipe, model,
                              normalize(data.train_x[: recipe.whiten_images], mean, std,
                                        channels_last=False))
    model = model.to(device=device, memory_format=torch.channels_last)
    augment = recipe.augment

    def batches(epoch: int):
        return iter_batches(data.train_x, data.train_y, per_rank, seed=seed, epoch=epoch,
                            augment=augment, mean=mean, std=std, rank=info.rank,
                            world_size=info.world_size)

    return model, batches, nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def seconds_per_step(recipe, model, batches, loss_fn, precision, device) -> float:
    """Seconds of one optimiser step of this run here, with the recipe's optimiser (timed
    on a copy: the model and the RNGs are left as they were)."""
    from cnnlab import recipes, step_timing

    return step_timing.seconds_per_step(model, lambda m: recipes.make_optimizer(recipe, m),
                                        batches, loss_fn, precision, device)


def sized_seconds_per_step(recipe, model, batches, loss_fn, precision, device,
                           size_shares: list[tuple[int, float]]) -> float:
    """Seconds of one optimiser step averaged over a progressive-resizing schedule: each side
    timed on its own (small maps use the cores less well than their pixels say), weighted by
    its share of the steps (budget.Shape.size_shares). One size of 32 px is a plain timing."""
    from cnnlab.data.progressive import fixed_size

    return sum(share * seconds_per_step(recipe, model, fixed_size(batches, side), loss_fn,
                                        precision, device)
               for side, share in size_shares)


def macs_of(model_name: str, options: dict[str, Any], shape: tuple[int, ...]) -> int:
    from cnnlab.analysis.profile import profile_registered

    return profile_registered(model_name, shape, **options).macs
