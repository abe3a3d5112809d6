"""What a CNN looks at: class-activation maps, first-layer filters, feature maps per stage.

    layer = cam_layer_name(model, spec.cam_layer)            # "bn2" for EfficientNet-Lite
    cams = class_activation_maps(model, layer, x, [321, 5], "gradcam")   # (2, H, W) in [0, 1]
    Image.fromarray(overlay(pixels, cams[0])).save("cam.png")

The CAM methods are the maintained `grad-cam` package's (pytorch-grad-cam, Gildenblat et al.),
not re-implementations: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018),
Score-CAM (Wang et al. 2020) and EigenCAM (Muhammad & Yeasin 2020). One exception, for speed:
`gradcam_batch` computes grad-cam's Grad-CAM itself (its formula and scaling, step for step) for
many photos and classes from one forward pass, with the backward pass stopped at the layer
(grad-cam runs the backward down to the input, one forward per class, and importing its package
costs ~2 CPU-s: it loads matplotlib.pyplot, scipy, sklearn and torchvision for methods the maps of
mistakes never use). tests/test_explain.py holds it equal to grad-cam's GradCAM.

cnnlab chooses the layer: the registry's `cam_layer` (the last convolutional stage, before the
global pooling), else the last stage timm's `feature_info` names, else the last `nn.Conv2d`;
`--layer` overrides all three.

Figures are drawn on `matplotlib.figure.Figure` objects, never through pyplot, so nothing here
touches matplotlib's global backend or figure registry.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.errors import CnnlabError, suggest
from cnnlab.runs import save_figure

if TYPE_CHECKING:  # imported by the functions that run a model: the maps' finishing, overlays
    import torch  # and METHODS need no torch (evaluate's maps on ONNX Runtime, issue 27)
    from torch import nn

# --method name -> (grad-cam class, name in captions, what one map costs).
METHODS = {
    "gradcam": ("GradCAM", "Grad-CAM", "one forward and one backward pass"),
    "gradcam++": ("GradCAMPlusPlus", "Grad-CAM++", "one forward and one backward pass"),
    "scorecam": ("ScoreCAM", "Score-CAM", "one forward pass per channel of the layer"),
    "eigencam": ("EigenCAM", "EigenCAM", "one forward pass; the same map for every class"),
}
SCORECAM_BATCH = 32  # masked copies of the photo per forward pass (grad-cam's default is 16)


# ------------------------------------------------------------------------------ target layer


def _child(module: nn.Module, part: str, path: str) -> tuple[str, nn.Module]:
    """One step of a dotted path: a child by name, or by negative index from the end."""
    children = list(module.named_children())
    if part.startswith("-") and part[1:].isdigit():
        index = int(part)
        if -index > len(children):
            raise CnnlabError(f"no layer {path!r}: {part} counts past {len(children)} children")
        return children[index]
    found = dict(children).get(part)
    if found is None:
        raise CnnlabError(f"no layer {path!r} in this model")
    return part, found


def resolve_layer(model: nn.Module, path: str) -> str:
    """The module's real dotted name ("features.-2" -> "features.11"); CnnlabError when absent."""
    names, module = [], model
    for part in path.strip().split("."):
        name, module = _child(module, part, path)
        names.append(name)
    return ".".join(names)


def conv_layer_names(model: nn.Module) -> list[str]:
    """Every convolution's dotted name, for error messages that suggest one."""
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def cam_layer_name(model: nn.Module, registered: str | None = None,
                   override: str | None = None) -> str:
    """The layer whose maps a CAM weighs: `override` (--layer), else the registry's entry, else
    timm's last feature stage, else the last convolution."""
    if override is not None:
        try:
            return resolve_layer(model, override)
        except CnnlabError:
            convs = conv_layer_names(model)
            raise CnnlabError(
                f"no layer {override!r} in this model{suggest(override, convs)}; the last "
                f"convolution is {convs[-1] if convs else 'absent'} (`cnnlab params MODEL` "
                "lists the layers)"
            ) from None
    if registered is not None:
        return resolve_layer(model, registered)
    info = getattr(model, "feature_info", None)
    if info:  # timm: the stages its features_only mode returns, last one deepest
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        return resolve_layer(model, last["module"])
    convs = conv_layer_names(model)
    if not convs:
        raise CnnlabError("this model has no convolution to explain; give --layer NAME")
    return convs[-1]


