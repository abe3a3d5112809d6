"""Reading each CIFAR-style source into uint8 arrays (`data/cifar.py` keeps the result, caches
it and cuts subsets): telling the layouts apart, listing a class tree (in a zip, read in place,
or in folders), decoding its images in parallel chunks (a bad file skipped with its reason),
the official python pickles of CIFAR-10 and CIFAR-100, and downloading CIFAR-10."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cnnlab.data.decode import _to_rgb
from cnnlab.data.folders import IMAGE_EXTENSIONS
from cnnlab.errors import CnnlabError
from cnnlab.progress import Reporter

SPLITS = ("train", "test")
IMAGE_SIZE = 32  # CIFAR-10/100: 32 x 32 RGB
CIFAR10_OFFICIAL = "cifar-10-batches-py"
CIFAR100_OFFICIAL = "cifar-100-python"
CHUNK = 1000  # images per decoding task: large enough to amortise IPC, small for steady progress

# ---------------------------------------------------------------------------------------------
# Layouts


def detect_layout_or_none(path: Path) -> tuple[str, Path] | None:
    try:
        return detect_layout(path)
    except CnnlabError:
        return None


def detect_layout(path: Path) -> tuple[str, Path]:
    """("zip" | "official" | "folders", the path to read); CnnlabError when it is none of them."""
    if not path.exists():
        raise CnnlabError(f"data not found: {path}")
    if path.is_file():
        if zipfile.is_zipfile(path):
            return "zip", path
        raise CnnlabError(f"{path} is a file but not a zip (expected a .zip of train/ and test/)")
    for name in (CIFAR10_OFFICIAL, CIFAR100_OFFICIAL):
        if (path / name).is_dir():
            return "official", path / name
    official_100 = (path / "meta").is_file() and (path / "train").is_file()
    if (path / "batches.meta").is_file() or official_100:
        return "official", path
    if (path / "train").is_dir() or (path / "test").is_dir():
        missing = [s for s in SPLITS if not (path / s).is_dir()]
        if missing:
            raise CnnlabError(f"{path} has no {missing[0]}/ folder (expected train/ and test/)")
        return "folders", path
    raise CnnlabError(
        f"unknown data layout in {path}: expected train/<class>/ and test/<class>/ folders, a "
        f"{CIFAR10_OFFICIAL} or {CIFAR100_OFFICIAL} folder, or a .zip of train/ and test/"
    )


@dataclass(frozen=True)
class _Listing:
    """What to decode: (split, class index, name) per image, classes shared by both splits."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> (name, label)


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def list_class_tree(
    names: Sequence[str], where: str, limit_per_class: int | None
) -> _Listing:
    """Group `split/class/.../file` names (posix, relative) into a listing; checks the structure."""
    per_split: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for name in names:
        parts = PurePosixPath(name).parts
        # "split/class" alone is a class folder (an empty one must be reported, not ignored).
        if len(parts) < 2 or parts[0] not in per_split or any(p.startswith(".") for p in parts):
            continue
        per_split[parts[0]].setdefault(parts[1], [])
        if len(parts) > 2 and _is_image(name):
            per_split[parts[0]][parts[1]].append(name)
    for split in SPLITS:
        if not per_split[split]:
            raise CnnlabError(f"{where} has no {split}/<class>/ images (expected train/ and test/)")
        for cls, files in per_split[split].items():
            if not files:
                raise CnnlabError(f"{where}: class folder {split}/{cls}/ holds no images")
    train_cls, test_cls = sorted(per_split["train"]), sorted(per_split["test"])
    if train_cls != test_cls:
        only_train = sorted(set(train_cls) - set(test_cls))
        only_test = sorted(set(test_cls) - set(train_cls))
        raise CnnlabError(
            f"{where}: train and test have different classes "
            f"(only in train: {', '.join(only_train) or '-'}; only in test: "
            f"{', '.join(only_test) or '-'})"
        )
    listing = _Listing(classes=tuple(train_cls))
    for split in SPLITS:
        # Sorted by class, then by file name: the same order from a zip and from its extraction.
        listing.files[split] = [
            (name, label)
            for label, cls in enumerate(train_cls)
            for name in sorted(per_split[split][cls])[:limit_per_class]
        ]
    return listing


def _decode_one(data: bytes, size: int) -> np.ndarray:
    """bytes -> uint8 [size, size, 3]; raises ValueError with a short reason."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = _to_rgb(im)
    except Exception as exc:  # Pillow raises many types on corrupt input; all mean "bad file"
        raise ValueError(f"cannot decode ({type(exc).__name__}: {exc})") from None
    if rgb.size != (size, size):
        raise ValueError(f"image is {rgb.size[0]}x{rgb.size[1]}, expected {size}x{size}")
    return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(
    reader: Callable[[str], bytes], names: Sequence[str], size: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode `names` into [n, size, size, 3]; bad ones are zero and listed (position, reason)."""
    out = np.zeros((len(names), size, size, 3), dtype=np.uint8)
    bad = []
    for i, name in enumerate(names):
        try:
            out[i] = _decode_one(reader(name), size)
        except (ValueError, OSError) as exc:
            bad.append((i, str(exc)))
    return out, bad


