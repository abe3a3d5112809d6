"""Decoding one image safely into the tensor a pretrained model expects.

Bad-file policy: nothing a folder contains may crash a run. Files that fail to decode (empty,
truncated, corrupt, a decompression bomb, unreadable) raise `BadImage` with a short reason in
`load_image`; `data/batching.py` turns that into a `(None, index, reason)` item so that a batch
carries the good images and the reasons for the bad ones side by side.

Decoding matches torchvision's / timm's eval transform (Resize(short side) with antialiasing,
CenterCrop, ToTensor, Normalize) on a `convert("RGB")` image; `tests/test_images.py` proves it
against torchvision itself. timm's other two crop modes (`Preprocess.crop_mode`) are matched too,
proved against timm's own `transforms_imagenet_eval`: "squash" resizes both sides to
resize_size (`Resize((s, s))`), "border" resizes the long side to resize_size and pads to the
crop with the mean colour (`ResizeKeepRatio(longest=1)` + `CenterCropOrPad(fill=mean)`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.data.preprocess import Preprocess

if TYPE_CHECKING:  # tensors only for PyTorch's callers: a numpy pass never imports torch
    import torch

MAX_ASPECT = 100  # long side / short side beyond which an image is refused (panoramas are ~10)

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}



class BadImage(Exception):
    """A file that cannot be used as an image; `reason` is short and meant for people."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    Alpha is composited on white rather than dropped: under fully transparent pixels the stored
    colour is arbitrary (often black, sometimes left-over paint), so `convert("RGB")` shows the
    model pixels nobody sees; viewers and web pages show transparency on white, and cut-out
    objects on white are what ImageNet's product photos look like.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG, TIFF): Pillow's convert clips at 255 instead of scaling,
        # which turns almost every pixel white; scale 0..65535 to 0..255 (65535 / 255 = 257).
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if np.nanmax(arr) <= 1.0:  # float images are conventionally in [0, 1]
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's own conversion, as torchvision's loader uses.
    return im.convert("RGB")


