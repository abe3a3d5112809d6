"""The settings of `cnnlab finetune`: FinetuneConfig, validated in __post_init__, with the
defaults it resolves (by strategy, by optimiser) and the constants they rest on."""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.data.splits import DEFAULT_FRACTIONS, DEFAULT_VAL_FRACTION
from cnnlab.errors import CnnlabError

SCHEMA = "cnnlab.finetune/1"
STRATEGIES = ("freeze", "finetune", "gradual", "partial", "auto")
OPTIMIZERS = ("adamw", "sgd")
BN_MODES = ("frozen", "train")
KEEP = ("last", "best")
DEFAULT_BACKBONE = "efficientnet_lite0"  # with --weights, or when it is the only one here
AUTO = "auto"  # --model auto: chosen by cross-validation among the backbones present
HEAD_FITS = ("lbfgs", "epochs")
PRECISIONS = ("fp32", "bf16", "auto")
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
    # The frozen body's feature passes (cached features, --model auto's scoring): torch,
    # onnxruntime or auto (onnxruntime on the CPU: 2.2-3.5x PyTorch fp32 for Lite0/1/2 here,
    # BENCHMARKS.md "Inference engines"); training and the maps stay in PyTorch.
    engine: str = "auto"
    # fp32, bf16 (autocast), or auto: bf16 where the CPU has native bf16 or the GPU supports
    # it, else fp32 -- train's --precision auto, resolved on the run's device by the same
    # function (hardware.resolve_precision); config.json keeps "auto".
    precision: str = "fp32"
    time_limit: float | None = None  # seconds of training in this invocation
    device: str = "auto"
    report: bool = True
    # partial: how many of the body's top stages train (the rest run once per view, cached),
    # and how many views of each training photo are cached (models/partial.py).
    train_stages: int = PARTIAL_STAGES
    views: int = PARTIAL_VIEWS
    # CAMs of the predicted and the true class of every misclassified test photo (report):
    # one forward pass per mistake (4 per batch), the backward pass through the head only.
    explain: bool = True

    def __post_init__(self) -> None:
        from cnnlab.data.splits import check_fractions
        from cnnlab.models.inference import check_engine

        check_engine(self.engine)

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
            raise CnnlabError(f"--precision must be one of {', '.join(PRECISIONS)}")
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


def bn_words(config: FinetuneConfig) -> str:
    """What the body's BatchNorm layers do under this config, in words (log and settings)."""
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
