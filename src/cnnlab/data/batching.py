"""Batching decoded images for a DataLoader: bad files travel beside the good ones."""

from __future__ import annotations

import torch

from cnnlab.data.decode import BadImage, load_image
from cnnlab.data.folders import LabelledImage
from cnnlab.data.preprocess import Preprocess


class ImageDataset(torch.utils.data.Dataset):
    """Items -> (image or None, index, reason or None); bad files never raise."""

    def __init__(self, items: list[LabelledImage], preprocess: Preprocess, draft: bool = True):
        self.items = list(items)
        self.preprocess = preprocess
        self.draft = draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return load_image(self.items[i].path, self.preprocess, self.draft), i, None
        except BadImage as exc:
            return None, i, exc.reason

    def collate(self, batch):
        """`collate_images` with this dataset's image shape, for an all-bad batch."""
        crop = self.preprocess.crop_size
        return collate_images(batch, shape=(3, crop, crop))


def collate_images(
    batch, shape: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(good images stacked, their indices as int64, [(index, reason)] for the bad ones).

    When every image of the batch is bad, images is empty: shape (0, *shape), or (0,) when no
    shape is given; check `len(indices)` before running a model.
    """
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
