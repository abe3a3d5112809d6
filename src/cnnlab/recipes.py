"""Training recipes as data, and the small pure functions a training loop needs to follow one.

A `Recipe` says everything about *how* a model is trained: optimiser, learning-rate schedule,
batch size, epochs, augmentation, label smoothing, weight averaging, test-time augmentation,
precision. The engine owns the loop (epochs, checkpoints, DDP); it asks this module for the
optimiser (`make_optimizer`), the learning-rate factor at a step (`lr_factor` / `lr_lambda`;
`warmup_cosine` for the loops without a recipe), the weight averaging (`LookaheadState`,
`ema_update`), the first-layer initialisation (`prepare_model`), and predictions (`predict`).

Recipes:
- `lab-simple-cnn`, `lab-resnet18`: the course lab exactly as it was run (`LAB_RECIPES`).
- `fast`, `fast-60s`: the fastest route to high accuracy on a 2-core CPU found here, after
  KellerJordan/cifar10-airbench (airbench94.py; Jordan 2024, arXiv:2404.00498). Each
  ingredient cites its source where it is defined. The measurements behind the choices are in
  BENCHMARKS.md (CIFAR-10 time to accuracy).

Learning rates are in ordinary PyTorch units: the loss is the *mean* over the batch.
(airbench sums the loss and quotes "lr per 1024 examples"; for SGD, lr_sum * batch_size = lr_mean
exactly, which is how its numbers were translated below.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.tensor_batches import Augment
from cnnlab.errors import CnnlabError, suggest

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear")
PRECISIONS = ("fp32", "bf16", "auto")
TTA_MODES = ("none", "flip", "flip-translate")
NORMALIZATIONS = ("dataset", "half")  # train-set mean/std, or the lab's Normalize(0.5, 0.5)


@dataclass(frozen=True)
class Schedule:
    """Learning-rate factor over training (multiplies `Recipe.lr`).

    "constant": 1 throughout.
    "linear": from `start` up to 1 linearly over the first `warmup` fraction of the steps, then
    linearly down to `end` at the last step: airbench's triangular schedule (airbench94.py
    `get_lr`: warm-up 23% from 0.2, down to 0.07), a one-cycle schedule with straight lines.
    """

    kind: str = "constant"
    warmup: float = 0.0  # fraction of all steps
    start: float = 1.0  # factor at step 0
    end: float = 1.0  # factor at the last step

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise CnnlabError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if not 0 <= self.warmup < 1:
            raise CnnlabError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.start < 0 or self.end < 0:
            raise CnnlabError("schedule factors must be >= 0")


@dataclass(frozen=True)
class Lookahead:
    """airbench's weight averaging (airbench94.py `LookaheadState`; Zhang et al. 2019,
    "Lookahead Optimizer"): every `every` steps the slow weights move towards the fast ones,
    slow = decay * slow + (1 - decay) * fast, and the fast (trained) weights are reset to slow.
    decay rises with training as `base ** every * (step / total) ** power` (airbench: 0.95 ** 5
    * (step/total) ** 3): almost no averaging early, strong averaging at the end. At the end
    the model takes the slow weights."""

    every: int = 5
    base: float = 0.95
    power: float = 3.0

    def __post_init__(self) -> None:
        if self.every < 1 or not 0 <= self.base <= 1 or self.power < 0:
            raise CnnlabError("lookahead: every >= 1, 0 <= base <= 1, power >= 0")

    def decay(self, step: int, total_steps: int) -> float:
        return self.base**self.every * (step / max(1, total_steps)) ** self.power


@dataclass(frozen=True)
class Recipe:
    """How to train a model. Validated on construction; see the module docstring for units."""

    name: str
    model: str  # registered model name
    epochs: float  # may be fractional (airbench: 9.9); steps = ceil(epochs * steps_per_epoch)
    batch_size: int  # global (all ranks together)
    optimizer: str = "sgd"
    lr: float = 0.1  # for the batch-mean loss
    momentum: float = 0.0
    nesterov: bool = False
    # PyTorch's coefficient: added to the gradient, so it goes through momentum.
    weight_decay: float = 0.0
    # airbench `bias_scaler`: BatchNorm biases train at lr * bias_lr_scale, with their weight
    # decay divided by the same factor so that their decay per step matches the other weights'.
    bias_lr_scale: float = 1.0
    # Carrying the recipe over to a network it was not tuned on (`tasks.train.with_model`).
    # `other_lr` / `other_bias_lr_scale`: for another network with normalisation layers
    # (None: `lr` / `bias_lr_scale`); `lr_without_norm`: for one without (BatchNorm makes a
    # net's loss invariant to its weights' scale, which is what lets `lr` be large).
    other_lr: float | None = None
    other_bias_lr_scale: float | None = None
    lr_without_norm: float | None = None
    label_smoothing: float = 0.0
    schedule: Schedule = field(default_factory=Schedule)
    augment: Augment = field(default_factory=Augment)
    normalization: str = "dataset"
    lookahead: Lookahead | None = None
    tta: str = "none"
    precision: str = "fp32"
    whiten_images: int = 0  # images used by the whitening init (0: model has none / not used)
    whiten_bias_epochs: float = 0.0  # the whitening conv's bias trains for these epochs only
    model_options: tuple[tuple[str, object], ...] = ()  # extra builder options, e.g. widths
    description: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise CnnlabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise CnnlabError("epochs, batch_size and lr must be positive")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.bias_lr_scale <= 0:
            raise CnnlabError("momentum in [0, 1), weight_decay >= 0, bias_lr_scale > 0")
        if any(v is not None and v <= 0
               for v in (self.other_lr, self.other_bias_lr_scale, self.lr_without_norm)):
            raise CnnlabError("other_lr, other_bias_lr_scale and lr_without_norm must be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise CnnlabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise CnnlabError("nesterov needs the sgd optimizer with momentum > 0")
        if self.normalization not in NORMALIZATIONS:
            raise CnnlabError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
        if self.tta not in TTA_MODES:
            raise CnnlabError(f"tta must be one of {', '.join(TTA_MODES)}")
        if self.precision not in PRECISIONS:
            raise CnnlabError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.whiten_images < 0 or self.whiten_bias_epochs < 0:
            raise CnnlabError("whiten_images and whiten_bias_epochs must be >= 0")

    def total_steps(self, train_size: int, world_size: int = 1) -> int:
        """Optimizer steps of the whole run (drop_last batches; each rank batch_size/world_size)."""
        per_epoch = (train_size // world_size) // (self.batch_size // world_size)
        return max(1, math.ceil(self.epochs * per_epoch))


# ---------------------------------------------------------------------------------------------
# Pure helpers for the training loop


def lr_factor(schedule: Schedule, step: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if schedule.kind == "constant":
        return 1.0
    warmup_steps = int(total_steps * schedule.warmup)
    if step < warmup_steps:
        frac = step / warmup_steps
        return schedule.start * (1 - frac) + frac
    frac = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (1 - frac) + schedule.end * min(frac, 1.0)


def lr_lambda(schedule: Schedule, total_steps: int) -> Callable[[int], float]:
    """For `torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(...))`, stepped per batch."""
    return lambda step: lr_factor(schedule, step, total_steps)


def warmup_cosine(total_steps: int, warmup_steps: int = 0, final: float = 0.0
                  ) -> Callable[[int], float]:
    """Learning-rate multiplier for a loop without a recipe (finetune's heads, charrnn): linear
    warm-up from ~0 to 1 over `warmup_steps`, then a cosine to `final` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        frac = min((step - warmup_steps) / span, 1.0)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def _is_norm_bias(name: str, module_of: dict[str, nn.Module]) -> bool:
    owner = module_of.get(name.rsplit(".", 1)[0] if "." in name else "")
    return name.endswith("bias") and isinstance(owner, nn.modules.batchnorm._BatchNorm)


def make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's trainable parameters.

    With bias_lr_scale != 1 the BatchNorm biases form their own group (airbench94.py
    `param_configs`). Frozen parameters (requires_grad False) are left out. A parameter frozen
    only for a while (the whitening bias) is in: the loop sets its requires_grad each epoch
    (`whiten_bias_trains`), and SGD skips a parameter whose grad is None.
    """
    modules = dict(model.named_modules())
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise CnnlabError(f"{recipe.model}: nothing to train (every parameter is frozen)")
    if recipe.bias_lr_scale != 1.0:
        biases = [p for n, p in params if _is_norm_bias(n, modules)]
        others = [p for n, p in params if not _is_norm_bias(n, modules)]
        scale, wd = recipe.bias_lr_scale, recipe.weight_decay
        groups = [
            {"params": biases, "lr": recipe.lr * scale, "weight_decay": wd / scale},
            {"params": others, "lr": recipe.lr, "weight_decay": wd},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for _, p in params]}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)


def whiten_bias_trains(recipe: Recipe, epoch: int) -> bool:
    """airbench trains the whitening conv's bias for the first `whiten_bias_epochs` epochs only
    (airbench94.py `whiten_bias_epochs: 3`)."""
    return epoch < recipe.whiten_bias_epochs


@torch.no_grad()
def ema_update(average: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """average = decay * average + (1 - decay) * model, for every floating-point tensor of the
    model's state (parameters and BatchNorm running statistics; integer counters are left)."""
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            average[name].lerp_(value, 1.0 - decay)


class LookaheadState:
    """The slow weights of `Lookahead`; `step` is called after every optimizer step."""

    def __init__(self, model: nn.Module, config: Lookahead):
        self.config = config
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After optimizer step number `step` (1-based): average and reset every `every` steps;
        at the last step the model takes the slow weights."""
        if step >= total_steps:
            self._reset(model)
        elif step % self.config.every == 0:
            ema_update(self.slow, model, self.config.decay(step, total_steps))
            self._reset(model)

    def _reset(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(self.slow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.slow = {k: v.clone() for k, v in state.items()}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Logits of a normalised batch, with test-time augmentation:

    "flip": the mean of the logits of x and of x flipped left-right (airbench `infer_mirror`);
    "flip-translate": half that, plus half the mean over the two one-pixel diagonal translations
    (reflect padding) of the same flip average (airbench `infer_mirror_translate`, tta_level 2).
    """
    if tta == "none":
        return model(x)
    flip = 0.5 * model(x) + 0.5 * model(x.flip(-1))
    if tta == "flip":
        return flip
    if tta != "flip-translate":
        raise CnnlabError(f"tta must be one of {', '.join(TTA_MODES)}")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2]]
    translate = sum(predict(model, s, "flip") for s in shifted) / len(shifted)
    return 0.5 * flip + 0.5 * translate


