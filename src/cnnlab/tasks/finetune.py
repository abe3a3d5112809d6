"""`cnnlab finetune`: transfer an ImageNet CNN to your own labelled photos.

    config = FinetuneConfig(data="photos/", strategy="freeze")
    results = run(config, RunDir.create("finetune"), Reporter())
    # after a crash, or to train longer (`config.from_run` reads the run's config.json):
    config = from_run(FinetuneConfig, "runs/finetune/x", "finetune", {"epochs": 40})
    results = run(config, RunDir.open("runs/finetune/x"), Reporter(), resume=True)

Steps:
1. the split (`data/splits.py`): train/val/test folders or one folder split stratified; saved
   as split.json, which a resumed run reads back instead of looking at the folder again;
2. the backbone with its ImageNet weights, then a new zero head for the classes
   (`models/transfer.py`), set to the strategy: freeze, finetune or gradual;
3. one pass over every photo before training: files that cannot be decoded are dropped there,
   once (a batch never shrinks mid-epoch), and, when the body is frozen, each photo's features
   are computed in that same pass and cached on disk (`models/features.py`), so that training
   the head costs milliseconds per epoch and a re-run costs no backbone pass at all;
4. training on the shared engine (`engine.fit`: schedule, checkpoints, resume, early stopping,
   NaN guard, DDP); the last epoch's weights are kept (`keep="best"`: the epoch with the lowest
   validation loss);
5. the test photos, which chose nothing, scored once: top-1 and top-k error with their Wilson
   95% intervals (`analysis/binomial.py`), per-class accuracy,
   predictions.csv, model.safetensors + model.json for `cnnlab predict`, curves, confusion
   matrix, the class-activation maps (Grad-CAM) of the predicted and of the true class of each
   misclassified test photo (cams/*.jpg; `explain=False` / --no-explain leaves them out) and
   the report.

Backbone: `--model auto` (the default when more than one backbone's ImageNet weights are on
this machine) scores each one's frozen features by cross-validation on the training photos and
keeps the best (`models/backbone_choice.py`); the table is in results.json and the report.

freeze (the default), `head_fit="lbfgs"` (the default with the feature cache, no augmentation
and no --epochs/--lr): the head is logistic regression on the cached features, solved to
convergence by full-batch L-BFGS, its L2 strength chosen by stratified k-fold cross-validation
on train + validation photos, then refitted on all of them (`models/head_fit.py`); validation
photos have nothing else to choose there, so they are more training data. Then the test photos
are scored once. No epochs, no checkpoints, no curves.

Defaults of the epoch-trained heads (`head_fit="epochs"`; how they were chosen: BENCHMARKS.md,
"finetune defaults"): AdamW, batch 32, label smoothing 0.1, weight decay 0.05, one warm-up
epoch then a cosine to 0, the last epoch kept. freeze: head lr 1e-3, 30 epochs, no
augmentation (cached features); finetune: head lr 1e-3 and
body lr 1e-4 (a tenth: the body is already good, and large steps wreck it -- the lab's run of
every layer at Adam's default rate ended at 16% train accuracy), 15 epochs, augmentation on,
BatchNorm frozen; gradual: as finetune, 20 epochs, the body unfrozen in up to 3 steps after the
head alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.data.splits import DEFAULT_FRACTIONS, DEFAULT_VAL_FRACTION
from cnnlab.errors import CnnlabError
from cnnlab.hardware import PRECISIONS, resolve_precision
from cnnlab.runs import RunDir

SCHEMA = "cnnlab.finetune/1"
STRATEGIES = ("freeze", "finetune", "gradual", "partial", "auto")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("frozen", "train")
KEEP = ("last", "best")
DEFAULT_BACKBONE = "efficientnet_lite0"  # with --weights, or when it is the only one here
AUTO = "auto"  # --model auto: chosen by cross-validation among the backbones present
HEAD_FITS = ("lbfgs", "epochs")
PARTIAL_EPOCHS = 10  # passes over the training photos, one cached view of each per pass
PARTIAL_STAGES = 1  # top body stages trained by partial (Lite0: blocks.6 + conv_head)
PARTIAL_VIEWS = 4  # cached views per training photo: eval, mirror, 2 random crops
# Per strategy: (epochs, augmentation). freeze trains a linear head on fixed features: 30 epochs
# of cached features cost well under a second; finetune moves 3-5 M weights per step.
# partial: the top --train-stages stages + the head on cached early activations of --views
# augmented views per photo, the head started from the fitted one (BENCHMARKS.md, issue 17).
STRATEGY_DEFAULTS = {"freeze": (30, False), "finetune": (15, True), "gradual": (20, True),
                     "partial": (PARTIAL_EPOCHS, True)}
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}  # head learning rate
COMPARED = ("freeze", "finetune")  # --compare: the lab's two experiments


@dataclass(frozen=True)
class FinetuneConfig:
    data: str  # folder: train/ (+ val/, test/) of class sub-folders, or class sub-folders
    # None: "auto" when several backbones' weights are here and no --weights, else
    # DEFAULT_BACKBONE (resolve_backbone); the run's config.json records the one used.
    backbone: str | None = None
    weights: str | None = None  # explicit ImageNet weights file of the backbone
    strategy: str = "freeze"
    # freeze: "lbfgs" fits the head to convergence with a cross-validated L2 (models/head_fit.py);
    # "epochs" trains it with the engine as finetune does. None: lbfgs where it applies (feature
    # cache, no augmentation) unless --epochs or --lr ask for epochs; resolved in __post_init__.
    head_fit: str | None = None
    compare: bool = False  # run freeze and finetune on the same split, side by side
    epochs: int | None = None  # None: by strategy (STRATEGY_DEFAULTS)
    batch_size: int = 32  # photos per step (global, over all torchrun ranks)
    optimizer: str = "adamw"
    lr: float | None = None  # head learning rate; None: DEFAULT_LR of the optimiser
    body_lr_ratio: float = 0.1  # body learning rate = lr x this (finetune, gradual)
    weight_decay: float = 0.05  # AdamW's decoupled decay (SGD: L2), weights only
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0  # linear warm-up, then a cosine to 0
    label_smoothing: float = 0.1
    augment: bool | None = None  # random resized crop + flip; None: by strategy
    # Which epoch's weights are kept: "last" (the end of the cosine schedule) or "best" (the
    # lowest validation loss). On hymenoptera, "best" picked epochs 3-11 of 30 and lost 0.6-1.3
    # points of test accuracy: 49 validation photos rank epochs by noise (BENCHMARKS.md).
    keep: str = "last"
    early_stopping: int = 0  # with keep="best": stop after N epochs without a better one
    bn: str = "frozen"  # BatchNorm of a training body: frozen statistics, or "train"
    split: tuple[float, float, float] = DEFAULT_FRACTIONS  # one-folder layout: train,val,test
    val_fraction: float = DEFAULT_VAL_FRACTION  # of train/, when there is no val/ to use
    seed: int = 0
    # freeze: compute the frozen body's features once, cache them on disk, train the head on
    # them. False re-runs the body on every batch of every epoch, as the lab did (slow).
    cache: bool = True
    top_k: int | None = None  # None: 3 for up to 10 classes, else 5 (as the lab argued)
    workers: int = 2  # decoding processes
    draft: bool = True  # JPEG draft decoding (see data/decode.py)
    precision: str = "fp32"  # bf16 (autocast) or auto: bf16 where the CPU/GPU has it natively
    time_limit: float | None = None  # seconds of training in this invocation
    device: str = "auto"
    report: bool = True
    # partial: how many of the body's top stages train (the rest run once per view, cached),
    # and how many views of each training photo are cached (models/partial.py).
    train_stages: int = PARTIAL_STAGES
    views: int = PARTIAL_VIEWS
    # CAMs of the predicted and the true class of every misclassified test photo (report):
    # one forward + backward pass of the whole network per mistake.
    explain: bool = True

    def __post_init__(self) -> None:
        from cnnlab.data.splits import check_fractions

        if self.strategy not in STRATEGIES:
            raise CnnlabError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.train_stages < 1 or self.views < 1:
            raise CnnlabError("--train-stages and --views must be at least 1")
        if self.strategy == "partial" and self.keep == "best":
            raise CnnlabError("--strategy partial trains on the validation photos too: no "
                              "epoch to choose by them (--keep last)")
        if self.strategy == "auto" and self.compare:
            raise CnnlabError("--compare runs freeze and finetune: give no --strategy with it")
        if self.strategy != "auto":  # auto: resolved with the data (resolve_strategy)
            self._resolve_head_fit()
        if self.optimizer not in OPTIMIZERS:
            raise CnnlabError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.keep not in KEEP:
            raise CnnlabError(f"--keep must be one of {', '.join(KEEP)}")
        if self.early_stopping and self.keep != "best":
            raise CnnlabError("--early-stopping needs --keep best (it stops at the best epoch)")
        if self.bn not in BN_MODES:
            raise CnnlabError(f"--bn must be one of {', '.join(BN_MODES)}")
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))
        check_fractions(self.split, self.val_fraction)  # type: ignore[arg-type]
        if self.epochs is not None and self.epochs < 1:
            raise CnnlabError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 2:
            raise CnnlabError(f"--batch-size must be at least 2, not {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise CnnlabError(f"--lr must be positive, not {self.lr}")
        if not self.body_lr_ratio > 0:
            raise CnnlabError(f"--body-lr-ratio must be positive, not {self.body_lr_ratio}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.early_stopping < 0:
            raise CnnlabError("--weight-decay, --warmup-epochs, --early-stopping must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise CnnlabError(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.top_k is not None and self.top_k < 1:
            raise CnnlabError(f"--top-k must be at least 1, not {self.top_k}")
        if self.workers < 0:
            raise CnnlabError(f"--workers must be 0 or more, not {self.workers}")
        if self.precision not in PRECISIONS:
            raise CnnlabError("--precision must be auto, fp32 or bf16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise CnnlabError("--time-limit must be positive (seconds)")

    def _resolve_head_fit(self) -> None:
        fits = self.strategy == "freeze" and self.cache and self.augment is not True
        # With --compare, --epochs is the trained strategy's: the frozen head is still fitted.
        epochs = None if self.compare else self.epochs
        if self.head_fit is None:
            chosen = "lbfgs" if fits and epochs is None and self.lr is None else "epochs"
            object.__setattr__(self, "head_fit", chosen)
            return
        if self.head_fit not in HEAD_FITS:
            raise CnnlabError(f"--head-fit must be one of {', '.join(HEAD_FITS)}")
        if self.head_fit == "lbfgs" and not fits:
            raise CnnlabError("--head-fit lbfgs needs --strategy freeze with the feature cache "
                              "and no --augment")
        if self.head_fit == "lbfgs" and (epochs is not None or self.lr is not None):
            raise CnnlabError("--epochs and --lr apply to --head-fit epochs, not lbfgs")

    @property
    def fitted(self) -> bool:
        """Whether the head is solved by L-BFGS with cross-validation (no epochs)."""
        return self.head_fit == "lbfgs"

    # Resolved defaults: properties, so config.json keeps what the user asked for (None) and
    # the run records the values it used (results.json "settings").
    @property
    def epochs_(self) -> int:
        return self.epochs if self.epochs is not None else STRATEGY_DEFAULTS[self.strategy][0]

    @property
    def augment_(self) -> bool:
        return self.augment if self.augment is not None else STRATEGY_DEFAULTS[self.strategy][1]

    @property
    def lr_(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def partial(self) -> bool:
        """Whether the top stages train on cached early-stage activations."""
        return self.strategy == "partial"

    @property
    def uses_features(self) -> bool:
        """Whether the frozen body's features are computed once (val and test at least)."""
        return self.strategy == "freeze" and self.cache

    @property
    def cached(self) -> bool:
        """Whether the head trains on cached features (frozen body, no augmentation)."""
        return self.uses_features and not self.augment_

    def for_strategy(self, strategy: str) -> FinetuneConfig:
        """This config for one strategy of --compare (its own epoch/augment defaults)."""
        from dataclasses import replace

        fitted = strategy == "freeze" and self.head_fit == "lbfgs"
        return replace(self, strategy=strategy, compare=False,
                       head_fit=self.head_fit if strategy == "freeze" else None,
                       epochs=None if fitted else self.epochs)


