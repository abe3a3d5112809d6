"""CIFAR-style data sets as in-memory uint8 tensors, decoded once and cached on disk.

Sources (`load_cifar(path)` tells them apart by what `path` is):

- the official python format: a `cifar-10-batches-py` folder (`data_batch_1..5`, `test_batch`,
  `batches.meta`) or CIFAR-100's `cifar-100-python` (`train`, `test`, `meta`; fine labels), or a
  folder holding either; `download=True` fetches CIFAR-10 with torchvision where the network
  allows (into the cache folder, never beside the data);
- class folders of images: `ROOT/{train,test}/<class>/*.png|jpg|...`;
- a `.zip` with that same layout, read in place (never extracted), e.g. the shared
  `cifar10/cifar10-jpg.zip`.

Everything becomes `CifarData`: `train_x`/`test_x` uint8 `[N, 3, H, W]`, int64 labels, the class
names, and the training set's own per-channel mean/std on the 0-1 scale. Batching, augmentation
and normalisation of these tensors live in `data/tensor_batches.py`; reading each source (the
layouts, the class-tree listing, parallel decoding, the official pickles, the download) in
`data/cifar_sources.py`.

The cache. Decoding 60,000 JPEGs takes seconds even on two processes; loading the decoded
tensors back takes a fraction of a second. The decoded set is stored as one safetensors file
under the user's cache folder (`$CNNLAB_CACHE`, else `$XDG_CACHE_HOME/cnnlab`, else
`~/.cache/cnnlab`), in `cifar/<key>.safetensors`, written atomically. The key is a sha256 of
the source's *content*, so an edited data set is decoded again and an unchanged one never is:

- zip and official batches: sha256 of the files' bytes (the 63 MB zip: 0.04 s on an idle
  machine, against ~11 s of decoding);
- class folders: sha256 over the sorted (relative path, size, mtime in ns) of every entry.
  Hashing the bytes of 60,000 small files instead took 13-16 s here (open + read + hash per
  file, on a busy machine): as long as decoding them, on every warm load. The stat key misses
  only an edit that keeps both the size and the nanosecond mtime (a deliberate `touch -r`);
  a copy without `-p` gets new mtimes, which costs one extra decode, never a stale result.

The key also covers the decoder version and `limit_per_class`, so a subset has its own cache file.

Bad files: an image that does not decode, or has the wrong size, is *skipped with its reason*
(`CifarData.skipped`), as `data/decode.py` does for photo folders: one bad file in 60,000 should
not stop a run, and the count is reported. Structural mistakes (missing path, no train/test,
an empty class, different classes in train and test) are `CnnlabError`s.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnlab.data.cifar_sources import (
    IMAGE_SIZE,
    SPLITS,
    decode_listing,
    detect_layout,
    detect_layout_or_none,
    download_cifar10,
    folder_chunk,
    limit_official,
    list_class_tree,
    read_official,
    zip_chunk,
)
from cnnlab.dist import DistInfo, barrier
from cnnlab.errors import CnnlabError
from cnnlab.progress import Reporter
from cnnlab.runs import atomic_write_bytes

# Bump when decoding changes what lands in the tensors: old cache files are then never read.
DECODER_VERSION = 1


@dataclass(frozen=True)
class CifarData:
    """A whole labelled image set in memory; tensors are never copied by the helpers below
    unless they select a subset."""

    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M, C, H, W]
    test_y: torch.Tensor  # int64 [M]
    classes: tuple[str, ...]
    # Per channel, 0-1 scale, of train_x itself (recomputed whenever train_x changes).
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where it came from, for run records
    key: str  # the cache key (sha256 hex), "" for data not loaded through the cache
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) of images left out
    # Validation images carved from train by `split_validation` (never from test); empty if none.
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("train", "test", "val"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x is None and y is None and name == "val":
                continue
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.dim() != 1:
                raise CnnlabError(f"{name} images must be uint8 [N,C,H,W] with int64 labels [N]")
            if len(x) != len(y):
                raise CnnlabError(f"{name}: {len(x)} images but {len(y)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def describe(self) -> str:
        val = f", {len(self.val_y):,} val" if self.val_y is not None else ""
        return (f"{self.source}: {len(self.train_y):,} train{val}, {len(self.test_y):,} test, "
                f"{self.num_classes} classes, images {'x'.join(map(str, self.image_shape))}")


# ---------------------------------------------------------------------------------------------
# Statistics, subsets, validation split


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population, 0-1 scale) of uint8 [N, C, H, W] images.

    Accumulated in float64 over chunks: float32 sums over 50 M values lose ~4 digits.
    """
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def stratified_indices(
    labels: torch.Tensor, *, per_class: int | None = None, fraction: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Sorted indices of a seeded random subset with `per_class` images of every class (or a
    `fraction` of each class, at least one). Exactly one of the two must be given."""
    if (per_class is None) == (fraction is None):
        raise CnnlabError("give exactly one of per_class and fraction")
    if per_class is not None and per_class < 1:
        raise CnnlabError(f"per_class must be >= 1, got {per_class}")
    if fraction is not None and not 0 < fraction <= 1:
        raise CnnlabError(f"fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        k = per_class if per_class is not None else max(1, round(fraction * len(members)))
        if k > len(members):
            raise CnnlabError(f"class {cls} has {len(members)} images, fewer than {k} asked for")
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(chosen).sort().values


def subset(
    data: CifarData, *, per_class: int | None = None, fraction: float | None = None,
    seed: int = 0, test_too: bool = True,
) -> CifarData:
    """A stratified seeded subset of train (and of test, unless `test_too=False`) for quick runs;
    mean/std are recomputed from the smaller train set."""
    idx = stratified_indices(data.train_y, per_class=per_class, fraction=fraction, seed=seed)
    train_x, train_y = data.train_x[idx], data.train_y[idx]
    test_x, test_y = data.test_x, data.test_y
    if test_too:
        # A per-class count larger than test's classes holds is capped at what test has.
        counts = torch.bincount(test_y)
        k = None if per_class is None else min(per_class, int(counts[counts > 0].min()))
        tidx = stratified_indices(test_y, per_class=k, fraction=fraction, seed=seed + 1)
        test_x, test_y = test_x[tidx], test_y[tidx]
    mean, std = channel_stats(train_x)
    return replace(data, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   mean=mean, std=std, val_x=None, val_y=None)


def first_classes(data: CifarData, n: int) -> CifarData:
    """Only the images of the first `n` classes (labels 0 .. n-1 keep their numbers), in train,
    test and validation; mean/std recomputed from the smaller train set."""
    if not 2 <= n <= data.num_classes:
        raise CnnlabError(f"classes must be 2 to {data.num_classes}, not {n}")
    if n == data.num_classes:
        return data

    def keep(x, y):
        return (None, None) if y is None else (x[y < n], y[y < n])

    train_x, train_y = keep(data.train_x, data.train_y)
    test_x, test_y = keep(data.test_x, data.test_y)
    val_x, val_y = keep(data.val_x, data.val_y)
    mean, std = channel_stats(train_x)
    return replace(data, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   val_x=val_x, val_y=val_y, classes=data.classes[:n], mean=mean, std=std)


def downscale(data: CifarData, size: int) -> CifarData:
    """Every image (train, test, validation) shrunk to `size` x `size` by area averaging (each
    output pixel the mean of the input pixels it covers, as PIL's BOX filter: 32 -> 16 averages
    2x2 blocks exactly), rounded back to uint8. For studies whose question is about a network's
    shape, not about CIFAR's record: a quarter of the pixels is a quarter of the arithmetic.
    mean/std are recomputed from the new train images."""
    if size < 1:
        raise CnnlabError(f"image size must be at least 1 pixel, not {size}")
    h, w = data.image_shape[1:]
    if (h, w) == (size, size):
        return data
    if size > min(h, w):
        raise CnnlabError(f"cannot downscale {h}x{w} images to {size}x{size} (larger)")

    def shrink(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
        for start in range(0, len(x), 4096):  # bounded float memory (4096 images: 50 MB)
            chunk = torch.nn.functional.interpolate(x[start : start + 4096].float(),
                                                    size=(size, size), mode="area")
            out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
        return out

    train_x = shrink(data.train_x)
    mean, std = channel_stats(train_x)
    return replace(data, train_x=train_x, test_x=shrink(data.test_x), val_x=shrink(data.val_x),
                   mean=mean, std=std)


def split_validation(
    data: CifarData, *, per_class: int | None = None, fraction: float | None = None, seed: int = 0
) -> CifarData:
    """Move a stratified seeded share of *train* into val_x/val_y (test is never touched);
    mean/std are recomputed from what stays in train, so nothing of val leaks into them."""
    val_idx = stratified_indices(data.train_y, per_class=per_class, fraction=fraction, seed=seed)
    keep = torch.ones(len(data.train_y), dtype=torch.bool)
    keep[val_idx] = False
    if not keep.any():
        raise CnnlabError("the validation split would leave no training images")
    train_x, train_y = data.train_x[keep], data.train_y[keep]
    mean, std = channel_stats(train_x)
    return replace(data, train_x=train_x, train_y=train_y, val_x=data.train_x[val_idx],
                   val_y=data.train_y[val_idx], mean=mean, std=std)


# ---------------------------------------------------------------------------------------------
# The cache


def cache_root(env: dict[str, str] | None = None) -> Path:
    """$CNNLAB_CACHE, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab."""
    env = dict(os.environ) if env is None else env
    if env.get("CNNLAB_CACHE"):
        return Path(env["CNNLAB_CACHE"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "cnnlab"
    return Path.home() / ".cache" / "cnnlab"


def _sha256_file(path: Path, h: hashlib._Hash | None = None) -> hashlib._Hash:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h


def source_key(path: Path, layout: str, limit_per_class: int | None) -> str:
    """sha256 of the source's content, the decoder version and the subset size (see the module
    docstring for why content rather than modification times)."""
    h = hashlib.sha256(f"cnnlab-cifar v{DECODER_VERSION} {layout} {limit_per_class}\n".encode())
    if layout == "zip":
        _sha256_file(path, h)
    elif layout == "official":
        for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            h.update(f"{f.name}\n".encode())
            _sha256_file(f, h)
    else:  # folders
        for rel, size, mtime_ns in _folder_entries(path):
            h.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
    return h.hexdigest()


def _folder_entries(root: Path) -> list[tuple[str, int, int]]:
    """(posix path relative to root, size, mtime_ns) of every file under root/train and
    root/test, plus the class folders themselves (size -1) so that an empty one is seen;
    sorted. os.scandir: one stat per file, ~5x faster than Path.rglob + stat."""
    out: list[tuple[str, int, int]] = []

    def walk(folder: str, rel: str, depth: int) -> None:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                child = f"{rel}/{entry.name}"
                if entry.is_dir():
                    if depth == 1:
                        out.append((child, -1, 0))
                    walk(entry.path, child, depth + 1)
                elif entry.is_file():
                    st = entry.stat()
                    out.append((child, st.st_size, st.st_mtime_ns))

    for split in SPLITS:
        if (root / split).is_dir():
            walk(str(root / split), split, 1)
    return sorted(out)


def _save_cache(path: Path, data: CifarData) -> None:
    from safetensors.torch import save

    meta = {
        "classes": json.dumps(list(data.classes)),
        "mean": json.dumps(list(data.mean)),
        "std": json.dumps(list(data.std)),
        "source": data.source,
        "key": data.key,
        "skipped": json.dumps([list(s) for s in data.skipped]),
    }
    tensors = {"train_x": data.train_x.contiguous(), "train_y": data.train_y.contiguous(),
               "test_x": data.test_x.contiguous(), "test_y": data.test_y.contiguous()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _load_cache(path: Path) -> CifarData | None:
    """The cached set, or None when the file is unreadable (it is then decoded again)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        return CifarData(
            train_x=t["train_x"], train_y=t["train_y"], test_x=t["test_x"], test_y=t["test_y"],
            classes=tuple(json.loads(meta["classes"])), mean=tuple(json.loads(meta["mean"])),
            std=tuple(json.loads(meta["std"])), source=meta["source"], key=meta["key"],
            skipped=tuple(tuple(s) for s in json.loads(meta["skipped"])),
        )
    except Exception:  # a torn or foreign file is a cache miss, never a crash
        return None