def prepare_model(recipe: Recipe, model: nn.Module, train_images: torch.Tensor) -> None:
    """Recipe-specific initialisation: the whitening conv from the first `whiten_images`
    normalised training images (float [N, C, H, W])."""
    if recipe.whiten_images:
        from cnnlab.models.fast_cifar import whiten_init

        whiten_init(model, train_images[: recipe.whiten_images])


# ---------------------------------------------------------------------------------------------
# The recipes

# The course lab, as run: torchvision transforms ToTensor + Normalize((0.5,)*3, (0.5,)*3), no
# augmentation, DataLoader(batch_size=32, shuffle=True), Adam(lr=1e-3), CrossEntropyLoss, 5 epochs.
LAB_SIMPLE_CNN = Recipe(
    name="lab-simple-cnn", model="simple-cnn", epochs=5, batch_size=32, optimizer="adam",
    lr=1e-3, normalization="half",
    description="the lab's plain CNN: Adam 1e-3, batch 32, 5 epochs, no augmentation",
)
# The lab's ResNet-18: torchvision resnet18(num_classes=10) (ImageNet stem on 32x32 images),
# Adam(lr=0.01), batch 16, the same loop and 5 epochs as the plain CNN.
LAB_RESNET18 = Recipe(
    name="lab-resnet18", model="resnet18", epochs=5, batch_size=16, optimizer="adam",
    lr=0.01, normalization="half", model_options=(("num_classes", 10),),
    description="the lab's torchvision ResNet-18: Adam 0.01, batch 16, 5 epochs",
)