def top_k_for(n_classes: int, asked: int | None) -> int:
    """k of the top-k error: 3 for up to 10 classes, else 5 (the lab's reasoning: with few
    classes, top-5 of 10 is half the classes and says little)."""
    return asked if asked is not None else (3 if n_classes <= 10 else 5)


# -------------------------------------------------------------------------------- data pass


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


def _prepare(config: FinetuneConfig, split, net, preprocess, weights_file: Path, device,
             reporter) -> Prepared:
    """The one pass over the photos: drop bad files; features when the body is frozen."""
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
        feats = compute_features(net.body, wanted, preprocess, cache, reporter,
                                 batch_size=32, workers=config.workers, draft=config.draft,
                                 device=device, label="features (one pass)")
        info = {"used": True, "photos": len(wanted), "computed": feats.computed,
                "from_cache": len(set(wanted)) - feats.computed,
                "seconds": round(feats.seconds, 3), "dir": str(cache.dir)}
        bad = dict(feats.bad)
        if not config.cached:
            bad.update(_unreadable([it.path for it in split.train], preprocess, config, reporter))
        split = split.without(bad)
        row = {p: i for i, p in enumerate(feats.paths)}
        features = {p: feats.rows[[row[it.path] for it in split.part(p)]]
                    for p in parts if p != "train" or config.cached}
    else:
        split = split.without(_unreadable(paths, preprocess, config, reporter))
    return Prepared(split, features, info, time.perf_counter() - start)


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