def layer_output_shape(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[int, ...]:
    """The shape `layer` outputs for `x` (one forward pass, no gradients)."""
    import torch

    shapes: list[tuple[int, ...]] = []
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(out.shape) if torch.is_tensor(out) else ()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return shapes[-1] if shapes else ()


# ------------------------------------------------------------------------------------- CAMs


def class_activation_maps(model: nn.Module, layer: str, x: torch.Tensor, classes: list[int],
                          method: str = "gradcam") -> np.ndarray:
    """One map per class for one photo `x` (1, 3, H, W): (len(classes), H, W), each scaled to
    [0, 1] by grad-cam (its own min-max), upsampled to the input size."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise CnnlabError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    cam_class = getattr(pytorch_grad_cam, METHODS[method][0])
    if method == "eigencam":
        cam_class = _oriented(cam_class)
    target = model.get_submodule(layer)
    # Gradients are wanted with respect to the activations only, never the weights: the input
    # carries requires_grad, the parameters do not, so backward skips every weight gradient.
    model.requires_grad_(False)
    batch = x.expand(len(classes), *x.shape[1:]).clone().requires_grad_(True)
    cam = cam_class(model=model, target_layers=[target])
    if method == "scorecam":
        cam.batch_size = SCORECAM_BATCH
    try:
        # Score-CAM draws a tqdm bar on stderr for every class; cnnlab reports its own progress.
        with contextlib.redirect_stderr(io.StringIO()):
            maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes])
    finally:
        cam.activations_and_grads.release()  # its hooks would otherwise stay on the model
    return np.asarray(maps, dtype=np.float32)


def gradcam_batch(model: nn.Module, layer: str, x: torch.Tensor,
                  classes: list[list[int]]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Grad-CAM of K classes for each of N photos `x` (N, 3, H, W) from one forward pass:
    maps (N, K, H, W) in [0, 1] and the layer's output shape (N, C, h, w).

    The maps are grad-cam's GradCAM's for the same photo and class (tests/test_explain.py): the
    channel weights are the spatial mean of d(class score)/d(layer output), the map is the ReLU
    of the weighted sum of the channels, min-max scaled, resized to the input with cv2 (bilinear)
    and min-max scaled again, as grad-cam's compute_cam_per_layer and aggregate_multi_layers do.
    What differs is the cost: the layer's output is cut from the graph (a new leaf), so the
    body before it runs without autograd and each class's backward pass runs through the head
    alone (global pooling and classifier for the registry's CAM layers); photos of a batch do
    not interact (eval mode), so one backward per class column serves all N photos."""
    import torch

    n = len(x)
    if len(classes) != n or len({len(c) for c in classes}) > 1:
        raise ValueError("classes: one list of the same length per photo")
    captured: dict[str, torch.Tensor] = {}

    def cut(_module, _inputs, out):
        if not torch.is_tensor(out):
            return None
        leaf = out.detach().requires_grad_(True)
        captured["leaf"] = leaf
        # A copy goes on: an in-place op after the layer (a ReLU(inplace=True)) may not touch a
        # leaf; like grad-cam's saved activations, this copy shows what such an op does to it.
        captured["out"] = leaf.clone()
        return captured["out"]

    model.eval().requires_grad_(False)  # gradients of the activations only, never the weights
    handle = model.get_submodule(layer).register_forward_hook(cut)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(x)
    finally:
        handle.remove()
    if "leaf" not in captured:
        raise CnnlabError(f"layer {layer!r} outputs no tensor in this model's forward pass")
    shape = tuple(captured["leaf"].shape)
    if len(shape) != 4:
        raise CnnlabError(f"layer {layer!r} outputs shape {shape}, not a (N, C, H, W) map; "
                          "choose a convolutional layer with --layer")
    targets = torch.tensor(classes, dtype=torch.long, device=logits.device).reshape(n, -1)
    rows = torch.arange(n, device=logits.device)
    activations = captured["out"].detach().float().cpu().numpy()
    size = (x.shape[-1], x.shape[-2])  # cv2's (width, height)
    maps = np.empty((n, targets.shape[1], x.shape[-2], x.shape[-1]), dtype=np.float32)
    for j in range(targets.shape[1]):
        score = logits[rows, targets[:, j]].sum()
        (grads,) = torch.autograd.grad(score, captured["leaf"],
                                       retain_graph=j < targets.shape[1] - 1)
        weights = np.mean(grads.float().cpu().numpy(), axis=(2, 3))
        cam = np.maximum((weights[:, :, None, None] * activations).sum(axis=1), 0)
        maps[:, j] = finish_maps(cam, size)
    return maps, shape


def finish_maps(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw Grad-CAM maps (K, h, w) -> (K, H, W) in [0, 1] as grad-cam scales them: min-max,
    resized to `size` (width, height) with cv2, min-max again (compute_cam_per_layer, then
    aggregate_multi_layers)."""
    return _min_max(_min_max(cams, size))


def _min_max(cams: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """grad-cam's scale_cam_image: each map shifted to 0 and divided by (1e-7 + its max), then
    resized to `size` (width, height) with cv2's default bilinear interpolation."""
    import cv2

    out = []
    for cam in cams:
        cam = cam - np.min(cam)
        cam = cam / (1e-7 + np.max(cam))
        out.append(cv2.resize(np.float32(cam), size) if size is not None else cam)
    return np.float32(out)


def _oriented(eigen_cam: type) -> type:
    """grad-cam's EigenCAM with the principal component's sign fixed.

    An SVD's singular vectors have no sign: grad-cam's EigenCAM returns the projection on the
    first one as the solver left it, so in about 1 case in 5 (the region oracle in
    tests/test_explain.py, 4 seeds of 20) the map is inverted and marks everything but the
    object. Here the sign is chosen so that the map rises where the layer's total activation
    rises, as the EigenCAM paper's figures show it.
    """

    class OrientedEigenCAM(eigen_cam):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                          eigen_smooth):
            cam = super().get_cam_image(input_tensor, target_layer, targets, activations,
                                        grads, eigen_smooth)
            total = activations.sum(axis=1)  # (N, H, W)
            axes = (1, 2)
            agree = ((cam - cam.mean(axis=axes, keepdims=True))
                     * (total - total.mean(axis=axes, keepdims=True))).sum(axis=axes)
            return cam * np.where(agree < 0, -1.0, 1.0).astype(cam.dtype)[:, None, None]

    return OrientedEigenCAM


def overlay(pixels: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a jet heat map over the photo (HWC uint8 -> HWC uint8): grad-cam's
    show_cam_on_image(use_rgb=True), step for step (tests/test_explain.py holds them equal),
    with cv2 alone: importing grad-cam's utils loads its whole package (module docstring)."""
    import cv2

    heatmap = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)
    heatmap = np.float32(cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)) / 255
    mixed = (1 - image_weight) * heatmap + image_weight * (pixels.astype(np.float32) / 255)
    return np.uint8(255 * (mixed / np.max(mixed)))