LAB_RECIPES = {"simple-cnn": LAB_SIMPLE_CNN, "resnet18": LAB_RESNET18}

# Filled in by the measurements (see BENCHMARKS.md); draft values during the search.
FAST = Recipe(
    name="fast", model="fast-cifar", epochs=10, batch_size=1024, optimizer="sgd",
    lr=1.5, momentum=0.85, nesterov=True, weight_decay=1.33e-3, bias_lr_scale=64.0,
    label_smoothing=0.2, schedule=Schedule("linear", warmup=0.23, start=0.2, end=0.07),
    augment=Augment(crop_pad=2, pad_mode="reflect", flip="alternate"),
    lookahead=Lookahead(), tta="flip-translate", precision="auto",
    whiten_images=5000, whiten_bias_epochs=3,
    # Other BatchNorm networks: lr 1.5 with BatchNorm biases at 64x (values that lean on
    # fast-cifar's frozen BN scales and 1/9 output scale) left resnet18 and resnet20 at chance.
    # With the biases at 1x, 2 epochs, one seed (BENCHMARKS.md): resnet18 lr 0.05 -> 55.6%,
    # 0.1 -> 54.3%, 0.2 -> 49.4%; resnet20 0.05 -> 42.0%, 0.1 -> 47.3%, 0.2 -> 47.5%.
    other_lr=0.1, other_bias_lr_scale=1.0,
    # simple-cnn (no BatchNorm), fast recipe, 2 epochs, one seed: lr 1.5 -> NaN by step 17;
    # 0.4 -> 22.6%, 0.2 -> 49.5%, 0.1 -> 51.0%, 0.05 -> 46.8% test accuracy (BENCHMARKS.md).
    lr_without_norm=0.1,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (LAB_SIMPLE_CNN, LAB_RESNET18, FAST)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise CnnlabError(f"unknown recipe {name!r}{suggest(name, RECIPES)}") from None