# --------------------------------------------------------------------------------- training


def even_batches(indices, batch_size: int) -> list:
    """`indices` cut into ceil(n / batch_size) nearly equal batches: never a batch of one
    (unless batch_size is 1), and no photo dropped; 196 photos in batches of 32 -> 7 x 28."""
    n = len(indices)
    if n == 0:
        return []
    return list(indices.tensor_split(math.ceil(n / batch_size)))


def _loss_fn(smoothing: float):
    from torch.nn import functional as F

    def loss(logits, target):
        return F.cross_entropy(logits, target, label_smoothing=smoothing)

    return loss


def _optimizer(config: FinetuneConfig, groups):
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr_, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr_)


def _logits_on_images(model, items, preprocess, config, device, batch_size: int = 32):
    """Logits of `model` (eval mode) on photos, in order, through the evaluation transform."""
    import torch

    from cnnlab.data.batching import ImageDataset
    from cnnlab.data.loaders import photo_loader

    dataset = ImageDataset(list(items), preprocess, draft=config.draft)
    loader = photo_loader(dataset, workers=config.workers, device=device, batch_size=batch_size,
                          collate=dataset.collate)
    out = []
    with torch.no_grad():
        for images, _indices, failed in loader:
            if failed:  # checked before training: a file changed on disk since
                i, reason = failed[0]
                raise CnnlabError(f"{items[i].path} became unreadable during the run ({reason})")
            x = images.to(device).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


