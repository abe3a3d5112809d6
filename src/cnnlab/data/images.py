"""Labelled photo folders: find the images and their labels, decode them safely, batch them.

Where labels come from (`discover`), in this order of preference when `labels="auto"`:

1. class sub-folders: `ROOT/<label>/**/*.jpg`;
2. a CSV of `file,label` rows (`ROOT/labels.csv`, or an explicit file); paths relative to ROOT;
3. the file name itself: `volcano.jpg` -> "volcano", `n01440764_tench.JPEG` -> "n01440764_tench".

Bad-file policy: nothing a folder contains may crash a run. Files that are not images (by
extension) are skipped at discovery; files that fail to decode (empty, truncated, corrupt, a
decompression bomb, unreadable) raise `BadImage` with a short reason in `load_image`, which
`ImageDataset` turns into a `(None, index, reason)` item so that a DataLoader batch carries the
good images and the reasons for the bad ones side by side.

Decoding matches torchvision's / timm's eval transform (Resize(short side) with antialiasing,
CenterCrop, ToTensor, Normalize) on a `convert("RGB")` image; `tests/test_images.py` proves it
against torchvision itself.
"""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.models.pretrained import Preprocess

# Lower-case suffixes Pillow decodes that photo folders actually hold.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
LABEL_SOURCES = ("auto", "folders", "csv", "filename")
DEFAULT_CSV = "labels.csv"
MAX_ASPECT = 100  # long side / short side beyond which an image is refused (panoramas are ~10)

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str  # raw label string, as found (folder name, CSV cell, file stem)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    items: list[LabelledImage]
    skipped: list[Skipped]
    label_source: str  # "folders" | "csv" | "filename"


# ---------------------------------------------------------------------------------------------
# Discovery


def label_from_filename(name: str) -> str:
    """The label a file name carries: its stem. 'great_white_shark_2.png' -> 'great_white_shark_2'.

    Counters (`_2`, ` (1)`) are kept here and dropped by label resolution (`data.imagenet`),
    which tries the label as written first, so a name is never cut short by mistake.
    """
    return Path(name).stem.strip()


