"""Progressive resizing: train on smaller images first, the data's own size at the end.

A convolutional net's arithmetic per image grows with its pixels, so a step at 16 px costs
about a quarter of one at 32 px (fast-cifar in fp32, one thread: 0.20x at 16 px, 0.46x at
24 px, BENCHMARKS.md "--budget on fp32"). Early in training the net learns coarse features that a
shrunk image still shows; the last steps at full size adapt it (and its BatchNorm statistics)
to the size it is tested at (Howard's progressive resizing in fast.ai's DAWNBench entry, 2018;
Tan & Le, "EfficientNetV2", 2021, section 4). `cnnlab train --budget` uses it through a
budget shape's `sizes` (budget.py).

    batches = progressive(batches, ((0.0, 16), (0.5, 32)), steps_per_epoch, total_steps)

Sizes are a schedule over the run's optimiser steps, not its epochs, so a budget that buys
0.7 epochs still passes through every size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def side_at(sizes: tuple[tuple[float, int], ...], step: int, total_steps: int) -> int:
    """The side (px) of step `step` (0-based) of `total_steps`: the size of the last
    (fraction, side) whose fraction of the steps has been reached; the last step always at the
    last size (the one the net is tested at), however few steps a short run has."""
    if not sizes:
        raise CnnlabError("progressive resizing needs at least one (fraction, side)")
    if step >= total_steps - 1:
        return sizes[-1][1]
    side = sizes[0][1]
    for fraction, px in sizes:
        if step >= fraction * total_steps - 1e-9:
            side = px
    return side


def shrink(x: torch.Tensor, side: int) -> torch.Tensor:
    """Float images [N, C, H, W] resized to side x side (bilinear with antialiasing, which
    averages the pixels a smaller image merges, like PIL's resize), kept channels-last; the
    batch itself when it is that size already."""
    if x.shape[-2:] == (side, side):
        return x
    out = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def progressive(batches: Batches, sizes: tuple[tuple[float, int], ...], steps_per_epoch: int,
                total_steps: int) -> Batches:
    """`batches(epoch)` with each step's images shrunk to `side_at` that step. The step is
    counted from the epoch's first batch, so a run resumed mid-epoch (the engine skips the
    batches it trained) sees the same sizes."""
    if steps_per_epoch < 1 or total_steps < 1:
        raise CnnlabError("progressive resizing needs at least one step per epoch and in all")

    def resized(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(batches(epoch)):
            yield shrink(x, side_at(sizes, epoch * steps_per_epoch + i, total_steps)), y

    return resized


def fixed_size(batches: Batches, side: int) -> Batches:
    """`batches(epoch)` with every image at side x side (timing one size of a schedule)."""

    def resized(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches(epoch):
            yield shrink(x, side), y

    return resized
