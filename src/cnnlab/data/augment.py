"""Training-time images: random resized crop + horizontal flip, reproducible per (seed, epoch).

The crop follows torchvision's `RandomResizedCrop.get_params` draw for draw (tests compare the
two), but from a generator seeded by (seed, epoch, image index) instead of the global RNG, so an
image's augmentation does not depend on the DataLoader's worker count or on a resume.

The photo is first decoded as for evaluation (`decode.decode_resized`: upright RGB, short side
resized to the weights' resize size, JPEG draft decoding), and the random crop is taken from
that: a crop of 25% of the area then comes from a region of ~128 x 170 pixels of a 256-pixel
image, slightly softer than a crop of the full-resolution photo, for a decode several times
faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.data.decode import _INTERPOLATION, BadImage, decode_resized, load_image, to_tensor
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Augment:
    # Share of the image's area a crop covers. torchvision's default (0.08, 1) is made for
    # ImageNet from scratch; small-data fine-tuning keeps most of the object (timm's fine-tuning
    # recipes and the fast.ai defaults use 0.25-0.35 as the lower bound).
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop (torchvision's)
    flip: float = 0.5  # probability of a horizontal flip


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop: torchvision's algorithm, on generator `g`."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop of the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(rgb: Image.Image, preprocess: Preprocess, aug: Augment,
            g: torch.Generator) -> torch.Tensor:
    """Random resized crop to the model's input size, maybe flipped, normalised."""
    top, left, h, w = crop_box(rgb.width, rgb.height, aug.scale, aug.ratio, g)
    size = preprocess.crop_size
    out = rgb.crop((left, top, left + w, top + h)).resize(
        (size, size), _INTERPOLATION[preprocess.interpolation]
    )
    if torch.rand(1, generator=g).item() < aug.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(np.asarray(out, dtype=np.uint8), preprocess)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)


class TrainImages(torch.utils.data.Dataset):
    """(image tensor, class index) for training: augmented when `aug` is given, else the
    evaluation transform. Files were checked before training (bad ones dropped); one that
    breaks during training (changed on disk) stops the run with its name."""

    def __init__(self, paths: list[Path], targets: list[int], preprocess: Preprocess,
                 aug: Augment | None, seed: int = 0, draft: bool = True):
        self.paths, self.targets = list(paths), list(targets)
        self.preprocess, self.aug, self.seed, self.draft = preprocess, aug, seed, draft
        self.epoch = 0  # set before each epoch's DataLoader iterator is created

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            if self.aug is None:
                x = load_image(self.paths[i], self.preprocess, self.draft)
            else:
                rgb = decode_resized(self.paths[i], self.preprocess, self.draft)
                x = augment(rgb, self.preprocess, self.aug,
                            sample_generator(self.seed, self.epoch, i))
        except BadImage as exc:
            raise CnnlabError(
                f"{self.paths[i]} could be read before training but not now ({exc.reason}); "
                "did it change on disk?"
            ) from None
        return x, self.targets[i]