def _is_hidden(path: Path, root: Path) -> bool:
    # .DS_Store, .ipynb_checkpoints/, .git/: tool litter, not data; ignored rather than reported.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _walk(folder: Path, root: Path, skipped: list[Skipped]) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path (deterministic across file systems).

    Symbolic links to folders are followed, once each (a link cycle would otherwise recurse
    forever); a folder that cannot be listed is reported in `skipped`, not silently dropped.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        where = _rel(Path(err.filename), root) if err.filename else str(folder)
        skipped.append(Skipped(where, f"cannot read folder ({err.strerror or err})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(p for p in found if not _is_hidden(p, root))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _classify(path: Path, root: Path, label: str, items: list, skipped: list) -> None:
    """Append to items or skipped: a non-image or a dangling link is skipped with its reason."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kind = f"'{path.suffix}'" if path.suffix else "no extension"
        skipped.append(Skipped(_rel(path, root), f"not an image file ({kind})"))
    elif not path.exists():
        skipped.append(Skipped(_rel(path, root), "broken symbolic link"))
    elif not label:
        skipped.append(Skipped(_rel(path, root), "empty label"))
    else:
        items.append(LabelledImage(path, label))


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_images(folder: Path) -> bool:
    """Whether any image file lies somewhere under `folder` (stops at the first one)."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            return True
    return False


def _from_folders(root: Path) -> Discovery:
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    for path in _walk(root, root, skipped):
        if path.parent == root:
            skipped.append(Skipped(path.name, "not inside a class sub-folder"))
        else:
            _classify(path, root, path.relative_to(root).parts[0], items, skipped)
    return Discovery(items, skipped, "folders")


def _from_filenames(root: Path) -> Discovery:
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    for path in _walk(root, root, skipped):
        _classify(path, root, label_from_filename(path.name), items, skipped)
    return Discovery(items, skipped, "filename")


def _from_csv(root: Path, csv_path: Path) -> Discovery:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"cannot read labels file {csv_path}: {exc}") from exc
    items: list[LabelledImage] = []
    skipped: list[Skipped] = []
    listed: set[Path] = set()
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < 2:
            skipped.append(Skipped(f"{csv_path.name}:{lineno}", "expected 'file,label'"))
            continue
        name, label = row[0].strip(), row[1].strip()
        if lineno == 1 and name.lower() in {"file", "filename", "path", "image"}:
            continue  # header row
        # normpath: "./a.jpg" and "a.jpg" are one file (not resolve(): keep symlinked names).
        path = Path(os.path.normpath(Path(name) if Path(name).is_absolute() else root / name))
        if path in listed:
            skipped.append(Skipped(_rel(path, root), f"listed twice in {csv_path.name}"))
            continue
        listed.add(path)
        if not path.exists() and not path.is_symlink():
            skipped.append(Skipped(_rel(path, root), f"listed in {csv_path.name} but not found"))
            continue
        _classify(path, root, label, items, skipped)
    # Images beside the CSV that it does not name are reported, so none is dropped silently.
    for path in _walk(root, root, skipped):
        path = Path(os.path.normpath(path))
        if (path not in listed and path != csv_path
                and path.suffix.lower() in IMAGE_EXTENSIONS):
            skipped.append(Skipped(_rel(path, root), f"no label: not listed in {csv_path.name}"))
    items.sort(key=lambda it: it.path)
    return Discovery(items, skipped, "csv")


def discover(root: Path, labels: str = "auto", csv_path: Path | None = None) -> Discovery:
    """Find the labelled images under `root`.

    labels: "auto" | "folders" | "csv" | "filename". auto: an explicit `csv_path` if given, else
    class sub-folders if there are any, else `root/labels.csv` if present, else file names.
    Raises CnnlabError for a missing or empty folder, or when it holds no usable image.
    """
    if labels not in LABEL_SOURCES:
        choices = ", ".join(LABEL_SOURCES)
        raise CnnlabError(f"unknown label source {labels!r}; choose one of {choices}")
    root = Path(root).expanduser()
    if not root.exists():
        raise CnnlabError(f"folder not found: {root}")
    if not root.is_dir():
        raise CnnlabError(f"not a folder: {root} (give the folder that holds the photos)")
    try:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    except PermissionError as exc:
        raise CnnlabError(f"cannot read folder {root}: permission denied") from exc
    if not entries:
        raise CnnlabError(f"folder is empty: {root}")
    if csv_path is not None:
        csv_path = Path(csv_path).expanduser()
        if not csv_path.is_file():
            raise CnnlabError(f"labels file not found: {csv_path}")

    source = labels
    if labels == "auto":
        # An explicit CSV is the user's stated intent, so it wins over folder structure.
        if csv_path is not None:
            source = "csv"
        elif any(_holds_images(d) for d in _class_folders(root)):
            # Only sub-folders with images count: an empty "thumbs/" beside flat photos does not
            # turn a file-name folder into a class-folder one.
            source = "folders"
        elif (root / DEFAULT_CSV).is_file():
            source = "csv"
        else:
            source = "filename"

    if source == "folders":
        if not _class_folders(root):
            raise CnnlabError(f"no class sub-folders in {root} (expected {root}/<label>/*.jpg)")
        found = _from_folders(root)
    elif source == "csv":
        path = csv_path if csv_path is not None else root / DEFAULT_CSV
        if not path.is_file():
            raise CnnlabError(f"labels file not found: {path} (expected rows 'file,label')")
        found = _from_csv(root, path)
    else:
        found = _from_filenames(root)

    if not found.items:
        detail = ""
        if found.skipped:
            first = found.skipped[0]
            detail = f"; {len(found.skipped)} file(s) skipped, e.g. {first.path}: {first.reason}"
        raise CnnlabError(
            f"no images to evaluate in {root} (labels from {found.label_source}){detail}"
        )
    return found


# ---------------------------------------------------------------------------------------------
# Decoding


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


def _decode(path: Path, preprocess: Preprocess, draft: bool) -> Image.Image:
    """Open, decode and resize; Pillow errors propagate to `load_image` for classification."""
    with Image.open(path) as im:
        # Animated GIF / APNG / multi-page TIFF / MPO: Pillow opens on the first frame, the
        # picture people see (no seek: counting the frames would read the whole file).
        if draft and im.format in ("JPEG", "MPO"):  # MPO: phones' multi-picture JPEG
            # JPEG can decode at 1/2, 1/4 or 1/8 scale in the DCT domain, far faster than a full
            # decode. Ask for a size whose short side is still >= resize_size (integer ceil, no
            # float rounding), so the final antialiased resize still only shrinks: pixels differ
            # slightly from a full decode (the DCT reduction is a box-like filter), the content
            # does not. Pillow only reduces by whole factors, so nothing happens below 2x.
            w, h = im.size
            short, target = min(w, h), preprocess.resize_size
            if short >= 2 * target:
                im.draft(im.mode, (-(-w * target // short), -(-h * target // short)))
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
    size = _resized_size(*rgb.size, preprocess.resize_size)
    if size != rgb.size:
        # Pillow's resize filters always antialias when shrinking: torchvision antialias=True.
        rgb = rgb.resize(size, _INTERPOLATION[preprocess.interpolation])
    return rgb


def _center_crop(arr: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's CenterCrop: offsets round((size - crop) / 2); zero padding (black, as
    torchvision pads) when the resized image is smaller than the crop (resize_size < crop_size)."""
    h, w = arr.shape[:2]
    if h < crop or w < crop:
        pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
        arr = np.pad(arr, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        h, w = arr.shape[:2]
    top = round((h - crop) / 2.0)
    left = round((w - crop) / 2.0)
    return arr[top : top + crop, left : left + crop]


def load_image(path: Path, preprocess: Preprocess, draft: bool = True) -> torch.Tensor:
    """Decode one image into a float32 (3, crop, crop) tensor, normalised; BadImage if unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if preprocess.interpolation not in _INTERPOLATION:
        raise ValueError(f"unsupported interpolation {preprocess.interpolation!r}")
    try:
        # Pillow warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises above
        # twice that. Both mean "refuse": a 90-megapixel decode costs ~270 MB and seconds per
        # file. The filter is set inside catch_warnings, which restores the caller's filters on
        # exit, so nothing leaks; record=True also keeps Pillow's other warnings (bad EXIF,
        # palette transparency) from flooding the log of a whole folder.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            rgb = _decode(path, preprocess, draft)
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

    arr = _center_crop(np.asarray(rgb, dtype=np.uint8), preprocess.crop_size)
    return torch.from_numpy(_normalise(arr, preprocess.mean, preprocess.std))


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


# ---------------------------------------------------------------------------------------------
# Batching


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
