"""Fine-tuning the last stages of a body on cached activations of its frozen early stages.

    early, late = split_body(net.body, crop_size=224)   # late(early(x)) == body(x), checked
    views = Views(count=4, seed=0)                      # eval view, its mirror, 2 random crops
    acts = compute_activations(early, paths, counts, preprocess, views, cache, reporter)
    model = PartialNet(late, net.head)                  # trains on acts[path][view]

Why: in a fine-tuning step of EfficientNet-Lite0 (224 px, batch 32, one core) the stem and the
first five block stages take ~90% of the forward and backward time (measured per stage,
BENCHMARKS.md, issue 17), and they are the generic ImageNet filters that a few photos should
not move. Frozen, they are a fixed function of the pixels: their output for a few augmented
views of each photo is computed once, cached on disk, and every epoch after that runs only the
last stage(s) and the head on the cached activations.

Views (`Views`): view 0 is the evaluation transform (resize + centre crop), view 1 its mirror
image, views 2.. a random resized crop + flip (`data/augment.py`'s crop, scale 0.25-1) drawn
from a generator seeded by (seed, view, photo digest): the same views on every run, whatever
the order or the number of workers. A finite set of views is weaker augmentation than a fresh
crop every epoch; it is the price of paying the early stages once.

Cache: like the feature cache (`models/features.py`, same root `$CNNLAB_CACHE`), one directory
per key under `activations/`: backbone + weights digest + preprocessing + draft decoding + the
cut (the first trained module) + the crop's parameters + the seed + this file's version.
Entries are keyed by "photo digest:view", so a run asking for more views reuses the first ones.
Stored as float32: a cached view is the live early stages' output to the bit (tests compare).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.augment import Augment
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError

ACTIVATIONS_VERSION = 1  # bump when what a cached view means changes
PHOTOS_PER_BATCH = 8  # photos decoded per batch: x views each through the early stages


@dataclass(frozen=True)
class Views:
    count: int = 4  # views per training photo: eval, mirror, then count - 2 random crops
    seed: int = 0
    aug: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise CnnlabError(f"--views must be at least 1, not {self.count}")


def _forward_sequence(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body as the chain of modules its forward runs, input side first (names for the
    cut). Known shapes: timm's EfficientNet family, torchvision's ResNets, and torchvision's
    `features` + `avgpool` + `classifier` models (MobileNet, EfficientNet, VGG, AlexNet)."""
    if all(hasattr(body, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2",
                                      "global_pool")):
        if getattr(body, "drop_rate", 0.0):  # timm: dropout between pooling and the head
            raise CnnlabError("--strategy partial: this body has dropout after its pooling, "
                              "which the cut would leave out")
        return ([("conv_stem", body.conv_stem), ("bn1", body.bn1)]
                + [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
                + [("conv_head", body.conv_head), ("bn2", body.bn2),
                   ("global_pool", body.global_pool)])
    names = [n for n, _ in body.named_children()]
    if names[:8] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]:
        return ([(n, getattr(body, n)) for n in names[:8]]
                + [("avgpool", body.avgpool), ("flatten", nn.Flatten(1)), ("fc", body.fc)])
    if names == ["features", "avgpool", "classifier"]:
        return ([(f"features.{i}", m) for i, m in enumerate(body.features)]
                + [("avgpool", body.avgpool), ("flatten", nn.Flatten(1)),
                   ("classifier", body.classifier)])
    raise CnnlabError(f"--strategy partial does not know how to cut a {type(body).__name__} "
                      "body into stages; use --strategy finetune")


