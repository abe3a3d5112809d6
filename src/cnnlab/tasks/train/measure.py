"""Measuring a model on uint8 images: accuracy and loss in batches of EVAL_BATCH (the per-epoch
curves and the final test), and what such a pass costs per image (for the budget's plan).

Each pass measures a copy of the model with every BatchNorm that directly follows a
convolution in a `nn.Sequential` folded into that convolution (`fold_batchnorm`): in eval mode
BatchNorm is a per-channel affine map, so the folded net computes the same function, within
fp32 rounding, without a pass over every activation map."""

from __future__ import annotations

import copy
import itertools
import time

import torch
from torch import nn

from cnnlab.hardware import autocast
from cnnlab.tasks.train.data import norm

# Images per evaluation forward pass. 250, not 500: the small nets' activations then stay in
# the core's cache (BENCHMARKS.md "The experiments step's time", fp32, one thread, us per
# image at 500 -> 250: plain-cnn 4 layers 32x32 1.44x, 8 layers 16x16 1.23x, plain-56 1.09x,
# fast-cifar 1.14x, the 7x7 filters net 0.98x); still bounded memory.
EVAL_BATCH = 250
TIMED_IMAGES = 1000  # images `forward_seconds` times after its untimed batch


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """`model` for evaluation (call in eval mode): a copy in which each `BatchNorm2d` that
    directly follows a `Conv2d` of an `nn.Sequential` (the plain nets, fast-cifar's blocks) is
    folded into the convolution's weight and bias; `model` itself when there is none (then
    nothing is copied). Measured 1.14-1.28x per evaluation image on the plain studies' nets
    (BENCHMARKS.md); logits equal within fp32 rounding (1e-7)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(m: nn.Module):
        for parent in m.modules():
            if isinstance(parent, nn.Sequential):
                names = list(parent._modules)
                for a, b in itertools.pairwise(names):
                    conv, bn = parent._modules[a], parent._modules[b]
                    if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
                            and bn.track_running_stats and bn.running_mean is not None):
                        yield parent, a, b

    if (model.training or hasattr(model, "_orig_mod")
            or any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))
            or next(pairs(model), None) is None):
        # Train-mode BN normalises by the batch: nothing to fold. A compiled model: as it is.
        # Under bf16 autocast a folded weight would round to bf16 otherwise than the conv's
        # product and the BN after it (1e-3, not 1e-7): bf16 passes stay as they were.
        return model
    folded = copy.deepcopy(model)
    for parent, a, b in list(pairs(folded)):
        conv = parent._modules[a]
        fused = fuse_conv_bn_eval(conv, parent._modules[b])
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            fused = fused.to(memory_format=torch.channels_last)
        parent._modules[a], parent._modules[b] = fused, nn.Identity()
    return folded


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, device,
             tta: str = "none") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of uint8 images, in batches of EVAL_BATCH."""
    from cnnlab import recipes
    from cnnlab.data.tensor_batches import normalize

    if not len(x):  # a caller's bug: there is no accuracy of no images
        raise ValueError("accuracy() needs at least one image")
    model.eval()
    model = fold_batchnorm(model)
    hits, loss = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        xb = normalize(x[start : start + EVAL_BATCH], mean, std).to(device)
        yb = y[start : start + EVAL_BATCH].to(device)
        logits = recipes.predict(model, xb, tta).float()
        hits += int((logits.argmax(1) == yb).sum())
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
    return hits / len(x), loss / len(x)


def forward_seconds(model: nn.Module, data, recipe, precision: str, device: torch.device,
                    images: int = TIMED_IMAGES) -> float:
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