def zip_chunk(args: tuple[str, list[str], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    zip_path, names, size = args
    # Each task opens the zip itself: a ZipFile cannot be shared across processes, and reading
    # the central directory (60,022 entries) costs ~50 ms against ~1 s of decoding per task.
    with zipfile.ZipFile(zip_path) as zf:
        return _decode_chunk(zf.read, names, size)


def folder_chunk(args: tuple[str, list[str], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    root, names, size = args
    return _decode_chunk(lambda n: (Path(root) / n).read_bytes(), names, size)


def _workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def decode_listing(
    source: Path, listing: _Listing, chunk_fn: Callable, reporter: Reporter, size: int,
    workers: int | None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[tuple[str, str]]]:
    """Decode every listed image on a process pool; returns per split (x, y) and skipped."""
    jobs: list[tuple[str, list[str]]] = []  # (split, names)
    for split in SPLITS:
        names = [n for n, _ in listing.files[split]]
        jobs += [(split, names[i : i + CHUNK]) for i in range(0, len(names), CHUNK)]
    total = sum(len(n) for _, n in jobs)
    workers = min(workers or _workers(), len(jobs))
    arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    keep: dict[str, list[bool]] = {s: [] for s in SPLITS}
    skipped: list[tuple[str, str]] = []
    tasks = [(str(source), names, size) for _, names in jobs]
    if workers > 1:
        # fork: the workers only run Pillow and numpy, never torch's thread pools, and fork
        # starts in milliseconds where spawn would re-import torch in every worker (~2 s).
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        results = pool.map(chunk_fn, tasks)
    else:
        pool, results = None, map(chunk_fn, tasks)
    try:
        desc = f"decoding {source.name} ({total:,} images, {workers} processes)"
        for (split, names), (arr, bad) in zip(
            jobs, reporter.track(results, total=len(jobs), description=desc, unit="chunks"),
            strict=True,
        ):
            ok = [True] * len(names)
            for i, reason in bad:
                ok[i] = False
                skipped.append((names[i], reason))
            arrays[split].append(arr)
            keep[split] += ok
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    out = {}
    for split in SPLITS:
        labels = torch.tensor([lab for _, lab in listing.files[split]], dtype=torch.int64)
        x = torch.from_numpy(np.concatenate(arrays[split])).permute(0, 3, 1, 2).contiguous()
        mask = torch.tensor(keep[split], dtype=torch.bool)
        out[split] = (x[mask], labels[mask])
    return out, skipped


def _unpickle(path: Path) -> dict:
    # The official CIFAR files are Python pickles: there is no other way to read them. Only open
    # files you trust (they are the dataset authors'), as with any pickle.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise CnnlabError(f"official CIFAR file missing: {path}") from None
    except Exception as exc:
        raise CnnlabError(f"cannot read official CIFAR file {path}: {exc}") from None


def _official_images(
    batch: dict, label_key: bytes, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    if b"data" not in batch or label_key not in batch:
        raise CnnlabError(f"{path} is not a CIFAR batch (no {b'data'!r} / {label_key!r})")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    # Rows are 3072 bytes: the 1024 red, then green, then blue values of a 32x32 image, row-major.
    x = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return x, torch.tensor(list(batch[label_key]), dtype=torch.int64)


def read_official(folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple]:
    if (folder / "batches.meta").is_file():  # CIFAR-10
        classes = [c.decode() for c in _unpickle(folder / "batches.meta")[b"label_names"]]
        parts = [_official_images(_unpickle(folder / f"data_batch_{i}"), b"labels", folder)
                 for i in range(1, 6)]
        train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        test = _official_images(_unpickle(folder / "test_batch"), b"labels", folder)
    elif (folder / "meta").is_file():  # CIFAR-100, fine labels
        classes = [c.decode() for c in _unpickle(folder / "meta")[b"fine_label_names"]]
        train = _official_images(_unpickle(folder / "train"), b"fine_labels", folder)
        test = _official_images(_unpickle(folder / "test"), b"fine_labels", folder)
    else:
        raise CnnlabError(f"{folder}: neither batches.meta (CIFAR-10) nor meta (CIFAR-100)")
    return {"train": train, "test": test}, tuple(classes)


def limit_official(
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]], limit: int | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The first `limit` images of each class in file order (the official order is random)."""
    if limit is None:
        return splits
    out = {}
    for split, (x, y) in splits.items():
        idx = torch.cat([torch.nonzero(y == c).flatten()[:limit] for c in torch.unique(y)])
        idx = idx.sort().values
        out[split] = (x[idx], y[idx])
    return out


def download_cifar10(root: Path) -> Path:
    """Fetch the official CIFAR-10 python batches with torchvision (needs the network);
    returns the `cifar-10-batches-py` folder."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # URLError, timeouts, checksum mismatch: all "no download"
        raise CnnlabError(
            f"cannot download CIFAR-10 into {root} ({type(exc).__name__}: {exc}); put "
            f"{CIFAR10_OFFICIAL}/ or a zip of train/ and test/ folders there and point to it"
        ) from None
    return root / CIFAR10_OFFICIAL
