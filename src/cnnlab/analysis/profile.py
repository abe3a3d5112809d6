"""Per-layer profile of a model: output shapes, kernels, parameters and MACs.

Conventions (stated in every table and in the JSON):
- **MACs** are multiply-accumulates of one forward pass on ONE input (batch size 1), counted
  analytically for the layers that do the arithmetic: convolutions (incl. grouped and
  transposed), linear layers, cnnlab's locally-connected layer. **FLOPs = 2 x MACs.** Bias
  additions, normalisation, activations and pooling are not counted, as in torchvision's
  published GFLOPS figures and in `torch.utils.flop_counter` (whose FLOPs / 2 the tests compare
  against).
  Layers with no formula here (e.g. `nn.MultiheadAttention`, whose projections and attention
  products are functional calls) get the flop counter's count for their own forward instead.
- **Parameters** of a layer are its own weights and biases (its direct `nn.Parameter`s); a
  module shared by several call sites is counted once, and its MACs once per call.

The model runs on the meta device: shapes propagate without any arithmetic or memory, so
ResNet-152 profiles in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import LocallyConnected2d
from cnnlab.models.meta import build_on_meta


@dataclass
class LayerRow:
    name: str  # dotted module path, e.g. "layer1.0.conv1"
    type: str  # module class name
    output_shape: tuple[int, ...]  # without the batch dimension
    input_shape: tuple[int, ...]
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | None = None  # None also for string padding ("same")
    groups: int = 1
    weights: int = 0  # parameters named "weight" (and every other non-bias parameter)
    biases: int = 0  # parameters named "bias"
    trainable: int = 0
    macs: int = 0
    calls: int = 1

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclass
class ModelProfile:
    name: str
    input_shape: tuple[int, ...]
    layers: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    macs: int = 0  # sum of the layers' MACs
    # Arithmetic the flop counter saw outside every leaf layer (e.g. a matmul written as a
    # functional call in a block's forward); 0 for most CNNs. Included in `total_macs`.
    unattributed_macs: int = 0

    @property
    def total_macs(self) -> int:
        return self.macs + self.unattributed_macs

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' -> (3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.lower().replace("×", "x").split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise CnnlabError(f"bad shape {text!r}: expected positive integers like 3x224x224")
    return dims


def _pair(v, n: int) -> tuple[int, ...]:
    """A kernel/stride/padding as a tuple of `n` sizes (modules accept a bare int for all)."""
    return tuple(v) if isinstance(v, tuple | list) else (v,) * max(n, 1)


def layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int | None:
    """Analytic MACs of one call of a leaf layer, for a batch of one; None for layer types
    without a formula here (their MACs are then measured by the flop counter)."""
    batch = out.shape[0] if out.dim() > 0 else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        # Each output element of a (non-transposed) conv sums Cin/groups x prod(kernel) products;
        # a transposed conv scatters each INPUT element into Cout/groups x prod(kernel) outputs.
        k = 1
        for d in module.kernel_size:
            k *= d
        if module.transposed:
            return (inp.numel() // batch) * (module.out_channels // module.groups) * k
        return (out.numel() // batch) * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return (out.numel() // batch) * module.in_features
    if isinstance(module, nn.Bilinear):
        return (out.numel() // batch) * module.in1_features * module.in2_features
    if isinstance(module, LocallyConnected2d):
        return module.macs_per_input()
    return None


def _param_counts(params) -> tuple[int, int, int]:
    weights = biases = trainable = 0
    for pname, p in params:
        leaf = pname.rsplit(".", 1)[-1]
        if leaf == "bias" or leaf.endswith("_bias") or leaf.startswith("bias_"):
            biases += p.numel()
        else:
            weights += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return weights, biases, trainable


def _called_modules(model: nn.Module, x: torch.Tensor) -> set[nn.Module]:
    called: set[nn.Module] = set()
    handles = [
        m.register_forward_pre_hook(lambda mod, args: called.add(mod)) for m in model.modules()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return called


def profile_model(
    model: nn.Module, input_shape: tuple[int, ...], name: str = "model"
) -> ModelProfile:
    """Tabulate every layer a forward pass runs, in call order.

    A *layer* is a module that runs while none of its sub-modules do: an ordinary leaf
    (Conv2d, Linear, ...) or a block that uses its children's weights functionally
    (`nn.MultiheadAttention` calls `F.linear` on `out_proj.weight`); its parameters are all of
    its own and its children's. Parameters held by no layer (ViT's class token and position
    embedding) get a row of their own, so the rows always add up to the model's total.
    """
    model = model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.zeros((1, *input_shape), device=device)
    names = {m: n for n, m in model.named_modules()}
    rows: dict[str, LayerRow] = {}
    order: list[str] = []
    counter = FlopCounterMode(display=False)
    flops_before: dict[nn.Module, int] = {}

    def pre_hook(module: nn.Module, args) -> None:
        flops_before[module] = counter.get_total_flops()

    def hook(module: nn.Module, args, output) -> None:
        lname = names[module]
        inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
        out = output[0] if isinstance(output, tuple | list) else output
        if not isinstance(out, torch.Tensor):
            return
        macs = layer_macs(module, inp, out) if inp is not None else None
        if macs is None:  # no formula: what the flop counter saw during this call
            macs = (counter.get_total_flops() - flops_before.pop(module, 0)) // 2
        if lname in rows:  # a module called again (weight sharing across call sites)
            rows[lname].macs += macs
            rows[lname].calls += 1
            return
        weights, biases, trainable = _param_counts(module.named_parameters())
        spatial = out.dim() - 2  # 2 for images: (N, C, H, W)
        rows[lname] = LayerRow(
            name=lname,
            type=type(module).__name__,
            output_shape=tuple(out.shape[1:]),
            input_shape=tuple(inp.shape[1:]) if inp is not None else (),
            kernel=_pair(module.kernel_size, spatial) if hasattr(module, "kernel_size") else None,
            stride=_pair(module.stride, spatial) if hasattr(module, "stride") else None,
            padding=(
                _pair(module.padding, spatial)
                if isinstance(getattr(module, "padding", None), int | tuple)
                else None
            ),
            groups=getattr(module, "groups", 1),
            weights=weights,
            biases=biases,
            trainable=trainable,
            macs=macs,
        )
        order.append(lname)

    handles = []
    # Fused attention kernels are opaque to the flop counter: nn.MultiheadAttention's fast path
    # (taken under no_grad on real tensors) and SDPA's CPU flash kernel. With them ViT-B/16
    # would count 11.27 G MACs instead of 17.56 G. The plain MHA path and SDPA's MATH backend
    # do the same arithmetic as visible matmuls; the fast-path switch is restored below.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        called = _called_modules(model, x)
        layers_set = {
            m for m in called if not any(c in called for c in m.modules() if c is not m)
        }
        for module in layers_set:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(hook))
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CnnlabError(
            f"{name} does not accept input {'x'.join(map(str, input_shape))}: {first}"
        ) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()

    layers = [rows[n] for n in order]
    # Parameters no layer accounts for: owned directly by a non-layer module, or by modules
    # the forward pass never ran (e.g. an unused head).
    covered = {id(p) for m in layers_set for p in m.parameters()}
    for mname, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in covered]
        if own:
            weights, biases, trainable = _param_counts(own)
            layers.append(
                LayerRow(
                    name=mname or "(model)",
                    type=f"{type(module).__name__} (parameters only)",
                    output_shape=(),
                    input_shape=(),
                    weights=weights,
                    biases=biases,
                    trainable=trainable,
                    calls=0,
                )
            )
    total = sum(p.numel() for p in model.parameters())
    trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs = sum(r.macs for r in layers)
    counted = int(counter.get_total_flops()) // 2
    return ModelProfile(
        name=name,
        input_shape=tuple(input_shape),
        layers=layers,
        total_params=total,
        trainable_params=trainable_total,
        macs=macs,
        unattributed_macs=max(0, counted - macs),
    )


def profile_registered(
    name: str, input_shape: tuple[int, ...] | None = None, **options
) -> ModelProfile:
    """Profile a registered model by name, built on the meta device."""
    from cnnlab.models.registry import create_model, get_spec

    spec = get_spec(name)
    model = build_on_meta(lambda: create_model(name, **options))
    shape = input_shape or spec.default_input
    label = spec.name + "".join(f" {k}={v}" for k, v in sorted(options.items()))
    return profile_model(model, shape, name=label)


def rows_at_depth(profile: ModelProfile, depth: int | None) -> list[LayerRow]:
    """Leaf rows grouped into their ancestor `depth` levels down (None or 0: every leaf).

    A group's output shape is that of its last layer, its parameters and MACs the sums.
    """
    if not depth:
        return profile.layers
    groups: dict[str, LayerRow] = {}
    for row in profile.layers:
        parts = row.name.split(".")
        key = ".".join(parts[:depth])
        group = groups.get(key)
        if group is None:
            typ = row.type if len(parts) <= depth else "(block)"
            groups[key] = LayerRow(
                name=key,
                type=typ,
                output_shape=row.output_shape,
                input_shape=row.input_shape,
                kernel=row.kernel if len(parts) <= depth else None,
                stride=row.stride if len(parts) <= depth else None,
                weights=row.weights,
                biases=row.biases,
                trainable=row.trainable,
                macs=row.macs,
            )
        else:
            group.output_shape = row.output_shape
            group.weights += row.weights
            group.biases += row.biases
            group.trainable += row.trainable
            group.macs += row.macs
    return list(groups.values())
