"""What a trial measures besides its accuracy: whether it had stopped learning
(`plateau_share`, `still_learning`), and the residual study's per-layer gradient norms on one
fixed batch (`conv_grad_norms`, `fixed_batch`)."""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

from cnnlab.tasks.experiment.designs import GRAD_BATCH

# A trial "had stopped learning" when less than this share of its training-loss drop came in
# its last quarter of steps. With a schedule that anneals to zero some drop always comes last;
# the nets of the default designs end at 0.02-0.10, a net stopped halfway at 0.25-0.40.
PLATEAU_SHARE = 0.15
CHANCE_MARGIN = 0.10  # ... and its training accuracy is at least 10 points above chance


def conv_grad_norms(model, x, y) -> list[float]:
    """L2 norm of the loss gradient of every conv weight, in forward order, for one batch in
    training mode (BatchNorm on batch statistics, as in training), computed on a copy so that
    the model and its running statistics stay as they were. fp32, no autocast."""
    import torch
    from torch import nn

    m = copy.deepcopy(model).float().train()
    m.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    return [float(mod.weight.grad.norm()) for mod in m.modules()
            if isinstance(mod, nn.Conv2d) and mod.weight.grad is not None]


# The floor of a gradient norm on a log scale. The norms are computed in fp32, where a norm
# that is not 0 is at least the smallest positive (subnormal) float32, 2**-149 ~ 1.4e-45; a
# norm of exactly 0 (every gradient of the layer underflowed or died: the vanishing case the
# residual study exists to measure) is counted as that value. Not -inf, which would turn the
# seeds' mean and Welch interval into nan; not left out, which would drop exactly the seeds
# that show the vanishing. So 0 reads as log10 = -44.85, below any norm fp32 can hold, and one
# such seed among others widens the interval rather than deciding it alone.
GRAD_FLOOR = 2.0 ** -149


def log10_norm(norm: float, floor: float = GRAD_FLOOR) -> float:
    """log10 of a gradient norm, a norm of 0 (or below the floor) read as `floor`."""
    return math.log10(max(norm, floor))


def fixed_batch(data, recipe, size: int = GRAD_BATCH) -> tuple[Any, Any]:
    """`size` training images drawn at random with a fixed seed (the files are sorted by
    class, so the first ones would all be one class), normalised as training normalises them:
    the same batch for every net."""
    import torch

    from cnnlab.data.tensor_batches import normalize

    mean, std = ((0.5,) * 3, (0.5,) * 3) if recipe.normalization == "half" else (data.mean,
                                                                                   data.std)
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    idx = idx[:size]
    return normalize(data.train_x[idx], mean, std, channels_last=False), data.train_y[idx]



def plateau_share(losses: list[float]) -> float | None:
    """The share of a run's training-loss drop that came in its last quarter of steps: (mean
    loss of the third quarter - mean of the last quarter) / (first logged loss - mean of the
    last quarter). Near 0: the loss had flattened; large: it was still falling. None when too
    few points were logged or the loss never fell."""
    n = len(losses)
    if n < 8:
        return None
    third = statistics.fmean(losses[n // 2: 3 * n // 4])
    last = statistics.fmean(losses[3 * n // 4:])
    total = losses[0] - last
    if total <= 0:
        return None
    return (third - last) / total


def still_learning(share: float | None, train_accuracy: float | None, classes: int) -> bool:
    """Whether a trial had not finished learning: its loss still falling at the end
    (PLATEAU_SHARE), or its training accuracy barely above chance (a net that never started
    also has a flat loss)."""
    if share is None or share > PLATEAU_SHARE:
        return True
    return train_accuracy is not None and train_accuracy < 1 / classes + CHANCE_MARGIN