class _Trainer:
    """The pieces `engine.fit` calls back into, for one strategy."""

    def __init__(self, config: FinetuneConfig, prepared: Prepared, net, preprocess, device,
                 info):
        import torch

        self.config, self.prepared, self.net, self.preprocess = config, prepared, net, preprocess
        self.device, self.info = device, info
        split = prepared.split
        self.targets = {p: torch.tensor(split.targets(p), dtype=torch.long)
                        for p in ("train", "val", "test")}
        self.model = net.head if config.cached else net
        self.n_train = len(split.train)
        if config.partial:
            # The validation photos train too: with the epochs fixed and the last kept they
            # have nothing to choose, and in a few-shot split they are a third of the photos.
            self.model = prepared.partial_net
            self.n_train = len(split.train) + len(split.val)
            acts = [a for a in (prepared.activations["train"], prepared.activations["val"])
                    if a is not None]
            self.train_acts = torch.cat(acts)
            self.train_targets = torch.cat([self.targets["train"], self.targets["val"]])
        per_rank = max(config.batch_size // info.world_size, 1)
        self.per_rank_batch = per_rank
        n_rank = self.n_train // info.world_size
        self.steps_per_epoch = math.ceil(n_rank / per_rank) if n_rank else 0
        self.phases = None
        if config.strategy == "gradual":
            from cnnlab.models.transfer import gradual_phases

            self.phases = gradual_phases(len(net.stages), config.epochs_)
        self.train_images = None
        if not config.cached and not config.partial:
            from cnnlab.data.augment import Augment, TrainImages

            self.train_images = TrainImages(
                [it.path for it in split.train], split.targets("train"), preprocess,
                Augment() if config.augment_ else None, seed=config.seed, draft=config.draft,
            )

    def batches(self, epoch: int):
        import torch

        from cnnlab.data.loaders import photo_loader
        from cnnlab.engine import epoch_generator, shard_indices

        if self.phases is not None:
            self.net.unfreeze(self.phases[min(epoch, len(self.phases) - 1)])
        order = shard_indices(self.n_train, epoch_generator(self.config.seed, epoch), self.info)
        chunks = even_batches(order, self.per_rank_batch)
        if self.config.partial:
            # One cached view of each photo per epoch, drawn per (seed, epoch): the same on a
            # resume and on every rank.
            g = epoch_generator(self.config.seed + 1, epoch)
            view = torch.randint(self.train_acts.shape[1], (self.n_train,), generator=g)
            for b in chunks:
                yield (self.train_acts[b, view[b]].contiguous(memory_format=torch.channels_last),
                       self.train_targets[b])
            return
        if self.config.cached:
            x, y = self.prepared.features["train"], self.targets["train"]
            for b in chunks:
                yield x[b], y[b]
            return
        self.train_images.epoch = epoch  # read by the workers this epoch's iterator forks
        loader = photo_loader(self.train_images, workers=self.config.workers,
                              device=self.device, batches=chunks)
        for x, y in loader:
            yield x.contiguous(memory_format=torch.channels_last), y

    def logits(self, part: str):
        """Logits of the current model on a part (eval mode), from features when there are."""
        import torch

        feats = (self.prepared.features or {}).get(part)
        if feats is not None:
            with torch.no_grad():
                return self.net.head(feats.to(self.device)).float().cpu()
        if self.config.partial:  # the evaluation view's activations: the network's logits
            acts = self.prepared.activations[part]
            if acts is None:
                return torch.zeros((0, len(self.prepared.split.classes)))
            with torch.no_grad():
                return torch.cat([self.model(a[:, 0].to(self.device).contiguous(
                    memory_format=torch.channels_last)).float().cpu()
                    for a in acts.split(64)])
        items = self.prepared.split.part(part)
        return _logits_on_images(self.net, items, self.preprocess, self.config, self.device)

    def evaluate(self, model) -> dict[str, float]:
        from torch.nn import functional as F

        if not self.prepared.split.val or self.config.partial:  # partial: val photos train
            return {}
        logits = self.logits("val")
        y = self.targets["val"]
        # The training loss (label smoothing included), so that the two curves compare like
        # for like; the epoch kept is the one where it is lowest.
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        return {"val_loss": float(loss),
                "val_accuracy": float((logits.argmax(1) == y).float().mean())}


def fit_head(config: FinetuneConfig, prepared: Prepared, trainer: _Trainer, net,
             reporter) -> dict[str, Any]:
    """The frozen head solved on train + validation features (never the test ones): L2 by
    cross-validation, then the refit on all of them, written into `net.head`."""
    import torch

    from cnnlab.models.head_fit import select_and_fit

    start = time.perf_counter()
    parts = ("train", "val")
    x = torch.cat([prepared.features[p] for p in parts])
    y = torch.cat([trainer.targets[p] for p in parts])
    with _threads(1):
        choice = select_and_fit(x, y, len(prepared.split.classes), seed=config.seed)
    with torch.no_grad():
        net.head.weight.copy_(choice.head.weight.to(net.head.weight))
        net.head.bias.copy_(choice.head.bias.to(net.head.bias))
        train_accuracy = float((choice.head.logits(x).argmax(1) == y).double().mean())
    best = choice.best or {}
    reporter.log(f"head: L-BFGS, L2 {choice.l2:.3g} chosen by {choice.folds}-fold "
                 f"cross-validation on {len(y)} train + validation photos (accuracy "
                 f"{best.get('cv_accuracy', float('nan')):.1f}%), refitted on all of them")
    return {"method": "lbfgs", "parts": list(parts), "photos": len(y), "folds": choice.folds,
            "l2": choice.l2, "cv_accuracy": best.get("cv_accuracy"),
            "cv_log_loss": best.get("cv_log_loss"), "objective": choice.head.loss,
            "iterations": choice.head.iterations, "train_accuracy": 100.0 * train_accuracy,
            "cv": choice.table, "seconds": round(time.perf_counter() - start, 3)}


def partial_head_init(config: FinetuneConfig, prepared: Prepared, trainer: _Trainer, net,
                      reporter) -> dict[str, Any]:
    """partial: the head fitted as the frozen default fits it (L-BFGS, L2 by cross-validation
    on train + validation), on the evaluation view's features through the still-pretrained top
    stages; then fine-tuning starts from it (linear probe, then fine-tune: Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features", ICLR: a zero or random head sends large,
    wrong gradients into pretrained layers in the first steps)."""
    import dataclasses

    import torch

    late = prepared.partial_net.late.eval()
    features = {}
    with torch.no_grad():
        for part in ("train", "val"):
            acts = prepared.activations[part]
            features[part] = (torch.cat([late(a[:, 0].to(trainer.device).contiguous(
                memory_format=torch.channels_last)).float().cpu() for a in acts.split(64)])
                if acts is not None else torch.zeros((0, net.width)))
    return fit_head(config, dataclasses.replace(prepared, features=features), trainer, net,
                    reporter)


def _train(config: FinetuneConfig, trainer: _Trainer, run_dir: RunDir, reporter, resume: bool):
    from cnnlab.engine import FitConfig, fit, warmup_cosine

    net = trainer.net
    groups = net.param_groups(config.lr_, config.lr_ * config.body_lr_ratio, config.weight_decay)
    optimizer = _optimizer(config, groups)
    total = trainer.steps_per_epoch * config.epochs_
    schedule = warmup_cosine(total, round(config.warmup_epochs * trainer.steps_per_epoch))
    precision, _ = resolve_precision(config.precision, trainer.device)
    fit_config = FitConfig(
        epochs=config.epochs_, seed=config.seed, precision=precision,
        early_stopping=config.early_stopping,
        monitor="val_loss" if config.keep == "best" else None, mode="min",
        time_limit=config.time_limit, log_every=max(1, min(50, trainer.steps_per_epoch)),
    )
    with _threads(1 if config.cached else None):
        return fit(trainer.model, optimizer, trainer.batches, trainer.steps_per_epoch,
                   fit_config, run_dir, reporter, loss_fn=_loss_fn(config.label_smoothing),
                   evaluate=trainer.evaluate, lr_schedule=schedule, resume=resume,
                   device=trainer.device, label=config.strategy)


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op threads set to `n` inside the block (None: unchanged). Training a
    linear head on cached features is a few tiny matrix products per step, where more threads
    only add synchronisation: measured 2.8-3.5 ms per step on 1 thread, 47-82 ms on 2 on this
    shared 2-core machine."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------- outputs


def _scores(logits, targets, classes: tuple[str, ...], k: int) -> dict[str, Any]:
    """Top-1 / top-k error (percent) and per-class accuracy of logits against targets."""
    from cnnlab.analysis.binomial import error_interval

    n = len(targets)
    top = logits.topk(min(k, len(classes)), dim=1).indices
    hit1 = top[:, 0] == targets
    hitk = (top == targets[:, None]).any(dim=1)
    per_class = []
    for c, name in enumerate(classes):
        mask = targets == c
        m = int(mask.sum())
        correct = int(hit1[mask].sum())
        per_class.append({"class": name, "n": m, "correct": correct,
                          "accuracy": 100.0 * correct / m if m else None})
    return {
        "n": n,
        "top1_error": 100.0 * (1 - float(hit1.float().mean())) if n else None,
        "top_k": k,
        # top-k of k >= the number of classes is every class: always right, so not reported.
        "topk_error": (100.0 * (1 - float(hitk.float().mean()))
                       if n and k < len(classes) else None),
        "per_class": per_class,
        # Wilson 95% intervals: with 24 test photos one photo is 4.17 points.
        "top1_interval": error_interval(n - int(hit1.sum()), n) if n else None,
        "topk_interval": (error_interval(n - int(hitk.sum()), n)
                          if n and k < len(classes) else None),
    }


def _predictions_csv(items, root: Path, targets, logits, classes, k: int) -> str:
    import torch

    probs = torch.softmax(logits, dim=1)
    top_p, top_c = probs.topk(min(k, len(classes)), dim=1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "true_class", "rank", "class", "probability", "correct"])
    for it, t, cs, ps in zip(items, targets.tolist(), top_c.tolist(), top_p.tolist(),
                             strict=True):
        rel = _relative(it.path, root)
        for r, (c, p) in enumerate(zip(cs, ps, strict=True), start=1):
            w.writerow([rel, classes[t], r, classes[c], f"{p:.6f}", int(r == 1 and c == t)])
    return buf.getvalue()