def split_body(body: nn.Module, crop_size: int) -> tuple[nn.Module, nn.Module, str]:
    """(early, late, cut): early runs every module before the first one that holds a
    trainable parameter (`requires_grad`), late the rest; late(early(x)) == body(x) is checked
    on a random input in eval mode (a body whose forward is not the chain refuses here)."""
    chain = _forward_sequence(body)
    trainable = [any(p.requires_grad for p in m.parameters()) for _, m in chain]
    if not any(trainable):
        raise CnnlabError("--strategy partial: no stage of the body trains (--train-stages)")
    cut = trainable.index(True)
    if cut == 0:
        raise CnnlabError("--strategy partial: every stage trains, nothing to cache; use "
                          "--strategy finetune")
    early = nn.Sequential(*(m for _, m in chain[:cut]))
    late = nn.Sequential(*(m for _, m in chain[cut:]))
    was = body.training
    body.eval()
    x = torch.randn(2, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(late(early(x)), body(x), rtol=1e-4, atol=1e-5)
    body.train(was)
    if not same:
        raise CnnlabError(f"--strategy partial: the {type(body).__name__} body's forward is not "
                          "the chain of its stages; use --strategy finetune")
    return early, late, chain[cut][0]


class PartialNet(nn.Module):
    """head(late(activations)): the trained part of the network, on cached activations. Its
    modules are the network's own, so training it trains the network."""

    def __init__(self, late: nn.Module, head: nn.Module, bn: str = "frozen"):
        super().__init__()
        self.late, self.head, self.bn = late, head, bn

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.late(a))

    def train(self, mode: bool = True) -> PartialNet:
        """As `TransferModel.train`: BatchNorm stays in eval mode when `bn` is "frozen" (its
        ImageNet statistics: a batch of 32 cached views of 10-30 photos is a poor estimate of
        them, and the cached early activations were computed with them too), and a module
        whose parameters are all frozen does not train."""
        from cnnlab.models.transfer import _is_norm

        super().train(mode)
        if mode:
            for module in self.late.modules():
                params = list(module.parameters())
                if ((params and not any(p.requires_grad for p in params))
                        or (self.bn == "frozen" and _is_norm(module))):
                    module.eval()
        return self


# ------------------------------------------------------------------------------------ views


def view_generator(views: Views, view: int, digest: str) -> torch.Generator:
    """The generator of one random view of one photo: (seed, view, photo digest)."""
    key = hashlib.sha256(f"{views.seed}:{view}:{digest}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def view_images(path: Path, digest: str, preprocess: Preprocess, views: Views, count: int,
                draft: bool = True) -> torch.Tensor:
    """The first `count` views of one photo, (count, 3, crop, crop): the evaluation view, its
    mirror, then random resized crops + flips. BadImage when the photo cannot be decoded."""
    import numpy as np

    from cnnlab.data.augment import augment
    from cnnlab.data.decode import _center_crop, _pad_fill, decode_resized, to_tensor

    rgb = decode_resized(path, preprocess, draft)  # decoded once for every view
    pixels = _center_crop(np.asarray(rgb, dtype=np.uint8), preprocess.crop_size,
                          _pad_fill(preprocess))
    out = [to_tensor(pixels, preprocess)]  # what load_image gives: the evaluation view
    if count > 1:
        out.append(out[0].flip(-1))
    out += [augment(rgb, preprocess, views.aug, view_generator(views, v, digest))
            for v in range(2, count)]
    return torch.stack(out)


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, todo: list[tuple[Path, str, int]], preprocess, views: Views, draft):
        self.todo, self.preprocess, self.views, self.draft = todo, preprocess, views, draft

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        from cnnlab.data.decode import BadImage

        path, digest, count = self.todo[i]
        try:
            x = view_images(path, digest, self.preprocess, self.views, count, self.draft)
            return x, i, None
        except BadImage as exc:
            return None, i, exc.reason


def _collate(batch):
    return batch  # photos carry different numbers of views: stacked per photo, not per batch


# ------------------------------------------------------------------------------------ cache


