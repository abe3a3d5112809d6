"""Measuring a model on uint8 images: accuracy and loss in batches of EVAL_BATCH (the per-epoch
curves and the final test), and what such a pass costs per image (for the budget's plan)."""

from __future__ import annotations

import time

import torch
from torch import nn

from cnnlab.hardware import autocast
from cnnlab.tasks.train.data import norm

EVAL_BATCH = 500  # images per evaluation forward pass: bounded memory, ~full speed on a CPU


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device,
             tta: str = "none") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of uint8 images, in batches of EVAL_BATCH."""
    from cnnlab import recipes
    from cnnlab.data.tensor_batches import normalize

    if not len(x):  # a caller's bug: there is no accuracy of no images
        raise ValueError("accuracy() needs at least one image")
    model.eval()
    hits, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        xb = normalize(x[start : start + EVAL_BATCH], mean, std).to(device)
        yb = y[start : start + EVAL_BATCH].to(device)
        logits = recipes.predict(model, xb, tta).float()
        hits += int((logits.argmax(1) == yb).sum())
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
    return hits / len(x), loss / len(x)


def forward_seconds(model: nn.Module, data, recipe, precision: str, device: torch.device,
                    images: int = 2 * EVAL_BATCH) -> float:
    """Seconds per image of an evaluation pass as `accuracy` runs it (batches of EVAL_BATCH,
    under the run's autocast), timed on `images` test images after one untimed batch. A test
    set of at most EVAL_BATCH + `images` is timed whole (after the untimed batch, which may be
    all of it): that pass is the very cost the budget pays for. Without test images (none
    loaded), training images of the same shape stand in."""
    mean, std = norm(recipe, data)
    x, y = data.test_x, data.test_y
    if not len(x):
        x, y = data.train_x, data.train_y
    warm_x, warm_y = x[:EVAL_BATCH], y[:EVAL_BATCH]
    if len(x) > EVAL_BATCH + images:
        x, y = x[EVAL_BATCH : EVAL_BATCH + images], y[EVAL_BATCH : EVAL_BATCH + images]
    was_training = model.training
    with autocast(precision, device):
        accuracy(model, warm_x, warm_y, mean, std, device)  # kernels chosen
        start = time.perf_counter()
        accuracy(model, x, y, mean, std, device)
        seconds = time.perf_counter() - start
    model.train(was_training)
    return seconds / len(x)