EXPLAIN_MAX = 200  # misclassified test photos whose maps are drawn (the report lists as many)


def explain_test_mistakes(net, backbone: str, preprocess, split, logits, targets, draft: bool,
                          run_dir: RunDir, reporter) -> dict[str, Any]:
    """Grad-CAM maps of the predicted and of the true class of each misclassified test photo
    (the first EXPLAIN_MAX), drawn by the trained network: results.json "explanations"."""
    from cnnlab.tasks.explain import CamWriter, explain_mistakes, layer_of

    predicted = logits.argmax(dim=1).tolist()
    wrong = [i for i, (p, t) in enumerate(zip(predicted, targets.tolist(), strict=True))
             if p != t]
    writer = CamWriter(net, layer_of(net, backbone), preprocess, run_dir, draft=draft)
    chosen = wrong[:EXPLAIN_MAX]
    mistakes = [{"path": split.test[i].path, "predicted": predicted[i],
                 "true": int(targets[i]), "stem": f"cams/{i:05d}"} for i in chosen]
    drawn = explain_mistakes(writer, mistakes, reporter, description="CAMs of the mistakes")
    cams = [{"file": _relative(split.test[i].path, split.root),
             "predicted": {"index": m["predicted"], "class": split.classes[m["predicted"]],
                           "cam": d["predicted"]},
             "true": {"index": m["true"], "class": split.classes[m["true"]], "cam": d["true"]}}
            for i, m, d in zip(chosen, mistakes, drawn, strict=True) if "error" not in d]
    about = writer.describe()
    return {**about, "n_wrong": len(wrong), "limit": EXPLAIN_MAX,
            "seconds_per_photo": round(about["seconds"] / len(cams), 4) if cams else None,
            "cams": cams}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def export_model(run_dir: RunDir, net, config: FinetuneConfig, classes, preprocess,
                 weights_file: Path, selected: str) -> Path:
    """model.safetensors (the whole network: body + head) + model.json: what `cnnlab predict`
    loads, self-contained (no ImageNet weights file needed to predict)."""
    from safetensors.torch import save as st_save

    from cnnlab.runs import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_write_bytes(run_dir.file("model.safetensors"), st_save(tensors))
    run_dir.write_json("model.json", {
        "format": "cnnlab-finetuned/1",
        "backbone": config.backbone,
        "classes": list(classes),
        "preprocess": preprocess,
        "strategy": config.strategy,
        "top_k": top_k_for(len(classes), config.top_k),
        "imagenet_weights": str(weights_file),
        "checkpoint": selected,
    })
    return run_dir.file("model.safetensors")


