"""How a pretrained model wants its pixels: the eval-time transform, as plain numbers.

It lives under `data/` because decoding applies it (`data/decode.py`); the values come from each
weight's own metadata (`models/pretrained.py`: torchvision's `Weights.transforms`, timm's
`pretrained_cfg`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocess:
    """Eval-time transform: resize the short side, centre-crop a square, normalise."""

    resize_size: int  # short side after resizing, pixels
    crop_size: int  # side of the centre crop fed to the model, pixels
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, float, float]  # per RGB channel, on the [0, 1] scale
    std: tuple[float, float, float]
