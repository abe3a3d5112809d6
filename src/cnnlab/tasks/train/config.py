"""`TrainConfig`: what `cnnlab train` is asked to do, checked when it is made (a one-line
CnnlabError for every bad value), and the recipe settings a config may replace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnlab.errors import CnnlabError, suggest

RECIPE_CHOICES = ("fast", "lab")
DEFAULT_MODEL = "fast-cifar"

# Recipe fields a config may replace (name and model are the recipe's identity, not settings).
OVERRIDABLE = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
               "bias_lr_scale", "label_smoothing", "schedule", "augment", "normalization",
               "lookahead", "tta", "precision", "whiten_images", "whiten_bias_epochs")


@dataclass(frozen=True)
class TrainConfig:
    data: str  # a CIFAR zip, a folder of train/ and test/ class folders, the official batches
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    recipe: str = "fast"  # "fast" (cnnlab's best on a CPU), "lab" (the course lab's, per model)
    epochs: float | None = None  # override the recipe's epochs
    batch_size: int | None = None  # override the recipe's (global) batch size
    lr: float | None = None  # override the recipe's learning rate
    seeds: int = 1  # seeds seed, seed+1, ...: accuracy is reported as mean ± std over them
    seed: int = 0
    precision: str = "auto"  # fp32, bf16, or auto: bf16 where the CPU/GPU does it natively
    limit_per_class: int | None = None  # train and test on the first N images of each class
    # Train on a seeded random N images of each class of train; the test set stays whole (a
    # small training set, measured on every test image: the tightest accuracy per second).
    train_per_class: int | None = None
    image_size: int | None = None  # shrink every image to S x S first (area averaging)
    classes: int | None = None  # only the first N classes, in train and test (None: all)
    # At every evaluation, accuracy and loss on this many training images (a fixed stratified
    # sample, no augmentation, eval mode): the training error of He et al.'s Fig. 6, measured
    # cleanly rather than as the running accuracy of augmented batches. 0 = off.
    train_eval: int = 0
    # Measure the test set at every evaluation (the per-epoch test curve); False: only once,
    # after the last step (the number results.json reports), so a study that needs only
    # training curves does not pay a test pass per epoch (10,000 images: more than an epoch
    # of a small training set costs).
    test_curve: bool = True
    val_fraction: float = 0.0  # share of train held out as validation (its best epoch is tested)
    time_limit: float | None = None  # seconds per (model, seed); stops after the epoch that ends
    # Minutes for the whole run (every model and seed, training and final test), shared
    # equally: each (model, seed) times a few of its steps on this machine and trains as many
    # as fit its share, its schedule stretched over them (instead of --epochs).
    budget: float | None = None
    # With a budget, time the default network's candidate shapes (fast-cifar at an eighth, a
    # quarter (also with progressive resizing) and its full width, budget.SHAPES) and train
    # the one expected to do best in the minutes.
    calibrate: bool = True
    eval_every: int = 1  # epochs between the test-accuracy points of the curves
    threads: int | None = None  # torch CPU threads (default: torch's, i.e. the cores)
    device: str = "auto"
    deterministic: bool = False
    report: bool = True
    # Builder options for every model, e.g. (("depth", 4), ("kernel", 5)) for plain-cnn.
    model_options: tuple[tuple[str, Any], ...] = ()
    # Any Recipe field, replaced after the recipe is chosen (recipe.py: `apply_overrides`).
    recipe_overrides: tuple[tuple[str, Any], ...] = ()
    test: bool = True  # measure test accuracy; False: validation only (a sweep's trials)

    def __post_init__(self) -> None:
        # From JSON (config.json of a resumed run) these arrive as lists of [key, value] lists.
        object.__setattr__(self, "model_options", _pairs(self.model_options, "model_options"))
        object.__setattr__(self, "recipe_overrides",
                           _pairs(self.recipe_overrides, "recipe_overrides"))
        bad = [k for k, _ in self.recipe_overrides if k not in OVERRIDABLE]
        if bad:
            raise CnnlabError(f"recipe_overrides: {bad[0]!r} is not a recipe setting"
                              f"{suggest(bad[0], OVERRIDABLE)}")
        if not self.test and not self.val_fraction:
            raise CnnlabError("a run without the test set needs --val-fraction (else it "
                              "measures nothing)")
        if not self.models:
            raise CnnlabError("no model given: pass -m MODEL")
        if len(set(self.models)) != len(self.models):
            raise CnnlabError("a model is given twice; each -m names a different model")
        if self.recipe not in RECIPE_CHOICES:
            from cnnlab import recipes

            if self.recipe not in recipes.RECIPES:
                raise CnnlabError(f"unknown --recipe {self.recipe!r}; choose "
                                  f"{', '.join(RECIPE_CHOICES + tuple(recipes.RECIPES))}")
        if self.seeds < 1:
            raise CnnlabError(f"--seeds must be at least 1, not {self.seeds}")
        if self.epochs is not None and self.epochs <= 0:
            raise CnnlabError(f"--epochs must be positive, not {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CnnlabError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise CnnlabError(f"--lr must be positive, not {self.lr}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise CnnlabError("--precision must be fp32, bf16 or auto")
        if self.limit_per_class is not None and self.limit_per_class < 2:
            raise CnnlabError("--limit-per-class must be at least 2")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise CnnlabError(f"train_per_class must be at least 1, not {self.train_per_class}")
        if self.classes is not None and self.classes < 2:
            raise CnnlabError(f"classes must be at least 2, not {self.classes}")
        if self.image_size is not None and self.image_size < 4:
            raise CnnlabError(f"image_size must be at least 4 pixels, not {self.image_size}")
        if self.train_eval < 0:
            raise CnnlabError(f"train_eval must be >= 0 images, not {self.train_eval}")
        if not 0 <= self.val_fraction < 1:
            raise CnnlabError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise CnnlabError("--time-limit must be positive (seconds)")
        if self.budget is not None and self.budget <= 0:
            raise CnnlabError(f"--budget must be positive (minutes), not {self.budget}")
        if self.budget is not None and self.epochs is not None:
            raise CnnlabError("give --epochs or --budget, not both (a budget sets the steps)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")


def _pairs(value: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """((key, value), ...) from a mapping, pairs, or JSON's lists of [key, value]."""
    if isinstance(value, dict):
        value = tuple(value.items())
    try:
        pairs = tuple((str(k), v) for k, v in value)
    except (TypeError, ValueError):
        raise CnnlabError(f"{what} must be a mapping of settings, not {value!r}") from None
    if len({k for k, _ in pairs}) != len(pairs):
        raise CnnlabError(f"{what}: a setting is given twice")
    return pairs


