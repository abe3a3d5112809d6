"""Transfer learning surgery: a pretrained ImageNet model -> body + a new head for your classes.

    model, preprocess, weights = create_pretrained("efficientnet_lite0")   # 1000-class weights
    net = TransferModel.from_pretrained(model, num_classes=10)             # then the new head
    net.set_strategy("freeze")            # only the head trains; the body is frozen, in eval mode
    groups = net.param_groups(lr=1e-3, body_lr=1e-4, weight_decay=0.05)

The body is the pretrained network with its final 1000-way layer taken out, so `body(x)` is the
pooled feature vector (N, D) the old classifier read; the head is a fresh `Linear(D, classes)`.
Where the 1000-way layer is:
  timm models       `reset_classifier(0)`: the model then returns its pooled features
                    (EfficientNet-Lite is timm's `tf_efficientnet_lite*`);
  everything else   the last `nn.Linear` with 1000 outputs, when no layer with weights follows it
                    (torchvision: `fc`, `classifier[-1]`, `heads.head`, `head`); it becomes
                    `nn.Identity`. SqueezeNet's 1000-way layer is a convolution followed by
                    pooling, which this refuses.

The head starts at zero: every class equally likely (loss ln C) and nothing seed-dependent added
to features that already separate the classes; the gradient of the first step is the same
whatever the seed.

Strategies (`set_strategy`):
  freeze    the body never trains and always runs in eval mode (BatchNorm uses its ImageNet
            statistics, dropout is off), so its output is a fixed function of the image: the
            features can be computed once and cached (`models/features.py`);
  finetune  every layer trains, the body at a smaller learning rate (`param_groups`);
  gradual   the head first, then the body unfrozen stage by stage from the top (`stages`);
  partial   the top stages only (`unfreeze(n)` after `set_strategy`), trained on cached
            activations of the frozen ones (`models/partial.py`).
BatchNorm in a training body (`bn`): "frozen" (default) keeps every BatchNorm layer in eval mode:
its running mean/variance stay the ImageNet ones while its scale and shift still learn. With
batches of 16-32 photos of one small dataset, batch statistics are noisy and differ between
training and evaluation; the frozen statistics are the better estimate, and a batch of one cannot
fail. "train" uses batch statistics and updates the running ones (large batches of many images).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

IMAGENET_CLASSES = 1000
STRATEGIES = ("freeze", "finetune", "gradual", "partial")
BN_MODES = ("frozen", "train")
MIN_STAGE_SHARE = 0.01  # a parameter group under 1% of the body joins the next one (stems, norms)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _find_imagenet_linear(model: nn.Module) -> str:
    """Name of the final 1000-way Linear, refusing models where weights follow it."""
    found: str | None = None
    after: list[str] = []
    for name, module in model.named_modules():
        has_own = any(True for _ in module.parameters(recurse=False))
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES:
            found, after = name, []
        elif found is not None and has_own:
            after.append(name)
    if found is None:
        raise CnnlabError(
            "this model has no final 1000-way linear layer to replace (SqueezeNet's classifier "
            "is a convolution); choose another backbone (`cnnlab models --pretrained`)"
        )
    if after:
        raise CnnlabError(
            f"layers with weights follow this model's classifier {found!r} ({after[0]}); "
            "its head cannot be replaced by a new linear layer"
        )
    return found


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def split_body_head(model: nn.Module) -> tuple[nn.Module, int]:
    """Take the 1000-way layer out of a pretrained `model` (in place); returns the body, which
    now outputs pooled features, and their width D."""
    if hasattr(model, "reset_classifier") and hasattr(model, "num_features"):
        width = int(getattr(model, "head_hidden_size", None) or model.num_features)
        model.reset_classifier(0)
        return model, width
    name = _find_imagenet_linear(model)
    width = int(model.get_submodule(name).in_features)
    _set_submodule(model, name, nn.Identity())
    return model, width


def _stage_names(body: nn.Module) -> list[list[str]]:
    """The body's parameter names grouped into stages, input side first.

    timm models say it themselves (`group_matcher(coarse=True)`: stem, each block stage, head
    convolution); otherwise each top-level child is a stage, with torchvision's `features` /
    `layers` stacks split into their own children. Groups with under 1% of the parameters
    (stems, lone norms) join the next group, so a stage is a real share of the network.
    """
    names = [n for n, _ in body.named_parameters()]
    groups: list[list[str]] = []
    if hasattr(body, "group_matcher"):
        from timm.models import group_parameters

        groups = [list(g) for g in group_parameters(body, body.group_matcher(coarse=True)).values()]
    else:
        order: dict[str, list[str]] = {}
        for n in names:
            parts = n.split(".")
            key = ".".join(parts[:2]) if parts[0] in ("features", "layers") and len(parts) > 2 \
                else parts[0]
            order.setdefault(key, []).append(n)
        groups = list(order.values())
    sizes = dict(body.named_parameters())
    total = sum(p.numel() for p in sizes.values()) or 1
    merged: list[list[str]] = []
    carry: list[str] = []
    for g in groups:
        carry = carry + g
        if sum(sizes[n].numel() for n in carry) >= MIN_STAGE_SHARE * total:
            merged.append(carry)
            carry = []
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


class TransferModel(nn.Module):
    """`head(body(x))`: a pretrained body that outputs pooled features, and a new linear head."""

    def __init__(self, body: nn.Module, width: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise CnnlabError(f"a classifier needs at least 2 classes, not {num_classes}")
        self.body = body
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.width = width
        self.stages = _stage_names(body)
        self.strategy = "finetune"
        self.bn = "frozen"
        self.unfrozen = len(self.stages)  # stages (from the top) whose parameters train

    @classmethod
    def from_pretrained(cls, model: nn.Module, num_classes: int) -> TransferModel:
        """Load the 1000-class weights first (`create_pretrained`), then call this."""
        body, width = split_body_head(model)
        return cls(body, width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def frozen_body(self) -> nn.Module:
        """The body for a frozen feature pass (models/frozen_transfer.FrozenTransfer gives a
        function that builds it instead)."""
        return self.body

    # ---------------------------------------------------------------------- what trains

    def set_strategy(self, strategy: str, bn: str = "frozen") -> TransferModel:
        if strategy not in STRATEGIES:
            raise CnnlabError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if bn not in BN_MODES:
            raise CnnlabError(f"--bn must be one of {', '.join(BN_MODES)}")
        self.strategy, self.bn = strategy, bn
        self.unfreeze(0 if strategy in ("freeze", "gradual", "partial") else len(self.stages))
        return self

    def unfreeze(self, n_stages: int) -> None:
        """Let the top `n_stages` stages of the body train (0: the head alone)."""
        if self.strategy == "freeze" and n_stages:
            raise ValueError("a frozen body has no stages to unfreeze")
        self.unfrozen = max(0, min(n_stages, len(self.stages)))
        training = {n for stage in self.stages[len(self.stages) - self.unfrozen :] for n in stage}
        for name, p in self.body.named_parameters():
            p.requires_grad_(name in training)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        """`nn.Module.train`, then the parts that must not train put back in eval mode: the
        whole body when it is frozen, every module of a frozen stage (no dropout or stochastic
        depth where nothing learns), and BatchNorm when `bn == "frozen"`."""
        super().train(mode)
        if not mode:
            return self
        for module in self.body.modules():  # parents first: eval() on one covers its children
            params = list(module.parameters())
            if ((params and not any(p.requires_grad for p in params))
                    or (self.bn == "frozen" and _is_norm(module))):
                module.eval()
        return self

    # ------------------------------------------------------------------------ optimiser

    def param_groups(self, lr: float, body_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups: head and body at their own learning rates, weight decay on weights
        only (not on biases or norm scales/shifts, whose decay only hurts). Every body parameter
        is listed even while frozen (no gradient: the optimiser skips it), so one optimiser and
        its saved state serve every phase of `gradual`. Empty groups are left out."""
        groups = []
        for params, rate in ((self.head.named_parameters(), lr),
                             (() if self.strategy == "freeze" else self.body.named_parameters(),
                              body_lr)):
            decay, no_decay = _split_decay(params)
            groups += [{"params": decay, "lr": rate, "weight_decay": weight_decay},
                       {"params": no_decay, "lr": rate, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def describe(self) -> dict[str, Any]:
        n_body = sum(p.numel() for p in self.body.parameters())
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"feature_width": self.width, "body_parameters": n_body,
                "head_parameters": sum(p.numel() for p in self.head.parameters()),
                "trainable_parameters": n_train, "stages": len(self.stages),
                "unfrozen_stages": self.unfrozen, "strategy": self.strategy, "bn": self.bn}


def _split_decay(named: Iterable[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    decay, no_decay = [], []
    for _, p in named:
        (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def gradual_phases(n_stages: int, epochs: int, max_phases: int = 4) -> list[int]:
    """How many body stages train in each epoch of `gradual`: the head alone for the first
    phase, then a top share of the stages more in each following phase, the whole body in the
    last; phases are equally long (ULMFiT's gradual unfreezing, in at most `max_phases` steps
    so that each phase gets several epochs on a small dataset). Returns one entry per epoch.
    """
    steps = max(1, min(max_phases - 1, n_stages, epochs - 1))
    unfrozen = [0] + [round(n_stages * k / steps) for k in range(1, steps + 1)]
    per_phase = [epochs // len(unfrozen) + (1 if i < epochs % len(unfrozen) else 0)
                 for i in range(len(unfrozen))]
    return [u for u, n in zip(unfrozen, per_phase, strict=True) for _ in range(n)]


def build_transfer(backbone: str, num_classes: int) -> TransferModel:
    """The architecture of a fine-tuned model, with untrained weights (load a state dict next):
    what `cnnlab predict` needs to read a checkpoint without the ImageNet weights file."""
    from cnnlab.models.registry import get_spec

    return TransferModel.from_pretrained(get_spec(backbone).builder(), num_classes)
