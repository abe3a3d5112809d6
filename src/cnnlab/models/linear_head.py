"""Is a net's CAM layer followed by nothing but global average pooling and one Linear layer?

    head = linear_head(model, "bn2", check_batch)    # LinearHead(weight (K, C), bias (K,)) or None

When it is (EfficientNet-Lite's bn2, a ResNet's layer4), the logits are an affine function of
the layer's spatial mean, logits = W @ mean_hw(A) + b, so the gradient of class c's score with
respect to A[k, i, j] is W[c, k] / (h * w) at every position: Grad-CAM's channel weights need no
autograd, only W (analysis/linear_cams.py). models/inference.py exports the layer's activations
as a second output of the ONNX graph for such nets, and evaluate draws the maps of its mistakes
from them without building the PyTorch model.

Detected, not assumed. Structurally: every module that finishes after the layer in the forward
pass is a pooling to 1x1, a flatten, a dropout (eval mode: identity), an identity or the one
Linear layer, which finishes last. Numerically, on the check batch: the model's logits equal
W @ mean_hw(A) + b within HEAD_TOLERANCE, so a functional op the hooks cannot see (torchvision's
DenseNet applies F.relu after its layer) is caught; activations of both signs make a ReLU show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only to detect a head (at export), not to use a saved one
    import torch
    from torch import nn

# max |logits - (W mean(A) + b)| allowed, relative to max(1, max |logits|): fp32 sums of 1280
# products in another order differ by ~1e-6 of the largest term; a missing op differs by O(1).
HEAD_TOLERANCE = 1e-4
# Modules allowed between the layer and the classifier: nn.Flatten, Dropout, Identity and
# AdaptiveAvgPool2d to 1x1 (`_allowed`), and timm's pooling wrapper, matched by class name
# without importing timm.
_TIMM_POOL = "SelectAdaptivePool2d"


@dataclass(frozen=True)
class LinearHead:
    """The classifier after the layer: logits = weight @ mean_hw(A) + bias."""

    weight: np.ndarray  # (classes, channels) float32
    bias: np.ndarray  # (classes,) float32


def _allowed(module: nn.Module) -> bool:
    from torch import nn

    if isinstance(module, (nn.Flatten, nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d)):
        return not isinstance(module, nn.AdaptiveAvgPool2d) or _pools_to_one(module)
    if type(module).__name__ == _TIMM_POOL:  # timm: pool_type "avg" only (not max, not catavgmax)
        return getattr(module, "pool_type", "") == "avg"
    return False


def _pools_to_one(module: nn.AdaptiveAvgPool2d) -> bool:
    size = module.output_size
    return all(s == 1 for s in (size if isinstance(size, tuple) else (size, size)))


def linear_head(model: nn.Module, layer: str, x: torch.Tensor) -> LinearHead | None:
    """The Linear head after `layer` when pooling and it are all that follows (module
    docstring); None otherwise. Runs one forward pass of `x` in eval mode, no gradients."""
    import torch
    from torch import nn

    model = model.eval()
    try:
        target = model.get_submodule(layer)
    except AttributeError:  # a registry path with negative indices ("features.-2"): not a
        return None  # direct name; such nets (VGG) end in an MLP anyway
    finished: list[tuple[str, nn.Module]] = []
    captured: list[torch.Tensor] = []
    names = {id(m): n for n, m in model.named_modules()}

    def note(module, _inputs, out):
        if module is target and torch.is_tensor(out):
            captured.append(out.detach().clone())
        finished.append((names.get(id(module), ""), module))

    handles = [m.register_forward_hook(note) for _, m in model.named_modules()]
    try:
        with torch.inference_mode():
            logits = model(x).float()
    finally:
        for h in handles:
            h.remove()
    if not captured or captured[-1].dim() != 4 or logits.dim() != 2:
        return None
    after = _after(finished, target)
    if after is None or not after or not isinstance(after[-1][1], nn.Linear):
        return None
    linears = [m for _, m in after if isinstance(m, nn.Linear)]
    if len(linears) != 1 or not all(_allowed(m) for _, m in after[:-1]):
        return None
    fc = linears[0]
    weight = fc.weight.detach().float().cpu()
    bias = (fc.bias.detach().float().cpu() if fc.bias is not None
            else torch.zeros(weight.shape[0]))
    predicted = captured[-1].float().cpu().mean(dim=(2, 3)) @ weight.T + bias
    if predicted.shape != logits.shape:
        return None
    scale = max(1.0, float(logits.abs().max()))
    if float((predicted - logits.cpu()).abs().max()) > HEAD_TOLERANCE * scale:
        return None
    return LinearHead(weight.numpy().copy(), bias.numpy().copy())


def _after(finished: list[tuple[str, nn.Module]], target: nn.Module
           ) -> list[tuple[str, nn.Module]] | None:
    """The modules that finished after `target`, in order, minus the root (named "": it finishes
    last of all); None when the layer ran more than once (not the simple structure wanted)."""
    ends = [i for i, (_, m) in enumerate(finished) if m is target]
    if len(ends) != 1:
        return None
    return [(n, m) for n, m in finished[ends[0] + 1:] if n]
