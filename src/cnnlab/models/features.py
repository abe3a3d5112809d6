"""Backbone features computed once and cached on disk: a frozen body is a fixed function.

With the body frozen (in eval mode) and no augmentation, `body(image)` never changes, so training
the head needs each photo's pooled feature vector once, not once per epoch: one pass over the
photos, then every epoch is a few small matrix products, and a re-run reads the vectors back.

Cache key (`feature_key`): backbone name + SHA-256 of the weights file + the preprocessing
(resize, crop, interpolation, mean, std, JPEG draft decoding) + the extractor's version; one
directory per key under `$CNNLAB_CACHE/features/` (default ~/.cache/cnnlab). Inside, photos are
keyed by the SHA-256 of their bytes, so a renamed or moved photo is still found, an edited photo
is recomputed, and photos that could not be decoded are remembered with their reason. Entries
are "packs" (safetensors: one `features` matrix + the digests in its metadata), each written
atomically by the run that computed them; concurrent runs write separate packs, never a torn one.

`arrays=True` (finetune's default and `--model auto`'s scoring on ONNX Runtime): the rows are
numpy arrays, the packs read and written through safetensors.numpy (the same bytes), and a pass
on cached graphs runs numpy from the decoder to the rows: no torch imported (issue 27 item 4).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.models.cache import cache_root, file_digest
from cnnlab.runs import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

EXTRACTOR_VERSION = 1  # bump when what `body(x)` means changes (head surgery, dtype)
PACK_PREFIX = "pack-"
# Photos per forward call when every net of a pass runs on ONNX Runtime (`batch_size=None`).
# Measured (Lite0/1/2 at 224/240/260 px, 100 photos, one ORT thread, CPU-s, AMX Xeon, issue 27):
# batch 8 1.19-1.27 / 1.80-1.82 / 2.43-2.54 against batch 32 1.50-1.61 / 2.02-2.14 /
# 2.75-2.78: a batch of 8 keeps a layer's activations in the caches. PyTorch keeps 32.
ORT_BATCH, TORCH_BATCH = 8, 32


def photo_digests(paths: Sequence[Path]) -> tuple[list[str], dict[str, Path]]:
    """Each photo's digest (the caches' key: a renamed or copied photo is found again) and, per
    digest, the first path with it (a photo present twice is decoded once). A file that cannot
    be read is a one-line error naming it."""
    try:
        digests = [file_digest(p) for p in paths]
    except OSError as exc:
        raise CnnlabError(f"cannot read {exc.filename}: {exc.strerror}") from None
    first_path: dict[str, Path] = {}
    for p, d in zip(paths, digests, strict=True):
        first_path.setdefault(d, p)
    return digests, first_path


def feature_key(backbone: str, weights_digest: str, preprocess: Preprocess, draft: bool) -> str:
    """The cache key of one (backbone, weights, preprocessing) combination, hex."""
    spec = {"backbone": backbone, "weights_sha256": weights_digest,
            "preprocess": asdict(preprocess), "draft": draft, "extractor": EXTRACTOR_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class Features:
    """Pooled features of some photos: `rows[i]` for `paths[i]`, photos that failed left out."""

    paths: list[Path]
    rows: Any  # (n, D) float32: a torch tensor, or a numpy array (`arrays=True`)
    bad: dict[Path, str]  # undecodable photos and why
    computed: int  # photos run through the body in this call (0: all from the cache)
    seconds: float
    engine: dict[str, Any] = field(default_factory=dict)  # the pass's Forward.about ({}: none)


class FeatureCache:
    """One key's directory of packs."""

    def __init__(self, key: str, root: Path | None = None, describe: dict | None = None):
        self.key = key
        self.dir = (root or cache_root()) / "features" / key[:32]
        self.describe = describe or {}

    def load(self, arrays: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        """Every cached vector (digest -> (D,) tensor, or numpy array with `arrays`) and every
        known-bad digest -> reason. A pack that cannot be read (disk trouble, a different
        format) is ignored: the cache only ever saves work, it never decides a result."""
        from safetensors import safe_open

        vectors: dict[str, Any] = {}
        bad: dict[str, str] = {}
        if not self.dir.is_dir():
            return vectors, bad
        for pack in sorted(self.dir.glob(f"{PACK_PREFIX}*.safetensors")):
            try:
                with safe_open(str(pack), framework="numpy" if arrays else "pt") as f:
                    meta = f.metadata() or {}
                    digests = json.loads(meta.get("digests", "[]"))
                    rows = f.get_tensor("features") if digests else None
                    bad.update(json.loads(meta.get("bad", "{}")))
            except Exception:
                continue
            if rows is not None and rows.shape[0] == len(digests):
                vectors.update(zip(digests, rows, strict=True))
        return vectors, bad

    def save(self, vectors: dict[str, Any], bad: dict[str, str]) -> Path | None:
        """Write one new pack (atomically); nothing when there is nothing new. The vectors are
        torch tensors, or numpy arrays (written by safetensors.numpy: the same bytes)."""
        if not vectors and not bad:
            return None
        digests = sorted(vectors)
        if (isinstance(vectors[digests[0]], np.ndarray) if digests else not _torch_loaded()):
            from safetensors.numpy import save as st_save

            rows = (np.ascontiguousarray(np.stack([vectors[d] for d in digests]),
                                         dtype=np.float32) if digests
                    else np.zeros((0, 0), dtype=np.float32))
        else:
            import torch
            from safetensors.torch import save as st_save

            rows = (torch.stack([vectors[d] for d in digests]).float().contiguous() if digests
                    else torch.zeros((0, 0)))
        name = hashlib.sha256("".join(digests + sorted(bad)).encode()).hexdigest()[:24]
        path = self.dir / f"{PACK_PREFIX}{name}.safetensors"
        data = st_save({"features": rows}, metadata={"digests": json.dumps(digests),
                                                     "bad": json.dumps(bad)})
        atomic_write_bytes(path, data)
        about = self.dir / "about.json"
        if self.describe and not about.exists():
            atomic_write_text(about, json.dumps({"key": self.key, **self.describe}, indent=2))
        return path


@dataclass
class FeatureNet:
    """One net of a feature pass: its frozen body, preprocessing, cache and the name of its
    exported graph (None: the cache's key; models/inference.py)."""

    # The frozen body, or a function that builds it: called only when the pass runs in PyTorch
    # or exports its graph (models/inference.prepare_forward), not on a cached ONNX graph.
    body: nn.Module | Callable[[], nn.Module]
    preprocess: Preprocess
    cache: FeatureCache | None
    label: str = "features"
    identity: str | None = None


def compute_features(
    body: nn.Module | Callable[[], nn.Module],
    paths: Sequence[Path],
    preprocess: Preprocess,
    cache: FeatureCache | None,
    reporter,
    *,
    batch_size: int | None = None,
    workers: int = 2,
    draft: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    label: str = "features",
    engine: str = "torch",
    identity: str | None = None,
    log=None,
    arrays: bool = False,
) -> Features:
    """`body(image)` for every photo, from the cache where it is there, one pass otherwise.

    `body` must be a fixed function (eval mode, frozen weights): it is switched to eval mode
    here; or a function that builds it, called only when the pass needs the PyTorch body.
    Photos that cannot be decoded are returned in `bad` with their reason (and cached as
    bad), never raised. `engine` runs the pass (models/inference.py: torch, onnxruntime, auto);
    the exported graph is named by `identity`, else by the cache's key (a body without either
    runs in PyTorch). The vectors are cached whichever engine computed them: the two agree to
    within inference.MAX_ABS_DIFF (checked at export), as CPU and GPU passes already shared it.
    `arrays`: rows as numpy arrays, the pass without torch where every net runs on ONNX Runtime.
    """
    net = FeatureNet(body, preprocess, cache, label, identity)
    return compute_features_many([net], paths, reporter, batch_size=batch_size, workers=workers,
                                 draft=draft, device=device, channels_last=channels_last,
                                 engine=engine, log=log, label=label, arrays=arrays)[0]


def _forward_of(net: FeatureNet, engine: str, device: torch.device, channels_last: bool, log):
    from cnnlab.models.inference import prepare_forward, torch_forward

    identity = net.identity or (f"features:{net.cache.key}" if net.cache is not None else None)
    if identity is None:
        from torch import nn

        body = net.body if isinstance(net.body, nn.Module) else net.body()
        return torch_forward(body, device, channels_last)
    return prepare_forward(net.body, engine, identity=identity,
                           input_size=net.preprocess.crop_size, device=device,
                           channels_last=channels_last, log=log, label=net.label)


def compute_features_many(
    nets: Sequence[FeatureNet],
    paths: Sequence[Path],
    reporter,
    *,
    batch_size: int | None = None,
    workers: int = 2,
    draft: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    engine: str = "torch",
    log=None,
    label: str = "features",
    arrays: bool = False,
) -> list[Features]:
    """`compute_features` for several nets over the same photos, each photo read and decoded
    once for all of them (data/batching.py's SharedDecodeDataset); one `Features` per net.

    Each net's cache is read first; a photo is decoded when any net lacks it, and only those
    nets run on it. Each net sees exactly the pixels of its own pass (`decode.decode_many`), so
    its vectors go to its cache under the same key as a one-net pass's. `seconds` of each: its
    own forward time plus an equal share of the rest (reading caches, decoding, waiting).
    `batch_size` None: ORT_BATCH when every net runs on ONNX Runtime, else TORCH_BATCH.
    `arrays`: every `Features.rows` a numpy array; when every net then runs on ONNX Runtime the
    pass is numpy from the decoder to the rows (`Forward.numpy`): torch is not imported.
    """
    start = time.perf_counter()
    paths = list(paths)
    digests, first_path = photo_digests(paths)
    stored = [net.cache.load(arrays) if net.cache is not None else ({}, {}) for net in nets]
    todos = [{d for d in first_path if d not in c and d not in b} for c, b in stored]
    union = sorted(set().union(*todos))
    new_vectors: list[dict[str, Any]] = [{} for _ in nets]
    new_bad: list[dict[str, str]] = [{} for _ in nets]
    abouts: list[dict[str, Any]] = [{} for _ in nets]
    own = [0.0] * len(nets)
    if union:
        if not arrays or _torch_loaded() or _device_type(device) != "cpu":
            import torch

            device = torch.device(device)
        active = [k for k, todo in enumerate(todos) if todo]
        forwards = [_forward_of(nets[k], engine, device, channels_last, log) for k in active]
        for k, forward in zip(active, forwards, strict=True):
            abouts[k] = forward.about
        numpy_pass = arrays and all(f.numpy is not None for f in forwards)
        loader, n_batches = _photo_batches([first_path[d] for d in union],
                                           [nets[k].preprocess for k in active], forwards,
                                           batch_size, workers, draft, device, numpy_pass)
        with _pass_context(forwards, numpy_pass):
            for batches, indices, failed in reporter.track(
                    loader, total=n_batches, description=label, unit="batches"):
                for i, reason in failed:
                    for k in active:
                        if union[i] in todos[k]:
                            new_bad[k][union[i]] = reason
                wanted = [union[i] for i in indices.tolist()]
                for j, (k, forward) in enumerate(zip(active, forwards, strict=True)):
                    rows = [r for r, d in enumerate(wanted) if d in todos[k]]
                    if not rows:
                        continue
                    began = time.perf_counter()
                    images = batches[j] if len(rows) == len(wanted) else batches[j][rows]
                    out = _rows_out(forward, images, numpy_pass, arrays)
                    if out.ndim != 2:
                        raise ValueError(f"body output {tuple(out.shape)} is not "
                                         "(batch, features)")
                    for r, row in zip(rows, out, strict=True):
                        new_vectors[k][wanted[r]] = row.copy() if arrays else row.clone()
                    own[k] += time.perf_counter() - began
        for k in active:
            if nets[k].cache is not None:
                nets[k].cache.save(new_vectors[k], new_bad[k])
    shared = (time.perf_counter() - start - sum(own)) / len(nets)
    return [_assemble(paths, digests, {**stored[k][0], **new_vectors[k]},
                      {**stored[k][1], **new_bad[k]}, len(todos[k]), own[k] + shared, abouts[k],
                      arrays)
            for k in range(len(nets))]


def _torch_loaded() -> bool:
    from cnnlab.hardware import torch_loaded

    return torch_loaded()


def _device_type(device) -> str:
    """"cpu" / "cuda" of a torch.device, a hardware.CpuDevice or a string ("cuda:1")."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def _pass_context(forwards, numpy_pass: bool):
    """Nothing for a numpy pass; else one torch thread while ONNX Runtime runs every net: torch
    only stacks batches then, and its second thread made that far slower on a busy machine
    (models/inference.one_torch_thread_unless_torch)."""
    import contextlib

    if numpy_pass:
        return contextlib.nullcontext()
    from cnnlab.models.inference import one_torch_thread_unless_torch

    return one_torch_thread_unless_torch(forwards)


def _rows_out(forward, images, numpy_pass: bool, arrays: bool):
    """One batch's rows: float32 numpy from a numpy pass, else the forward's float32 CPU
    tensor (as a numpy array when `arrays`)."""
    if numpy_pass:
        return np.asarray(forward.numpy(images), dtype=np.float32)
    out = forward(images).float().cpu()
    return out.numpy() if arrays else out


def _photo_batches(paths: list[Path], preprocesses: list[Preprocess], forwards, batch_size,
                   workers: int, draft: bool, device, numpy_pass: bool = False):
    """(the batches of the pass, their number): each photo decoded once for every net. When
    every forward runs on ONNX Runtime, decoding threads of this process, as evaluate does
    (data/threaded.py: no forked copy of torch; Pillow and ONNX Runtime release the GIL), and
    batches of ORT_BATCH; otherwise DataLoader worker processes and TORCH_BATCH. A numpy pass
    (`Forward.numpy` of every net): numpy batches, threads or this thread (batching.pass_batches).
    """
    from cnnlab.data.batching import SharedDecodeDataset, pass_batches
    from cnnlab.data.folders import LabelledImage

    on_ort = all(f.engine == "onnxruntime" for f in forwards)
    size = batch_size or (ORT_BATCH if on_ort else TORCH_BATCH)
    dataset = SharedDecodeDataset([LabelledImage(p, "") for p in paths], preprocesses,
                                  draft=draft, arrays=numpy_pass)
    n_batches = (len(paths) + size - 1) // size
    if numpy_pass:
        return pass_batches(dataset, True, batch_size=size, workers=workers), n_batches
    from cnnlab.data.loaders import photo_loader

    if on_ort and workers > 0:
        from cnnlab.data.threaded import thread_batches

        return thread_batches(dataset, batch_size=size, collate=dataset.collate,
                              threads=workers), n_batches
    return photo_loader(dataset, workers=workers, device=device, batch_size=size,
                        collate=dataset.collate), n_batches


def _assemble(paths: list[Path], digests: list[str], vectors: dict[str, Any],
              bad_reasons: dict[str, str], computed: int, seconds: float,
              about: dict[str, Any], arrays: bool = False) -> Features:
    """One net's `Features` in the order of `paths` (a photo given twice appears twice)."""
    good_paths, rows, bad = [], [], {}
    for p, d in zip(paths, digests, strict=True):
        if d in bad_reasons:
            bad[p] = bad_reasons[d]
        else:
            good_paths.append(p)
            rows.append(vectors[d])
    width = rows[0].shape[0] if rows else 0
    if arrays:
        matrix = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
        return Features(good_paths, matrix, bad, computed, seconds, about)
    import torch

    matrix = torch.stack(rows) if rows else torch.zeros((0, width))
    return Features(good_paths, matrix, bad, computed, seconds, about)