def _settings(config: FinetuneConfig, net) -> dict[str, Any]:
    body_lr = config.lr_ * config.body_lr_ratio if config.strategy != "freeze" else None
    epoch_only = None if config.fitted else True  # settings that a fitted head does not use
    return {
        "strategy": config.strategy, "head_fit": config.head_fit,
        "epochs": epoch_only and config.epochs_,
        "optimizer": "lbfgs" if config.fitted else config.optimizer,
        "lr_head": epoch_only and config.lr_, "lr_body": body_lr,
        "batch_size": epoch_only and config.batch_size,
        "weight_decay": config.weight_decay, "label_smoothing": config.label_smoothing,
        "warmup_epochs": config.warmup_epochs, "augment": config.augment_,
        "early_stopping": config.early_stopping, "seed": config.seed,
        "feature_cache": config.cached and config.cache,
        "train_stages": config.train_stages if config.partial else None,
        "views": config.views if config.partial else None,
        "batchnorm": _bn_words(config),
        "model": net.describe(),
    }


def _bn_words(config: FinetuneConfig) -> str:
    if config.strategy == "freeze":
        return "frozen body in eval mode: ImageNet BatchNorm statistics, no dropout"
    if config.partial and config.bn == "frozen":
        return (f"top {config.train_stages} stage(s) trained on cached activations of the "
                "frozen ones; BatchNorm in eval mode (ImageNet statistics), scale and shift "
                "trained")
    if config.bn == "frozen":
        return ("BatchNorm layers kept in eval mode: ImageNet running statistics, scale and "
                "shift trained")
    return "BatchNorm in training mode: batch statistics, running statistics updated"


# ------------------------------------------------------------------------------------- run


def _load_split(config: FinetuneConfig, run_dir: RunDir, resume: bool):
    from cnnlab.data.splits import DatasetSplit, load_splits

    if resume and not run_dir.file("split.json").is_file():
        raise CnnlabError(f"{run_dir} has no split.json: not a finetune run directory")
    if resume or run_dir.file("split.json").is_file():
        return DatasetSplit.from_json(run_dir.read_json("split.json")), True
    return load_splits(config.data, config.split, config.val_fraction, config.seed), False


def run(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
        ) -> dict[str, Any] | None:
    """Train into `run_dir` (continue its `last` checkpoint when `resume`); results on rank 0."""
    config = resolve_backbone(config, run_dir, reporter, resume)
    config = resolve_strategy(config, run_dir, reporter, resume)
    if config.compare:
        return run_compare(config, run_dir, reporter, resume)
    return _run_one(config, run_dir, reporter, resume, split_dir=run_dir)


CHOICE_FILE = "backbone_choice.json"
# --strategy auto (BENCHMARKS.md, issue 17, "--strategy auto"): partial while the training
# photos (train + validation) are at most this many per class, else freeze.
AUTO_PARTIAL_MAX_PER_CLASS = 20


def auto_strategy(n_photos: int, n_classes: int) -> tuple[str, str]:
    """--strategy auto's rule on the training side of the split: (strategy, why)."""
    per_class = n_photos / max(n_classes, 1)
    if per_class <= AUTO_PARTIAL_MAX_PER_CLASS:
        return "partial", (f"{per_class:.1f} training photos per class (at most "
                           f"{AUTO_PARTIAL_MAX_PER_CLASS}): the top stage trains on cached "
                           "views")
    return "freeze", (f"{per_class:.1f} training photos per class (over "
                      f"{AUTO_PARTIAL_MAX_PER_CLASS}): the frozen body's fitted head")


def resolve_strategy(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                     ) -> FinetuneConfig:
    """The config with a concrete strategy: --strategy auto decided by `auto_strategy` on the
    split's train + validation photos (never the test ones); config.json keeps the result."""
    from dataclasses import replace

    if config.strategy != "auto":
        return config
    split, _ = _load_split(config, run_dir, resume)
    chosen, why = auto_strategy(len(split.train) + len(split.val), len(split.classes))
    reporter.log(f"--strategy auto: {chosen} ({why})")
    return replace(config, strategy=chosen)


