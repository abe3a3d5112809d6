"""Batches straight from in-memory uint8 image tensors: no Dataset, no DataLoader, no per-image
Python. The idea is KellerJordan/cifar10-airbench's loader: keep the whole set as one tensor and
augment whole batches with tensor ops; on a 2-core CPU this leaves both cores to the network.

- Order: `epoch_order(n, seed, epoch)` is a permutation fixed by (seed, epoch) alone, so an epoch
  replays identically after a resume, and every DDP rank computes the same one without talking.
- Sharding: `shard(order, rank, world_size)` gives each rank a disjoint, equal-size share of that
  permutation (every world_size-th index, as torch's DistributedSampler; the last
  `n % world_size` indices of the permutation are left out of that epoch, a different few each
  epoch). `equal=False` keeps them (shares then differ by one): for evaluation.
- Augmentation (`Augment`): random translation by up to `crop_pad` pixels, i.e. a random crop of
  the padded image, and horizontal flips, done together as one gather per batch. Its random
  numbers come from (seed, epoch, rank), so a batch is the same on every re-run.
- Normalisation on the fly: uint8 -> (x/255 - mean) / std in one multiply-add, channels_last by
  default (oneDNN's convolutions want NHWC; the gather produces that layout for free).

`batch_size` here is per process: under DDP the global batch is batch_size * world_size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cnnlab.errors import CnnlabError

PAD_MODES = ("reflect", "zeros")
FLIP_MODES = ("none", "random", "alternate")


@dataclass(frozen=True)
class Augment:
    """Batch augmentation of training images.

    crop_pad: translate each image by a uniform random (dy, dx) in [-crop_pad, crop_pad]^2, i.e.
        crop a random HxW window of the image padded by crop_pad on every side. 4 with zero
        padding is the classic CIFAR recipe (He et al. 2016, section 4.2); airbench uses 2 with
        reflect padding (airbench94.py `translate: 2`, `F.pad(..., 'reflect')`), which invents
        no black borders and suits short runs.
    pad_mode: "reflect" (mirror without repeating the edge pixel, as F.pad's reflect) or "zeros".
    flip: "none"; "random" (each image flipped with probability 1/2 every epoch); "alternate"
        (airbench, Jordan 2024 "94% on CIFAR-10 in 3.29 seconds", section 3.6: each image gets
        a random flip in epoch 0 and the opposite one every following epoch, so over any two
        epochs every image is seen both ways: less redundancy than random flips).
    """

    crop_pad: int = 0
    pad_mode: str = "reflect"
    flip: str = "none"

    def __post_init__(self) -> None:
        if self.crop_pad < 0:
            raise CnnlabError(f"crop_pad must be >= 0, got {self.crop_pad}")
        if self.pad_mode not in PAD_MODES:
            raise CnnlabError(
                f"pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}"
            )
        if self.flip not in FLIP_MODES:
            raise CnnlabError(f"flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip != "none"


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple (seed, epoch, rank, purpose): the same on every process and
    Python version (hash() of a str is salted per process; sha256 is not)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The permutation of range(n) for this epoch: a function of (seed, epoch) only."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(seed, epoch, "order"))


def shard(
    order: torch.Tensor, rank: int = 0, world_size: int = 1, equal: bool = True
) -> torch.Tensor:
    """This rank's share of `order`: every world_size-th index starting at `rank`.

    equal=True: the order is first cut to a multiple of world_size, so every rank gets the same
    count (DDP ranks must take the same number of steps). equal=False: nothing is left out.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise CnnlabError(f"rank {rank} is not in a world of size {world_size}")
    if equal:
        order = order[: len(order) - len(order) % world_size]
    return order[rank::world_size]


def flip_mask(n: int, seed: int, epoch: int, mode: str) -> torch.Tensor | None:
    """Bool [n]: which of the n images of the data set are flipped in `epoch` (None: none)."""
    if mode == "none":
        return None
    if mode == "random":
        return torch.rand(n, generator=generator(seed, epoch, "flip")) < 0.5
    base = torch.rand(n, generator=generator(seed, "flip-alternate")) < 0.5
    return base ^ bool(epoch % 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect out-of-range indices back in, as F.pad(mode='reflect'): -1 -> 1, size -> size-2."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(
    x: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None, pad_mode: str
) -> torch.Tensor:
    """Translate and flip a batch [B, C, H, W] of any dtype in one gather.

    shifts: int [B, 2] (dy, dx): output pixel (i, j) is input pixel (i + dy, j + dx) of the
        padded image's frame, i.e. the window at (pad + dy, pad + dx) of an image padded by pad.
        Out-of-range pixels are reflected (pad_mode="reflect", needs |shift| < H, W) or zero.
    flips: bool [B]: flip those images left-right (after the translation).
    Returns a channels_last tensor (the gather yields [B, H, W, C]; permuting it is free).
    """
    b, _, h, w = x.shape
    rows = torch.arange(h).expand(b, h)
    cols = torch.arange(w).expand(b, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    valid = None
    if shifts is not None:
        rows = rows + shifts[:, :1]
        cols = cols + shifts[:, 1:]
        if pad_mode == "reflect":
            rows, cols = _reflect(rows, h), _reflect(cols, w)
        else:
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(b)[:, None, None]
    out = x[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    if valid is not None:
        out = out * valid[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2)


def augment_batch(
    x: torch.Tensor, augment: Augment, gen: torch.Generator, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Random translation (from `gen`) and the given per-image flips of one batch."""
    shifts = None
    if augment.crop_pad > 0:
        p = augment.crop_pad
        shifts = torch.randint(-p, p + 1, (len(x), 2), generator=gen)
    if shifts is None and flips is None:
        return x
    return crop_flip(x, shifts, flips, augment.pad_mode)


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
    dtype: torch.dtype = torch.float32, channels_last: bool = True,
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> (x / 255 - mean) / std as one multiply-add, in `dtype`."""
    c = x.shape[1]
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, c, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)],
                         dtype=torch.float32).view(1, c, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.addcmul(shift, x.to(torch.float32), scale).contiguous(memory_format=fmt)
    return out if dtype == torch.float32 else out.to(dtype)


def num_batches(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True,
                equal: bool = True) -> int:
    """How many batches `iter_batches` yields per rank (for schedules: total steps)."""
    per_rank = n // world_size if equal else -(-n // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def iter_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    augment: Augment | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    rank: int = 0,
    world_size: int = 1,
    equal: bool = True,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of this rank's share of one epoch.

    x: uint8 [N, C, H, W] (the whole set, in memory); y: int64 [N].
    Order fixed by (seed, epoch); augmentation random numbers by (seed, epoch, rank).
    mean/std given: images come out normalised in `dtype` (channels_last unless told not);
    otherwise as augmented uint8.
    """
    if batch_size < 1:
        raise CnnlabError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise CnnlabError(f"{len(x)} images but {len(y)} labels")
    if (mean is None) != (std is None):
        raise CnnlabError("give both mean and std, or neither")
    mine = shard(epoch_order(len(x), seed, epoch, shuffle), rank, world_size, equal)
    augment = augment if augment is not None and augment.active else None
    flips = flip_mask(len(x), seed, epoch, augment.flip) if augment is not None else None
    gen = generator(seed, epoch, rank, "augment")
    stop = len(mine) - len(mine) % batch_size if drop_last else len(mine)
    for start in range(0, stop, batch_size):
        idx = mine[start : start + batch_size]
        xb = x[idx]
        if augment is not None:
            xb = augment_batch(xb, augment, gen, flips[idx] if flips is not None else None)
        if mean is not None:
            xb = normalize(xb, mean, std, dtype=dtype, channels_last=channels_last)
        yield xb, y[idx]
