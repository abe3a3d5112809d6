"""The one DataLoader set-up for photos: every pass over image files (evaluate, predict,
finetune's checks, logits and training batches, frozen-body features, partial's early stages)
streams through `photo_loader`, so the worker, pinning and prefetch choices are made here once.

    loader = photo_loader(ImageDataset(items, preprocess), workers=2, device=device,
                          batch_size=32, collate=dataset.collate)
    for images, indices, bad in loader: ...

The loader never shuffles and never draws a random number: batches come in the dataset's order,
or as the caller's `batches` list them (finetune draws those per (seed, epoch), so a resume and
every rank see the same ones). Augmentation is seeded per (seed, epoch, image) in the dataset
itself (`data/augment.py`), so the number of workers changes nothing but speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

# Batches each worker decodes ahead of the model. Memory is bounded by
# workers x PREFETCH x batch x 3 x crop^2 x 4 bytes, whatever the folder's size; two keeps the
# model fed when one batch decodes slower than the others (a large JPEG) and no more.
PREFETCH = 2


def photo_loader(dataset: Dataset, *, workers: int, device: torch.device | str = "cpu",
                 batch_size: int | None = None, batches: Sequence[Sequence[int]] | None = None,
                 collate: Callable[[list], Any] | None = None) -> DataLoader:
    """A DataLoader over `dataset` with `workers` decoding processes (0: in this process).

    Give either `batch_size` (consecutive batches in the dataset's order, the last one short)
    or `batches` (lists of dataset indices, yielded in that order). `collate` turns a list of
    samples into a batch (torch's default stacking when None). `device` is where the batches
    go: on CUDA they come in pinned memory.
    """
    if (batch_size is None) == (batches is None):
        raise ValueError("give either batch_size or batches")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, not {workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size if batches is None else 1,
        # A list, not a sampler object: its order is fixed before the first batch.
        batch_sampler=[[int(i) for i in b] for b in batches] if batches is not None else None,
        shuffle=False,  # the order is the caller's (see the module's docstring)
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=PREFETCH if workers > 0 else None,  # torch refuses one without workers
        # Workers start afresh for every pass: finetune sets its training set's epoch before
        # each epoch's iterator, and persistent workers would keep the first epoch's copy (and
        # its augmentation). Starting them costs well under a second next to a pass of photos.
        persistent_workers=False,
        # Pinned (page-locked) host memory lets the copy to the GPU run asynchronously and
        # faster; on the CPU it would only be one more copy. evaluate relied on it; the others
        # now get it too on CUDA.
        pin_memory=torch.device(device).type == "cuda",
    )
