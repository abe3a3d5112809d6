"""Batching decoded images for a DataLoader: bad files travel beside the good ones.

`ImageDataset` decodes each photo for one net; `SharedDecodeDataset` decodes each photo once
for several nets (`decode.decode_many`) and yields one tensor per net: the one place where
`evaluate -m A -m B ...` and `finetune --model auto`'s backbone scoring share their decoding.
With `arrays=True` it yields numpy arrays instead and its collate stacks them with numpy: the
batches of a pass that runs without torch (ONNX Runtime), the same values bit for bit.

The datasets are plain map-style classes (`__len__`, `__getitem__`: all a DataLoader needs), so
that importing this module imports no torch (issue 27 item 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.data.decode import BadImage, load_arrays, load_image, load_images
from cnnlab.data.folders import LabelledImage
from cnnlab.data.preprocess import Preprocess

if TYPE_CHECKING:
    import torch


class ImageDataset:
    """Items -> (image or None, index, reason or None); bad files never raise. arrays: numpy
    arrays and numpy batches (`collate_arrays`) instead of tensors, for a pass without torch."""

    def __init__(self, items: list[LabelledImage], preprocess: Preprocess, draft: bool = True,
                 arrays: bool = False):
        self.items = list(items)
        self.preprocess = preprocess
        self.draft = draft
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            if self.arrays:
                (image,) = load_arrays(self.items[i].path, [self.preprocess], self.draft)
                return image, i, None
            return load_image(self.items[i].path, self.preprocess, self.draft), i, None
        except BadImage as exc:
            return None, i, exc.reason

    def collate(self, batch):
        """`collate_images` with this dataset's image shape, for an all-bad batch."""
        crop = self.preprocess.crop_size
        collate = collate_arrays if self.arrays else collate_images
        return collate(batch, shape=(3, crop, crop))


class SharedDecodeDataset:
    """Items -> ((one image per net) or None, index, reason or None): each photo read and
    decoded once for all the nets (`decode.decode_many`), then resized and cropped by each
    net's own preprocessing; net k's image equals its own `ImageDataset`'s bit for bit.
    arrays: numpy arrays and numpy batches (`collate_arrays`) instead of tensors."""

    def __init__(self, items: list[LabelledImage], preprocesses: Sequence[Preprocess],
                 draft: bool = True, arrays: bool = False):
        if not preprocesses:
            raise ValueError("no preprocessing given: one per net")
        self.items = list(items)
        self.preprocesses = tuple(preprocesses)
        self.draft = draft
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            load = load_arrays if self.arrays else load_images
            return tuple(load(self.items[i].path, self.preprocesses, self.draft)), i, None
        except BadImage as exc:
            return None, i, exc.reason

    def collate(self, batch):
        """(per net: its good images stacked, as `collate_images`), their indices and the bad
        ones [(index, reason)]."""
        per_net = []
        for k, pp in enumerate(self.preprocesses):
            one = [(None if images is None else images[k], i, reason)
                   for images, i, reason in batch]
            collate = collate_arrays if self.arrays else collate_images
            per_net.append(collate(one, shape=(3, pp.crop_size, pp.crop_size)))
        _, indices, bad = per_net[0]
        return [images for images, _, _ in per_net], indices, bad


def collate_images(
    batch, shape: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(good images stacked, their indices as int64, [(index, reason)] for the bad ones).

    When every image of the batch is bad, images is empty: shape (0, *shape), or (0,) when no
    shape is given; check `len(indices)` before running a model.
    """
    import torch

    good = [(img, i) for img, i, reason in batch if reason is None]
    bad = [(i, reason) for img, i, reason in batch if reason is not None]
    if good and torch.utils.data.get_worker_info() is not None:
        # In a DataLoader worker, stack straight into shared memory, as torch's default_collate
        # does. Stacking into ordinary memory and letting the worker's pickler copy it grew each
        # worker's private memory by ~1.5 MB per batch (allocator fragmentation; measured: +160
        # MB per worker over 1,000 photos, flat with this), and costs one more copy.
        first = good[0][0]
        storage = first.untyped_storage()._new_shared(
            len(good) * first.numel() * first.element_size()
        )
        images = first.new_empty(0).set_(storage).view(len(good), *first.shape)
        torch.stack([img for img, _ in good], out=images)
    elif good:
        images = torch.stack([img for img, _ in good])
    else:
        images = torch.empty((0, *shape) if shape else (0,), dtype=torch.float32)
    indices = torch.tensor([i for _, i in good], dtype=torch.long)
    return images, indices, bad


def collate_arrays(
    batch, shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """`collate_images` with numpy: (good images stacked, float32 C-order, their indices as
    int64, [(index, reason)] for the bad ones); for decoding threads feeding ONNX Runtime."""
    good = [(img, i) for img, i, reason in batch if reason is None]
    bad = [(i, reason) for img, i, reason in batch if reason is not None]
    if good:
        images = np.stack([img for img, _ in good])
    else:
        images = np.empty((0, *shape) if shape else (0,), dtype=np.float32)
    return images, np.array([i for _, i in good], dtype=np.int64), bad


def pass_batches(dataset, numpy_pass: bool, *, batch_size: int, workers: int, device=None):
    """The decoded batches of a scoring pass (evaluate, predict), in order. A numpy pass (every
    net on ONNX Runtime): decoding threads of this process (data/threaded.py: they, the decoder
    and ONNX Runtime release the GIL; no worker process holding a copy of torch, less CPU), or
    this thread with `workers=0`. Else a DataLoader's worker processes (data/loaders.py)."""
    if numpy_pass and workers > 0:
        from cnnlab.data.threaded import thread_batches

        return thread_batches(dataset, batch_size=batch_size, collate=dataset.collate,
                              threads=workers)
    if numpy_pass:
        return (dataset.collate([dataset[i] for i in range(j, min(j + batch_size,
                                                                   len(dataset)))])
                for j in range(0, len(dataset), batch_size))
    from cnnlab.data.loaders import photo_loader

    return photo_loader(dataset, workers=workers, device=device, batch_size=batch_size,
                        collate=dataset.collate)
