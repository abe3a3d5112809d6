"""Training the network on the shared engine (`engine.fit`), for every strategy that trains
for epochs: freeze (the head on cached features, or through the frozen body on augmented
photos), finetune (every layer), gradual (the body unfrozen stage by stage) and partial (the
top stages on cached early-stage activations). `Trainer` holds what the engine calls back
into: the batches of an epoch, the logits of a part, the validation metrics."""

from __future__ import annotations

import contextlib
import math

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks.finetune.config import FinetuneConfig
from cnnlab.tasks.finetune.data import Prepared


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


class Trainer:
    """The pieces `engine.fit` calls back into, for one strategy."""

    def __init__(self, config: FinetuneConfig, prepared: Prepared, net, preprocess, device,
                 info):
        self.config, self.prepared, self.net, self.preprocess = config, prepared, net, preprocess
        self.device, self.info = device, info
        split = prepared.split
        self.targets = _targets(split, prepared.arrays)
        self.model = net.head if config.cached else net
        self.n_train = len(split.train)
        if config.partial:
            # The validation photos train too: with the epochs fixed and the last kept they
            # have nothing to choose, and in a few-shot split they are a third of the photos.
            self.model = prepared.partial_net
            self.n_train = len(split.train) + len(split.val)
            import torch

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
        from cnnlab.dist import shard_indices
        from cnnlab.rng import epoch_generator

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
        """Logits of the current model on a part (eval mode), from features when there are
        (numpy ones through a FrozenTransfer's ArrayHead: numpy logits, no torch)."""
        feats = (self.prepared.features or {}).get(part)
        if feats is not None and self.prepared.arrays:
            return self.net.head(feats)
        import torch

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



def train(config: FinetuneConfig, trainer: Trainer, run_dir: RunDir, reporter, resume: bool,
          precision: str):
    """`trainer.model` trained on the engine for the config's epochs; `precision`: fp32 or
    bf16, --precision resolved on the device."""
    from cnnlab.engine import FitConfig, fit
    from cnnlab.recipes import warmup_cosine

    net = trainer.net
    groups = net.param_groups(config.lr_, config.lr_ * config.body_lr_ratio, config.weight_decay)
    optimizer = _optimizer(config, groups)
    total = trainer.steps_per_epoch * config.epochs_
    schedule = warmup_cosine(total, round(config.warmup_epochs * trainer.steps_per_epoch))
    fit_config = FitConfig(
        epochs=config.epochs_, seed=config.seed, precision=precision,
        early_stopping=config.early_stopping,
        monitor="val_loss" if config.keep == "best" else None, mode="min",
        time_limit=config.time_limit, log_every=max(1, min(50, trainer.steps_per_epoch)),
    )
    with threads(1 if config.cached else None):
        return fit(trainer.model, optimizer, trainer.batches, trainer.steps_per_epoch,
                   fit_config, run_dir, reporter, loss_fn=_loss_fn(config.label_smoothing),
                   evaluate=trainer.evaluate, lr_schedule=schedule, resume=resume,
                   device=trainer.device, label=config.strategy)


def _targets(split, arrays: bool) -> dict:
    """Each part's class indices: int64 numpy arrays (`arrays`), else torch.long tensors."""
    if arrays:
        import numpy as np

        return {p: np.array(split.targets(p), dtype=np.int64) for p in ("train", "val", "test")}
    import torch

    return {p: torch.tensor(split.targets(p), dtype=torch.long)
            for p in ("train", "val", "test")}


@contextlib.contextmanager
def threads(n: int | None):
    """torch's intra-op threads set to `n` inside the block (None: unchanged; torch not loaded:
    nothing to set, and it is not imported for it). Training a linear head on cached features
    is a few tiny matrix products per step, where more threads only add synchronisation:
    measured 2.8-3.5 ms per step on 1 thread, 47-82 ms on 2 on this shared 2-core machine."""
    from cnnlab.hardware import torch_loaded

    if n is None or not torch_loaded():
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