def activation_key(backbone: str, weights_digest: str, preprocess: Preprocess, draft: bool,
                   cut: str, views: Views) -> str:
    spec = {"backbone": backbone, "weights_sha256": weights_digest,
            "preprocess": asdict(preprocess), "draft": draft, "cut": cut,
            "seed": views.seed, "aug": asdict(views.aug), "version": ACTIVATIONS_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def activation_cache(key: str, describe: dict | None = None, root: Path | None = None):
    """The feature cache's pack store (atomic packs of rows keyed by digest), in its own
    directory: `$CNNLAB_CACHE/activations/<key>`."""
    from cnnlab.models.features import FeatureCache, cache_root

    cache = FeatureCache(key, root=root, describe=describe)
    cache.dir = (root or cache_root()) / "activations" / key[:32]
    return cache


@dataclass
class Activations:
    """Early-stage activations: `views[path]` is a (count, C, H, W) float32 tensor."""

    views: dict[Path, torch.Tensor]
    bad: dict[Path, str]
    computed: int  # views run through the early stages in this call (0: all from the cache)
    seconds: float


def compute_activations(early: nn.Module, paths: Sequence[Path], counts: Sequence[int],
                        preprocess: Preprocess, views: Views, cache, reporter, *,
                        workers: int = 0, draft: bool = True, device="cpu",
                        label: str = "early stages (one pass)") -> Activations:
    """early(view) for the first counts[i] views of paths[i], from the cache where it is there,
    one pass otherwise; photos that cannot be decoded are returned in `bad`, never raised."""
    from cnnlab.data.loaders import photo_loader
    from cnnlab.models.features import photo_digests

    start = time.perf_counter()
    paths = list(paths)
    digests, first_path = photo_digests(paths)
    cached, cached_bad = cache.load() if cache is not None else ({}, {})
    shape: tuple[int, ...] | None = None
    need: dict[str, int] = {}  # digest -> views wanted
    for d, c in zip(digests, counts, strict=True):
        need[d] = max(need.get(d, 0), c)
    todo = [(first_path[d], d, c) for d, c in sorted(need.items())
            if d not in cached_bad and any(f"{d}:{v}" not in cached for v in range(c))]
    new: dict[str, torch.Tensor] = {}
    new_bad: dict[str, str] = {}
    early = early.eval().to(device)
    if todo:
        dataset = _ViewDataset(todo, preprocess, views, draft)
        loader = photo_loader(dataset, workers=workers, device=device,
                              batch_size=PHOTOS_PER_BATCH, collate=_collate)
        total = (len(todo) + PHOTOS_PER_BATCH - 1) // PHOTOS_PER_BATCH
        with torch.inference_mode():
            for batch in reporter.track(loader, total=total, description=label, unit="batches"):
                good = [(x, i) for x, i, reason in batch if reason is None]
                for _x, i, reason in batch:
                    if reason is not None:
                        new_bad[todo[i][1]] = reason
                if not good:
                    continue
                x = torch.cat([x for x, _ in good]).to(device)
                out = early(x.contiguous(memory_format=torch.channels_last)).float().cpu()
                shape = tuple(out.shape[1:])
                row = 0
                for x, i in good:
                    for v in range(len(x)):
                        new[f"{todo[i][1]}:{v}"] = out[row].reshape(-1).clone()
                        row += 1
        if cache is not None:
            cache.save(new, new_bad)
    if shape is None:  # everything from the cache: the shape from one tiny pass
        with torch.inference_mode():
            size = preprocess.crop_size
            shape = tuple(early(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    rows = {**cached, **new}
    bad_reasons = {**cached_bad, **new_bad}
    out_views: dict[Path, torch.Tensor] = {}
    bad: dict[Path, str] = {}
    for p, d, c in zip(paths, digests, counts, strict=True):
        if d in bad_reasons:
            bad[p] = bad_reasons[d]
        else:
            out_views[p] = torch.stack([rows[f"{d}:{v}"] for v in range(c)]).view(c, *shape)
    return Activations(out_views, bad, len(new), time.perf_counter() - start)
