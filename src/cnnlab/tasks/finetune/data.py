"""The photos of a finetune run: the split (split.json, read back on a resume), and the one
pass over every photo before training, which drops the files that cannot be decoded (once: a
batch never shrinks mid-epoch) and, when the body is frozen, computes each photo's features in
that same pass through the on-disk cache (`models/features.py`); partial caches early-stage
activations of several views instead (`models/partial.py`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.finetune.config import FinetuneConfig


def load_split(config: FinetuneConfig, run_dir: RunDir, resume: bool):
    """(DatasetSplit, saved): the run's split.json when it has one (a resume, or --compare's
    second run), else the data folder split by the config."""
    from cnnlab.data.splits import DatasetSplit, load_splits

    if resume and not run_dir.file("split.json").is_file():
        raise CnnlabError(f"{run_dir} has no split.json: not a finetune run directory")
    if resume or run_dir.file("split.json").is_file():
        return DatasetSplit.from_json(run_dir.read_json("split.json")), True
    return load_splits(config.data, config.split, config.val_fraction, config.seed), False


@dataclass
class Prepared:
    """Everything training needs, decided before the first step."""

    split: Any  # DatasetSplit, bad files dropped
    features: dict[str, Any] | None  # part -> (n, D) tensor, when the body is frozen
    feature_info: dict[str, Any]
    seconds: float
    # partial: part -> (n, views, C, H, W) early-stage activations (train and val: --views
    # views, test: the evaluation view), and the trained part of the network on them.
    activations: dict[str, Any] | None = None
    partial_net: Any = None
    # The features and the targets as numpy arrays, not tensors: the run without a PyTorch net
    # (a FrozenTransfer on cached ONNX graphs), which imports no torch (issue 27 item 4).
    arrays: bool = False


def _unreadable(paths: list[Path], preprocess, config: FinetuneConfig, reporter) -> dict:
    """Decode every photo once (no model): path -> reason for those that fail."""
    from cnnlab.data.batching import ImageDataset
    from cnnlab.data.folders import LabelledImage
    from cnnlab.data.loaders import photo_loader

    dataset = ImageDataset([LabelledImage(p, "") for p in paths], preprocess, draft=config.draft)
    loader = photo_loader(dataset, workers=config.workers, batch_size=32,
                          collate=dataset.collate)
    bad: dict[Path, str] = {}
    for _images, _indices, failed in reporter.track(
        loader, total=math.ceil(len(paths) / 32), description="checking photos", unit="batches"
    ):
        bad.update({paths[i]: reason for i, reason in failed})
    return bad


def prepare(config: FinetuneConfig, split, net, preprocess, weights_file: Path, device,
             reporter, arrays: bool = False) -> Prepared:
    """The one pass over the photos: drop bad files; features when the body is frozen (numpy
    arrays with `arrays`)."""
    from cnnlab.models.features import FeatureCache, compute_features, feature_key, file_digest

    start = time.perf_counter()
    parts = ("train", "val", "test")
    paths = [it.path for p in parts for it in split.part(p)]
    if config.partial:
        return _prepare_partial(config, split, net, preprocess, weights_file, device, reporter)
    info: dict[str, Any] = {"used": False}
    features = None
    if config.uses_features:
        # The body is a fixed function: its features for val and test always, and for train when
        # there is no augmentation, come from one pass (or the cache).
        wanted = paths if config.cached else [it.path for p in ("val", "test")
                                              for it in split.part(p)]
        key = feature_key(config.backbone, file_digest(weights_file), preprocess, config.draft)
        cache = FeatureCache(key, describe={"backbone": config.backbone,
                                            "weights": str(weights_file),
                                            "preprocess": preprocess.__dict__,
                                            "draft": config.draft})
        feats = compute_features(net.frozen_body(), wanted, preprocess, cache, reporter,
                                 workers=config.workers, draft=config.draft,
                                 device=device, label="features (one pass)",
                                 engine=config.engine, log=reporter.log, arrays=arrays)
        info = {"used": True, "photos": len(wanted), "computed": feats.computed,
                "from_cache": len(set(wanted)) - feats.computed,
                "seconds": round(feats.seconds, 3), "dir": str(cache.dir),
                "engine": feats.engine}  # the pass's engine and its check ({}: all cached)
        bad = dict(feats.bad)
        if not config.cached:
            bad.update(_unreadable([it.path for it in split.train], preprocess, config, reporter))
        split = split.without(bad)
        row = {p: i for i, p in enumerate(feats.paths)}
        features = {p: feats.rows[[row[it.path] for it in split.part(p)]]
                    for p in parts if p != "train" or config.cached}
    else:
        split = split.without(_unreadable(paths, preprocess, config, reporter))
    return Prepared(split, features, info, time.perf_counter() - start, arrays=arrays)


def _prepare_partial(config: FinetuneConfig, split, net, preprocess, weights_file: Path,
                     device, reporter) -> Prepared:
    """partial's one pass: the frozen early stages on --views views of every training and
    validation photo and on the evaluation view of every test photo, cached on disk."""
    import torch

    from cnnlab.models.features import file_digest
    from cnnlab.models.partial import (
        PartialNet,
        Views,
        activation_cache,
        activation_key,
        compute_activations,
        split_body,
    )

    start = time.perf_counter()
    early, late, cut = split_body(net.body, preprocess.crop_size)
    views = Views(count=config.views, seed=config.seed)
    key = activation_key(config.backbone, file_digest(weights_file), preprocess, config.draft,
                         cut, views)
    cache = activation_cache(key, describe={"backbone": config.backbone, "cut": cut,
                                            "weights": str(weights_file), "seed": config.seed,
                                            "preprocess": preprocess.__dict__,
                                            "draft": config.draft})
    parts = ("train", "val", "test")
    items = [(it.path, config.views if p != "test" else 1) for p in parts
             for it in split.part(p)]
    acts = compute_activations(early, [i[0] for i in items], [i[1] for i in items], preprocess,
                               views, cache, reporter, workers=config.workers,
                               draft=config.draft, device=device)
    split = split.without(acts.bad)
    activations = {p: torch.stack([acts.views[it.path] for it in split.part(p)])
                   if split.part(p) else None for p in parts}
    info = {"used": True, "kind": "early-stage activations", "cut": cut,
            "views": config.views, "photos": len(items), "computed_views": acts.computed,
            "seconds": round(acts.seconds, 3), "dir": str(cache.dir)}
    return Prepared(split, None, info, time.perf_counter() - start, activations,
                    PartialNet(late, net.head, config.bn))


def prepare_once(config: FinetuneConfig, split, saved: bool, net, preprocess,
                 weights_file: Path, device, info, reporter) -> Prepared:
    """`prepare` on rank 0, its result broadcast to the other ranks. A saved split (a resume,
    or --compare's second run) is already clean: only the strategies that read cached inputs
    (freeze, partial) pass over the photos again, to load them. A FrozenTransfer (no PyTorch
    net) gets numpy features."""
    from cnnlab import dist
    from cnnlab.models.frozen_transfer import FrozenTransfer

    arrays = isinstance(net, FrozenTransfer)
    if saved and config.strategy not in ("freeze", "partial"):
        return Prepared(split, None, {"used": False}, 0.0)
    return dist.broadcast_from_main(
        lambda: prepare(config, split, net, preprocess, weights_file, device, reporter, arrays),
        info)
