"""The model registry: one name -> one way to build a model and, maybe, find its weights.

Modelled on torchvision's `register_model` / `get_model` / `list_models` and timm's
`@register_model`. Names are matched case-insensitively with `-` and `_` equivalent, so
`alexnet-paper`, `AlexNet_Paper` and `alexnet_paper` are the same model.

Any timm architecture can also be built by prefixing its name with `timm/` (e.g.
`timm/convnext_tiny`) without being registered here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError, suggest

if TYPE_CHECKING:  # torch is imported by the families that build models, not by a look-up
    from pathlib import Path

    from torch import nn

    from cnnlab.data.preprocess import Preprocess
    from cnnlab.models.pretrained import PretrainedSpec


@dataclass(frozen=True)
class ModelSpec:
    """Everything cnnlab knows about a registered model before building it."""

    name: str
    source: str  # who defines the architecture: "cnnlab", "torchvision" or "timm"
    builder: Callable[..., nn.Module]
    description: str = ""
    # (channels, height, width) a user would feed it; `cnnlab params` uses it without --input.
    default_input: tuple[int, ...] = (3, 224, 224)
    # ImageNet (or other) weights this model can load, if any; see models/pretrained.py.
    pretrained: PretrainedSpec | None = None
    # Count published by the model's authors/library, checked by tests against our own count.
    published_params: int | None = None
    # Keyword arguments the builder accepts from the command line (e.g. alexnet-paper's groups).
    options: dict[str, Any] = field(default_factory=dict)
    # The module whose output is the last convolutional stage: where `cnnlab explain` takes its
    # class-activation maps. A dotted path in which a negative number counts children from the
    # end ("features.-2": the last but one child of `features`), so one entry fits a whole
    # family whose depth varies (vgg11 ... vgg19). None: analysis/explanations.py finds one.
    cam_layer: str | None = None


_REGISTRY: dict[str, ModelSpec] = {}

# Modules whose import registers their models. They are imported on the first look-up, not when
# `cnnlab.models` is imported, so code that needs one family only (the char-RNN) does not pay
# for importing torchvision and timm: ~2.4 s on an idle 2-core machine, over 10 s on a busy one.
# These import neither torchvision nor timm (EfficientNet-Lite imports timm in its builder):
# `get_spec` of any of their names, evaluate's defaults included, costs no such import.
# EfficientNet-Lite comes first and alone: its registration imports no torch either, so `get_spec`
# of its names (evaluate's defaults) on a cached ONNX graph runs without torch (issue 27 item 4).
_TORCH_FREE_FAMILY_MODULES = ("cnnlab.models.efficientnet_lite",)
_FAMILY_MODULES = (
    "cnnlab.models.alexnet_paper",
    "cnnlab.models.simple_cnn",
    "cnnlab.models.resnet_cifar",
    "cnnlab.models.plain_cnn",
    "cnnlab.models.fast_cifar",
    "cnnlab.models.efficientnet_lite",
)
# Registering these reads torchvision's weight enums (~2.6 CPU-s on top of torch, BENCHMARKS.md
# "Start-up"): loaded by `list_models`, and by `get_spec` for a name the others do not have.
_IMPORTING_FAMILY_MODULES = ("cnnlab.models.external",)


def _load_families(importing: bool = True, torch_free: bool = False) -> None:
    """Import the family modules (`torch_free`: only those whose import needs no torch)."""
    if torch_free:
        for module in _TORCH_FREE_FAMILY_MODULES:
            importlib.import_module(module)
        return
    for module in _FAMILY_MODULES + (_IMPORTING_FAMILY_MODULES if importing else ()):
        importlib.import_module(module)  # a no-op after the first time


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model; registering the same name twice is a programming error."""
    key = _key(spec.name)
    if key in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[key] = spec
    return spec


def list_models(source: str | None = None) -> list[ModelSpec]:
    """Registered models, sorted by name, optionally only those of one source."""
    _load_families()
    specs = sorted(_REGISTRY.values(), key=lambda s: s.name)
    return [s for s in specs if source is None or s.source == source]


