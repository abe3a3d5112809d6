"""How a pretrained model wants its pixels: the eval-time transform, as plain numbers.

It lives under `data/` because decoding applies it (`data/decode.py`); the values come from each
weight's own metadata (`models/pretrained.py`: torchvision's `Weights.transforms`, timm's
`pretrained_cfg`).
"""

from __future__ import annotations

from dataclasses import dataclass

# timm's eval crop modes (timm.data.transforms_factory.transforms_imagenet_eval):
#   center  resize the short side to resize_size (aspect kept), centre-crop crop_size
#   squash  resize both sides to resize_size (aspect NOT kept), centre-crop crop_size
#   border  resize the long side to resize_size (aspect kept), pad to crop_size with the mean
#           colour, centre-crop crop_size: nothing of the picture is cut off when crop_pct = 1
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class Preprocess:
    """Eval-time transform: resize (per `crop_mode`), crop a centred square, normalise."""

    resize_size: int  # pixels: the short side (center), both sides (squash), the long side (border)
    crop_size: int  # side of the centre crop fed to the model, pixels
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, float, float]  # per RGB channel, on the [0, 1] scale
    std: tuple[float, float, float]
    crop_mode: str = "center"  # one of CROP_MODES; torchvision's weights are all "center"

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, not {self.crop_mode!r}")