def resolve_backbone(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                     ) -> FinetuneConfig:
    """The config with a concrete backbone: the one asked for; DEFAULT_BACKBONE when none was
    and --weights was given or only one is here; else the best by cross-validation on the
    training photos (written to backbone_choice.json, which a resumed run reads back)."""
    from dataclasses import replace

    from cnnlab.models.backbone_choice import available_backbones

    if config.backbone not in (None, AUTO):
        return config
    if config.backbone == AUTO and config.weights is not None:
        raise CnnlabError("--weights belongs to one backbone: give --model NAME with it")
    if resume and run_dir.file(CHOICE_FILE).is_file():  # config.json has it; kept as a guard
        return replace(config, backbone=run_dir.read_json(CHOICE_FILE)["chosen"])
    candidates = available_backbones() if config.weights is None else []
    if config.backbone is None and len(candidates) <= 1:
        return replace(config, backbone=DEFAULT_BACKBONE)
    if not candidates:
        raise CnnlabError("--model auto: no backbone has ImageNet weights on this machine; "
                          "`cnnlab models --pretrained` lists where they can come from")
    chosen, rows = choose_backbone(config, candidates, run_dir, reporter)
    run_dir.write_json(CHOICE_FILE, {"chosen": chosen, "rows": rows})
    # The file that was scored is the file used (and recorded in config.json for a resume).
    weights = next((w for name, w in candidates if name == chosen), None)
    return replace(config, backbone=chosen, weights=None if weights is None else str(weights))


def choose_backbone(config: FinetuneConfig, candidates, run_dir: RunDir, reporter
                    ) -> tuple[str, list[dict[str, Any]]]:
    """Score every candidate on the training side of the split (train + val), never test."""
    from cnnlab import dist
    from cnnlab.models.backbone_choice import best_of, score_backbones

    split, _ = _load_split(config, run_dir, resume=False)
    items = [it for p in ("train", "val") for it in split.part(p)]
    targets = split.targets("train") + split.targets("val")
    _, device = dist.init(config.device)
    reporter.log(f"--model auto: scoring {len(candidates)} backbones by cross-validation on "
                 f"{len(items)} train + validation photos")
    rows = score_backbones(candidates, [it.path for it in items], targets, len(split.classes),
                           reporter, seed=config.seed, device=device, workers=config.workers,
                           draft=config.draft)
    chosen = best_of(rows) or DEFAULT_BACKBONE
    for r in rows:
        r["chosen"] = r["backbone"] == chosen
    return chosen, rows


def _run_one(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool,
             split_dir: RunDir) -> dict[str, Any] | None:
    import torch

    from cnnlab import dist
    from cnnlab.models.pretrained import fetch, pretrained_spec_of
    from cnnlab.models.registry import create_pretrained, get_spec
    from cnnlab.models.transfer import TransferModel

    start = time.perf_counter()
    info = dist.from_env()
    spec = get_spec(config.backbone)  # a misspelt backbone first, before any work
    weights_file = fetch(pretrained_spec_of(spec), spec.name, config.weights)
    split, saved = _load_split(config, split_dir, resume)
    if info.enabled and config.strategy == "gradual":
        raise CnnlabError("--strategy gradual runs in one process (it changes which weights "
                          "train between epochs, which DistributedDataParallel does not allow)")
    if not info.is_main:
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    info, device = dist.init(config.device)
    if info.is_main and not resume:
        run_dir.save_config(config)
        precision, why = resolve_precision(config.precision, device)
        run_dir.save_environment(seed=config.seed, device=str(device), precision=precision,
                                 precision_reason=why)
    torch.manual_seed(config.seed)
    model, preprocess, _ = create_pretrained(spec.name, weights_file)
    net = TransferModel.from_pretrained(model, len(split.classes))
    net.set_strategy(config.strategy, config.bn)
    if config.partial:
        net.unfreeze(config.train_stages)
    net = net.to(device=device, memory_format=torch.channels_last)
    reporter.log(
        f"finetune: {config.strategy} {spec.name} on {len(split.classes)} classes, "
        f"{len(split.train)}/{len(split.val)}/{len(split.test)} train/val/test photos "
        f"(test: {split.sources['test']}); {_bn_words(config)}"
    )
    prepared = dist.broadcast_from_main(
        lambda: _prepare(config, split, net, preprocess, weights_file, device, reporter), info
    ) if not saved or config.strategy in ("freeze", "partial") else None
    if prepared is None:  # a saved split is already clean: no decode check again
        prepared = Prepared(split, None, {"used": False}, 0.0)
    split = prepared.split
    if info.is_main and not saved:
        split_dir.write_json("split.json", split.to_json())

    trainer = _Trainer(config, prepared, net, preprocess, device, info)
    head_fit, fit_result, head_init = None, None, None
    if config.fitted:  # solved, not trained: the refit is done before any test photo is seen
        head_fit = fit_head(config, prepared, trainer, net, reporter)
        selected = "fit"
    else:
        from cnnlab import checkpoints
        from cnnlab.engine import BEST, LAST, load_weights

        if config.partial:  # the head starts where the frozen default ends (a resume: reloaded)
            head_init = partial_head_init(config, prepared, trainer, net, reporter)
        fit_result = _train(config, trainer, run_dir, reporter, resume)
        selected = BEST if checkpoints.exists(run_dir.path, BEST) else LAST
        load_weights(trainer.model, run_dir, selected)
    net.eval()
    if not info.is_main:
        return None

    k = top_k_for(len(split.classes), config.top_k)
    test_logits = trainer.logits("test")
    test_targets = trainer.targets["test"]
    scores = _scores(test_logits, test_targets, split.classes, k)
    # A fitted head used the validation photos for fitting: its validation score would be a
    # training score. Its honest estimate before the test is the cross-validated accuracy.
    val_metrics = trainer.evaluate(trainer.model) if fit_result is not None else {}
    if fit_result is not None:
        best_record = next((r for r in fit_result.history
                            if r["epoch"] == fit_result.best_epoch), fit_result.last)
        train_accuracy = (100.0 * best_record["train_accuracy"]
                          if "train_accuracy" in best_record else None)
        epochs_run, stopped = fit_result.epochs_done, fit_result.stopped
        selected_epoch = (fit_result.best_epoch if selected == "best"
                          else fit_result.epochs_done)
        train_seconds = fit_result.train_seconds
    else:
        train_accuracy = head_fit["train_accuracy"]
        epochs_run, stopped, selected_epoch = 0, "converged", None
        train_seconds = head_fit["seconds"]
    choice = (split_dir.read_json(CHOICE_FILE) if split_dir.file(CHOICE_FILE).is_file()
              else None)
    # Counted in the first run that used it only (--compare: the freeze run).
    first = split_dir is run_dir or config.strategy == "freeze"
    choice_seconds = sum(r["seconds"] for r in choice["rows"]) if choice and first else 0.0
    export_model(run_dir, net, config, split.classes, preprocess, weights_file, selected)
    run_dir.write_text("predictions.csv", _predictions_csv(
        split.test, split.root, test_targets, test_logits, split.classes, max(k, 1)))
    explanations = (explain_test_mistakes(net, config.backbone, preprocess, split, test_logits,
                                          test_targets, config.draft, run_dir, reporter)
                    if config.explain else None)
    results = {
        "schema": SCHEMA,
        "data": str(split.root.resolve()),
        "layout": split.layout,
        "sources": split.sources,
        "classes": list(split.classes),
        "backbone": spec.name,
        "weights": str(weights_file),
        **split.counts(),
        "n_skipped": len(split.skipped),
        "settings": _settings(config, net),
        "epochs_run": epochs_run,
        "stopped": stopped,
        "selected_epoch": selected_epoch,
        "selected": selected,
        "train_accuracy": train_accuracy,
        "val_accuracy": 100.0 * val_metrics["val_accuracy"] if val_metrics else None,
        "val_loss": val_metrics.get("val_loss"),
        "head_fit": head_fit,
        "head_init": head_init,
        "backbone_choice": choice["rows"] if choice else None,
        "top1_error": scores["top1_error"],
        "top1_interval": scores["top1_interval"],
        "top_k": k,
        "topk_error": scores["topk_error"],
        "topk_interval": scores["topk_interval"],
        "test_accuracy": 100.0 - scores["top1_error"],
        "per_class_accuracy": scores["per_class"],
        "feature_cache": prepared.feature_info,
        # total: end to end, the backbone choice of --model auto included (it ran first).
        "seconds": {"choose_backbone": round(choice_seconds, 3),
                    "prepare": round(prepared.seconds, 3),
                    "train": round(train_seconds, 3),
                    "total": round(time.perf_counter() - start + choice_seconds, 3)},
        "skipped": [{"file": s.path, "reason": s.reason} for s in split.skipped],
        "explanations": explanations,
        "device": str(device),
        "world_size": info.world_size,
    }
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.finetune import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results