def get_spec(name: str) -> ModelSpec:
    """The spec for `name`, or a CnnlabError that names the closest registered models."""
    for tier in ({"torch_free": True}, {"importing": False}, {}):
        _load_families(**tier)
        spec = _REGISTRY.get(_key(name))
        if spec is not None:
            return spec
    if name.startswith("timm/"):
        return _timm_spec(name.removeprefix("timm/"))
    raise CnnlabError(
        f"unknown model {name!r}{suggest(name, [s.name for s in _REGISTRY.values()])}; "
        "`cnnlab models` lists them all"
    )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with freshly initialised (not pretrained) weights."""
    spec = get_spec(name)
    unknown = set(kwargs) - set(spec.options)
    if unknown:
        raise CnnlabError(
            f"model {spec.name!r} takes no option(s) {', '.join(sorted(unknown))}"
            + (f"; it takes: {', '.join(sorted(spec.options))}" if spec.options else "")
        )
    return spec.builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_parameters_of(spec: ModelSpec) -> int:
    """Parameter count without allocating weights: the model is built on the meta device."""
    from cnnlab.models.meta import build_on_meta

    return count_parameters(build_on_meta(spec.builder))


def _timm_spec(arch: str) -> ModelSpec:
    import timm

    if not timm.is_model(arch):
        raise CnnlabError(
            f"unknown timm model {arch!r}{suggest(arch, timm.list_models())}"
        )
    return ModelSpec(
        name=f"timm/{arch}",
        source="timm",
        builder=lambda **kw: timm.create_model(arch, pretrained=False, **kw),
        description="timm architecture (unregistered)",
    )


def create_pretrained(
    name: str, weights: str | Path | None = None
) -> tuple[nn.Module, Preprocess, Path]:
    """Build `name`, load its ImageNet weights, switch to eval mode.

    Returns the model, the preprocessing its weights expect, and the weights file used.
    """
    from cnnlab.models.pretrained import load_pretrained, pretrained_spec_of

    model_spec = get_spec(name)
    spec = pretrained_spec_of(model_spec)
    model = model_spec.builder()
    path = load_pretrained(model, spec, model_spec.name, weights)
    return model.eval(), spec.preprocess, path


class PretrainedNet:
    """A registered model with its ImageNet weights, built (and its weights loaded) on the first
    call, once; before that, what its spec says: preprocessing and parameter count.

        net = PretrainedNet("efficientnet_lite0", weights_file)
        forward = prepare_forward(net, "auto", ...)   # builds it only to export or run PyTorch
        net.parameter_count()                         # the built net's, else the registry's

    Building EfficientNet-Lite imports timm and a torchvision model torchvision (~2.3-2.6 CPU-s
    each on top of torch, BENCHMARKS.md "Start-up"); scoring on a cached ONNX graph needs
    neither (issue 27 item 4)."""

    def __init__(self, name: str, weights: str | Path | None = None):
        from cnnlab.models.pretrained import pretrained_spec_of

        self.spec = get_spec(name)
        self.pretrained = pretrained_spec_of(self.spec)
        self.weights = weights
        self.model: nn.Module | None = None  # None until the first call

    @property
    def preprocess(self) -> Preprocess:
        return self.pretrained.preprocess

    def fetch_weights(self) -> Path:
        """The weights file, found (or downloaded) now: it names the exported graph before the
        net is built (models/inference.weights_identity)."""
        from cnnlab.models.pretrained import fetch

        self.weights = fetch(self.pretrained, self.spec.name, self.weights)
        return self.weights

    def __call__(self) -> nn.Module:
        if self.model is None:
            from cnnlab.models.pretrained import load_pretrained

            model = self.spec.builder()
            load_pretrained(model, self.pretrained, self.spec.name, self.weights)
            self.model = model.eval()
        return self.model

    def parameter_count(self) -> int:
        """The built net's count; unbuilt, the registry's (published_params: tests check it
        against the built model's), else a count on the meta device (no weights allocated)."""
        if self.model is not None:
            return count_parameters(self.model)
        return self.spec.published_params or count_parameters_of(self.spec)