def _resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """Output size of torchvision's Resize(int): short side = `short`, long side truncated."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _target_size(width: int, height: int, preprocess: Preprocess) -> tuple[int, int]:
    """(width, height) after the resize step of `preprocess.crop_mode`."""
    s = preprocess.resize_size
    if preprocess.crop_mode == "squash":
        return s, s  # torchvision Resize((s, s)): the aspect ratio is not kept
    if preprocess.crop_mode == "border":
        # timm ResizeKeepRatio(longest=1.0): ratio = max(h / s, w / s); round(side / ratio).
        ratio = max(height / s, width / s)
        return round(width / ratio), round(height / ratio)
    return _resized_size(width, height, s)


def _draft_request(width: int, height: int, preprocess: Preprocess) -> tuple[int, int] | None:
    """The size to ask JPEG draft decoding for, so that the resize of `preprocess` still only
    shrinks; None when no whole reduction factor fits (the picture is under 2x its target).

    JPEG can decode at 1/2, 1/4 or 1/8 scale in the DCT domain, far faster than a full decode.
    Ask for a size whose short side is still >= resize_size (integer ceil, no float rounding),
    so the final antialiased resize still only shrinks: pixels differ slightly from a full
    decode (the DCT reduction is a box-like filter), the content does not. Pillow only reduces
    by whole factors, so nothing happens below 2x."""
    w, h = width, height
    if preprocess.crop_mode == "center":
        short, target = min(w, h), preprocess.resize_size
        if short >= 2 * target:
            return -(-w * target // short), -(-h * target // short)
        return None
    tw, th = _target_size(w, h, preprocess)
    if w >= 2 * tw and h >= 2 * th:  # Pillow picks a scale with both sides >= these
        return tw, th
    return None


def _draft_scale(width: int, height: int, request: tuple[int, int] | None) -> int:
    """The reduction factor (1, 2, 4 or 8) Pillow's JpegImageFile.draft picks for `request`:
    the largest of 8/4/2/1 not above min(width // w, height // h) (Pillow 13, JpegImagePlugin)."""
    if request is None:
        return 1
    most = min(width // request[0], height // request[1])
    return next(s for s in (8, 4, 2, 1) if most >= s or s == 1)


def _plan(im: Image.Image, preprocesses: Sequence[Preprocess], draft: bool
          ) -> tuple[list[int], list[tuple[int, int] | None]]:
    """Per preprocess: the JPEG reduction factor its own decode uses, and its draft request."""
    if not (draft and im.format in ("JPEG", "MPO")):  # MPO: phones' multi-picture JPEG
        return [1] * len(preprocesses), [None] * len(preprocesses)
    w, h = im.size
    requests = [_draft_request(w, h, pp) for pp in preprocesses]
    return [_draft_scale(w, h, r) for r in requests], requests


def _load(im: Image.Image, request: tuple[int, int] | None) -> Image.Image:
    """Decode an opened image (JPEG draft at `request` when given), upright RGB."""
    # Animated GIF / APNG / multi-page TIFF / MPO: Pillow opens on the first frame, the
    # picture people see (no seek: counting the frames would read the whole file).
    if request is not None:
        im.draft(im.mode, request)
    im.load()
    # Phones store portrait photos landscape plus an EXIF rotation; show the model the
    # upright picture, as every viewer does. A malformed EXIF block is ignored, not fatal:
    # the pixels themselves are fine.
    with contextlib.suppress(Exception):  # Pillow raises assorted types on broken EXIF
        ImageOps.exif_transpose(im, in_place=True)
    rgb = _to_rgb(im)
    if max(rgb.size) > MAX_ASPECT * min(rgb.size):
        # A 1 x 100000 strip passes the pixel-count check but would resize to 256 x 25.6 M:
        # gigabytes for a picture no ImageNet model can read.
        raise BadImage(f"extreme aspect ratio ({rgb.size[0]} x {rgb.size[1]} pixels)")
    return rgb


def _resize_for(rgb: Image.Image, preprocess: Preprocess) -> Image.Image:
    """The resize step of `preprocess` on a decoded picture."""
    size = _target_size(*rgb.size, preprocess)
    if size != rgb.size:
        # Pillow's resize filters always antialias when shrinking: torchvision antialias=True.
        rgb = rgb.resize(size, _INTERPOLATION[preprocess.interpolation])
    return rgb


def _decode(path: Path, preprocesses: Sequence[Preprocess], draft: bool) -> list[Image.Image]:
    """Open, decode once per distinct JPEG reduction factor (finest first) and resize for each
    preprocess; Pillow errors propagate to `decode_many` for classification."""
    with Image.open(path) as im:
        scales, requests = _plan(im, preprocesses, draft)
        finest = min(scales)
        decoded = {finest: _load(im, requests[scales.index(finest)])}
    for scale in sorted(set(scales) - {finest}):  # Pillow drafts an opened image only once
        with Image.open(path) as im:
            decoded[scale] = _load(im, requests[scales.index(scale)])
    return [_resize_for(decoded[s], pp) for s, pp in zip(scales, preprocesses, strict=True)]


def _pad_fill(preprocess: Preprocess) -> tuple[int, int, int]:
    """Colour of the padding: black for center/squash (torchvision's CenterCrop pads zeros), the
    mean colour for border (timm: fill = round(255 * mean), so padding normalises to ~0)."""
    if preprocess.crop_mode == "border":
        r, g, b = (round(255 * m) for m in preprocess.mean)
        return r, g, b
    return 0, 0, 0


def _center_crop(arr: np.ndarray, crop: int, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """torchvision's CenterCrop / timm's CenterCropOrPad: offsets round((size - crop) / 2);
    padded with `fill` (left/top get the smaller half) when the resized image is smaller."""
    h, w = arr.shape[:2]
    if h < crop or w < crop:
        pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
        padded = np.empty((h + pad_h, w + pad_w, 3), dtype=arr.dtype)
        padded[...] = np.asarray(fill, dtype=arr.dtype)
        padded[pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w] = arr
        arr = padded
        h, w = arr.shape[:2]
    top = round((h - crop) / 2.0)
    left = round((w - crop) / 2.0)
    return arr[top : top + crop, left : left + crop]


def decode_resized(path: Path, preprocess: Preprocess, draft: bool = True) -> Image.Image:
    """Decode one image, upright RGB, its short side resized to `preprocess.resize_size`;
    BadImage if unusable. The common first step of `load_image` and of training-time
    augmentation (`data/augment.py`)."""
    return decode_many(path, (preprocess,), draft)[0]


def decode_many(path: Path, preprocesses: Sequence[Preprocess], draft: bool = True
                ) -> list[Image.Image]:
    """Decode one image for several nets' preprocessing at once and resize it for each
    (`cnnlab evaluate -m A -m B`, `finetune --model auto`): for most photos one decode however
    many nets look at it, each net's pixels exactly those of its own `decode_resized`;
    BadImage if unusable.

    With JPEG draft decoding each net has its own reduction factor (the largest that keeps
    its resize a shrink). Where the nets' factors agree -- most photos: 245 of the 250 sample
    photos and 394 of hymenoptera's 398 for Lite0/1/2 -- the photo is decoded once. Where they
    do not (e.g. a short side in [512, 584) px: Lite0's 256-px resize drafts at 1/2, Lite2's 292
    cannot), it is decoded once per distinct factor, finest first: resizing Lite0 from the
    finer decode instead would change its pixels (up to 103 levels at edges, mean 7 on a
    sample photo) and, on the fox terrier, its fifth class."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    for pp in preprocesses:
        if pp.interpolation not in _INTERPOLATION:
            raise ValueError(f"unsupported interpolation {pp.interpolation!r}")
    try:
        # Pillow warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises above
        # twice that. Both mean "refuse": a 90-megapixel decode costs ~270 MB and seconds per
        # file. The filter is set inside catch_warnings, which restores the caller's filters on
        # exit, so nothing leaks; record=True also keeps Pillow's other warnings (bad EXIF,
        # palette transparency) from flooding the log of a whole folder.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pictures = _decode(path, preprocesses, draft)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadImage(
            f"too many pixels (over {Image.MAX_IMAGE_PIXELS:,}): refused as a decompression bomb"
        ) from None
    except PermissionError:
        raise BadImage("cannot read file: permission denied") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised or corrupt file format)") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise BadImage("truncated image (file ends early)") from None
        raise BadImage(f"corrupt image data ({msg or type(exc).__name__})") from None
    except BadImage:
        raise
    except Exception as exc:
        # Pillow's decoders raise many types on malformed input (SyntaxError, ValueError,
        # struct.error, IndexError, EOFError, ...); all mean the same thing for this file.
        raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None

    return pictures


def load_pixels(path: Path, preprocess: Preprocess, draft: bool = True) -> np.ndarray:
    """The model's view of one image as HWC uint8 pixels: decoded, resized and cropped, not yet
    normalised (what `load_image` feeds the model, and what a class-activation map is drawn
    on); BadImage if unusable."""
    rgb = decode_resized(path, preprocess, draft)
    return _center_crop(np.asarray(rgb, dtype=np.uint8), preprocess.crop_size,
                        _pad_fill(preprocess))


def load_image(path: Path, preprocess: Preprocess, draft: bool = True) -> torch.Tensor:
    """Decode one image into a float32 (3, crop, crop) tensor, normalised; BadImage if unusable."""
    return to_tensor(load_pixels(path, preprocess, draft), preprocess)


def load_images(path: Path, preprocesses: Sequence[Preprocess], draft: bool = True
                ) -> list[torch.Tensor]:
    """`load_image` for several nets from one decode (`decode_many`): one normalised tensor per
    preprocess, each equal to its own `load_image`; BadImage if unusable."""
    import torch

    return [torch.from_numpy(a) for a in load_arrays(path, preprocesses, draft)]


def load_arrays(path: Path, preprocesses: Sequence[Preprocess], draft: bool = True
                ) -> list[np.ndarray]:
    """`load_images` as numpy arrays (float32, CHW), for a forward pass that runs without torch
    (ONNX Runtime: models/inference.Forward.numpy): the same values bit for bit."""
    pictures = decode_many(path, preprocesses, draft)
    return [normalised(_center_crop(np.asarray(rgb, dtype=np.uint8), pp.crop_size,
                                    _pad_fill(pp)), pp)
            for rgb, pp in zip(pictures, preprocesses, strict=True)]


def normalised(arr: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """HWC uint8 pixels -> the normalised CHW float32 array a model reads (ToTensor + Normalize
    with the weights' mean and std); `to_tensor` wraps it in a tensor."""
    return _normalise(arr, preprocess.mean, preprocess.std)


def to_tensor(arr: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """HWC uint8 pixels -> the normalised CHW float32 tensor a model reads (ToTensor +
    Normalize with the weights' mean and std)."""
    import torch

    return torch.from_numpy(normalised(arr, preprocess))


def _normalise(arr: np.ndarray, mean, std) -> np.ndarray:
    """ToTensor + Normalize: HWC uint8 -> CHW float32 (v / 255 - mean) / std, bit for bit.

    A uint8 channel has only 256 values, so the same float32 operations are done once per value
    into a 3 x 256 table and the image is a table look-up: about 2x faster than the arithmetic
    over 150 k pixels (2.9 vs 6.3 ms per 224 x 224 image on this 2-core machine). Not in torch:
    its intra-op threads made such small ops far slower on a busy machine (22 ms).
    """
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1)
    table = (np.arange(256, dtype=np.float32)[None, :] / np.float32(255) - m) / s
    out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(table[c], arr[:, :, c], out=out[c])
    return out