def compare_cost(config: FinetuneConfig) -> float:
    """A strategy's work in passes of the backbone over the photos: its weight in --compare's
    overall bar, so that the ETA is not that of two equal halves when freeze takes seconds and
    finetune minutes. A frozen body on cached features is one forward pass (the head's epochs
    on the vectors cost next to nothing); otherwise every epoch runs the body over the training
    photos, one forward pass when it is frozen, about three (forward + backward) when it
    trains, plus one pass to evaluate."""
    if config.cached:
        return 1.0
    per_epoch = 1.0 if config.strategy == "freeze" else 3.0
    return per_epoch * config.epochs_ + 1.0


def run_compare(config: FinetuneConfig, run_dir: RunDir, reporter, resume: bool = False
                ) -> dict[str, Any] | None:
    """freeze and finetune on one split, each into its own sub-directory, then one table.
    The two runs are the steps of one overall bar (weighted by `compare_cost`)."""
    from cnnlab import dist

    info = dist.from_env()
    if not info.is_main:
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    if info.is_main and not resume:
        run_dir.save_config(config)
    runs = {}
    costs = [compare_cost(config.for_strategy(s)) for s in COMPARED]
    with reporter.overall("finetune", len(COMPARED), costs) as display:
        for k, strategy in enumerate(COMPARED, start=1):
            rep = display.step(k, strategy)
            sub = RunDir(run_dir.path / strategy)
            done = sub.read_json("results.json") if sub.file("results.json").is_file() else None
            if done is not None and done.get("stopped") != "time-limit":  # finished before
                runs[strategy] = {**done, "run_dir": str(sub.path)}
                rep.log(f"{strategy}: finished earlier, kept")
                continue
            again = resume and sub.file("last.json").is_file()
            if info.is_main:
                sub.path.mkdir(parents=True, exist_ok=True)
                if not again:  # a start that died before its first checkpoint: start clean
                    sub.file("metrics.jsonl").unlink(missing_ok=True)
            runs[strategy] = _run_one(config.for_strategy(strategy), sub, rep, again,
                                      split_dir=run_dir)
    if not info.is_main:
        return None
    from cnnlab.report.finetune import summary_row

    rows = [summary_row(s, r) for s, r in runs.items()]
    choice = run_dir.read_json(CHOICE_FILE) if run_dir.file(CHOICE_FILE).is_file() else None
    results = {"schema": SCHEMA + "+compare", "data": runs["freeze"]["data"],
               "backbone": runs["freeze"]["backbone"], "rows": rows,
               "backbone_choice": choice["rows"] if choice else None,
               "runs": {s: r["run_dir"] for s, r in runs.items()}}
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.finetune import write_compare_report

        write_compare_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results