# ------------------------------------------------------------------ filters and feature maps


def first_conv(model: nn.Module) -> tuple[str, torch.Tensor]:
    """The first convolution in module order and its weights (out, in, k, k)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach().float().cpu()
    raise CnnlabError("this model has no convolution whose filters could be drawn")


def plot_filters(name: str, weight: torch.Tensor, path: Path, max_filters: int = 64) -> Path:
    """The filters as a grid of small images; each scaled on its own to the full colour range
    (RGB when the layer reads 3 channels, else its first input channel in grey)."""
    from matplotlib.figure import Figure

    w = weight[:max_filters]
    n = w.shape[0]
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(cols * 1.1, rows * 1.1 + 0.6), dpi=100)
    for i in range(n):
        f = w[i, :3] if w.shape[1] == 3 else w[i, :1]
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        ax = fig.add_subplot(rows, cols, i + 1)
        image = f.permute(1, 2, 0).numpy()
        ax.imshow(image if image.shape[2] == 3 else image[:, :, 0], cmap="gray",
                  interpolation="nearest")
        ax.set_axis_off()
    k = "x".join(map(str, weight.shape[2:]))
    fig.suptitle(f"{name}: {weight.shape[0]} filters of {weight.shape[1]}x{k}"
                 + (f" (first {max_filters})" if weight.shape[0] > max_filters else ""),
                 fontsize=9)
    return save_figure(fig, path, format="png")


@dataclass
class StageMap:
    name: str  # module path
    maps: torch.Tensor  # (C, H, W) of one photo


def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[StageMap]:
    """The output of each stage for one photo (1, 3, H, W): the last module, among those at most
    two levels deep, whose output has each spatial size, in the order the forward pass reaches
    them. So a reader sees one row per resolution: the stem, each down-sampling stage, the last
    convolutional map; 1x1 outputs (squeeze-and-excitation gates, the global pooling) are not
    maps and are left out."""
    import torch
    from torch import nn

    seen: list[StageMap] = []
    last_ptr: list[int] = []
    handles = []

    def keep(name):
        def hook(module, _inputs, out):
            if not (torch.is_tensor(out) and out.dim() == 4):
                return
            maps = out[0].detach().float().cpu().clone()
            if last_ptr and last_ptr[-1] == out.data_ptr():
                # The same tensor again: an in-place activation or a parent returning its last
                # child's output. Take the values again (an in-place ReLU changed them); keep the
                # child's name when the parent is a plain Sequential ("blocks.6", not "blocks"),
                # else the parent's ("bn2", not its inner "bn2.drop").
                if not isinstance(module, nn.Sequential):
                    seen[-1].name = name
                seen[-1].maps = maps
                return
            last_ptr.append(out.data_ptr())
            seen.append(StageMap(name, maps))
        return hook

    for name, module in model.named_modules():
        if name and name.count(".") <= 1:
            handles.append(module.register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    last_by_size: dict[tuple[int, int], StageMap] = {}
    for s in seen:  # later entries win: the last module at each size ends the stage
        last_by_size.pop(tuple(s.maps.shape[1:]), None)
        last_by_size[tuple(s.maps.shape[1:])] = s
    stages = [s for s in last_by_size.values() if s.maps.shape[1] * s.maps.shape[2] > 1]
    return sorted(stages, key=lambda s: -s.maps.shape[1] * s.maps.shape[2])


def plot_stage_maps(stages: list[StageMap], pixels: np.ndarray, path: Path,
                    channels: int = 6) -> Path:
    """One row per stage: the photo, then its `channels` most active channels (largest mean
    activation), each with its size written on it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 * (channels + 1), 1.7 * len(stages) + 0.4), dpi=100)
    for r, stage in enumerate(stages):
        c, h, w = stage.maps.shape
        ax = fig.add_subplot(len(stages), channels + 1, r * (channels + 1) + 1)
        ax.imshow(pixels)
        ax.set_axis_off()
        ax.set_title(f"{stage.name}\n{c} x {h} x {w}", fontsize=7)
        order = stage.maps.mean(dim=(1, 2)).argsort(descending=True)[:channels]
        for j, ch in enumerate(order.tolist()):
            ax = fig.add_subplot(len(stages), channels + 1, r * (channels + 1) + j + 2)
            ax.imshow(stage.maps[ch].numpy(), cmap="viridis", interpolation="nearest")
            ax.set_axis_off()
            ax.text(0.03, 0.04, f"{h}x{w}", transform=ax.transAxes, fontsize=7, color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
            ax.set_title(f"ch {ch}", fontsize=7)
    fig.suptitle("feature maps after each stage: resolution falls, channels rise", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, format="png")