def load_cifar(
    path: str | Path | None = None,
    *,
    download: bool = False,
    limit_per_class: int | None = None,
    cache: bool = True,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
    workers: int | None = None,
) -> CifarData:
    """Load a CIFAR-style data set (see the module docstring for the layouts and the cache).

    path: a zip, a folder of train/ and test/ class folders, or the official python batches;
        None with download=True: CIFAR-10 downloaded into the cache folder.
    limit_per_class: keep only the first N images of each class of each split (in sorted file
        order, before decoding: a quick subset does not decode the whole set).
    cache: read and write the decoded tensors under `cache_dir` (default `cache_root()`).
    """
    reporter = reporter or Reporter(quiet=True)
    if limit_per_class is not None and limit_per_class < 1:
        raise CnnlabError(f"limit_per_class must be >= 1, got {limit_per_class}")
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    if path is None:
        if not download:
            raise CnnlabError("no data path given (pass a path, or download=True for CIFAR-10)")
        path = cache_dir / "downloads"
    path = Path(path).expanduser()
    if download and detect_layout_or_none(path) is None:
        path = download_cifar10(path).parent
    layout, where = detect_layout(path)

    key = source_key(where, layout, limit_per_class)
    cache_file = cache_dir / "cifar" / f"{key}.safetensors"
    if cache and cache_file.is_file():
        cached = _load_cache(cache_file)
        if cached is not None and cached.key == key:
            return cached

    skipped: list[tuple[str, str]] = []
    if layout == "official":
        splits, classes = read_official(where)
        splits = limit_official(splits, limit_per_class)
    else:
        if layout == "zip":
            try:
                with zipfile.ZipFile(where) as zf:
                    names = zf.namelist()  # class folders may be listed as "train/cat/"
            except (zipfile.BadZipFile, OSError) as exc:
                raise CnnlabError(f"cannot read zip {where}: {exc}") from None
            chunk_fn = zip_chunk
        else:
            names = [rel for rel, _, _ in _folder_entries(where)]
            chunk_fn = folder_chunk
        listing = list_class_tree(names, str(where), limit_per_class)
        splits, skipped = decode_listing(where, listing, chunk_fn, reporter, IMAGE_SIZE, workers)
        classes = listing.classes
        if skipped:
            reporter.log(f"{len(skipped)} image(s) skipped, e.g. {skipped[0][0]}: {skipped[0][1]}")
    train_x, train_y = splits["train"]
    if len(train_y) == 0 or len(splits["test"][1]) == 0:
        raise CnnlabError(f"{where}: no usable images in train or test")
    mean, std = channel_stats(train_x)
    data = CifarData(train_x=train_x, train_y=train_y, test_x=splits["test"][0],
                     test_y=splits["test"][1], classes=tuple(classes), mean=mean, std=std,
                     source=str(where), key=key, skipped=tuple(skipped))
    if cache:
        _save_cache(cache_file, data)
    return data


def load_cifar_once(path: str | Path | None, info: DistInfo, **kwargs) -> CifarData:
    """`load_cifar` under torchrun: rank 0 decodes and writes the cache while the other ranks
    wait at a barrier, then they read the cache (instead of every rank decoding the same
    60,000 images at once). A world of one is a plain `load_cifar`."""
    if not info.enabled:
        return load_cifar(path, **kwargs)
    if info.is_main:
        data = load_cifar(path, **kwargs)
        barrier()
        return data
    barrier()
    return load_cifar(path, **{**kwargs, "reporter": None})
