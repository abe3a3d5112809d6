"""A frozen-body transfer network that is built in PyTorch only when something needs it.

    manifest = load_manifest(name, weights_file)      # None until a run has built this backbone
    net = FrozenTransfer(name, weights_file, num_classes=10, manifest=manifest)
    net.head                                          # the new Linear head (fitted in place)
    net.frozen_body()                                 # a function that builds the body, for the
                                                      # feature pass (models/features.FeatureNet)
    net.state_dict()                                  # == TransferModel's, from the weights file
    net.describe()                                    # == TransferModel.describe() of freeze

Why (issue 27): finetune's default (freeze, the head fitted by L-BFGS on cached features, ONNX
Runtime on the CPU) never runs the PyTorch body: its features come from the exported graph, the
maps of its mistakes from the pretrained graph's CAM-layer activations (analysis/linear_cams.py).
Building the net anyway cost ~1.9 CPU-s of a ~12 s run (timm 0.42 and torchvision 1.24 CPU-s
to import, 0.25 to build and load Lite0; measured on the 2-core AMX Xeon), to write
model.safetensors and fill results.json's "settings.model".

Both come from a `Manifest` instead: what the built network was, recorded once per (backbone,
weights file) under $CNNLAB_CACHE/transfer/ by the first run that built it -- the pretrained
model's state-dict names, shapes and dtypes in order (which tensors are parameters, which the
1000-way classifier that the body drops), the feature width and the body's stage count. The
weights file's tensors, renamed as `load_pretrained` renames them (the spec's `convert`, given
the manifest's names and shapes), are then exactly the body's state dict: model.safetensors is
byte for byte the built network's (tests/test_finetune_lazy.py). Anything else asks for the
built network (`built()`): the PyTorch engine, a refused graph, a layer other than Grad-CAM's.

Without torch (issue 27 item 4): the head is an `ArrayHead` (numpy float32) until the net is
built, and the body's state is also kept as safetensors next to the manifest (`body_path`),
written by the first run that read the weights file with torch (the .pth needs torch.load):
`saved_bytes` then writes model.safetensors through safetensors.numpy, the same bytes as
safetensors.torch writes from the built network (tests/test_finetune_lazy.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.hardware import torch_version

if TYPE_CHECKING:
    from torch import nn

MANIFEST_VERSION = 1  # bump when what a manifest records, or what TransferModel keeps, changes


@dataclass(frozen=True)
class Manifest:
    """What `TransferModel.from_pretrained(create_pretrained(name, weights))` was."""

    backbone: str
    weights_sha256: str
    entries: list[list[Any]]  # the pretrained model's state dict: [name, shape, dtype] in order
    parameters: list[str]  # the names of entries that are parameters (not buffers)
    dropped: list[str]  # the entries the body does not keep (the 1000-way classifier)
    width: int  # the body's feature width D
    stages: int  # len(TransferModel.stages)


def _manifest_path(backbone: str, weights_digest: str, root: Path | None = None) -> Path:
    from cnnlab.models.cache import cache_root

    spec = {"backbone": backbone, "weights_sha256": weights_digest,
            "torch": torch_version(), "version": MANIFEST_VERSION}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return (root or cache_root()) / "transfer" / f"{key[:32]}.json"


def manifest_of(backbone: str, weights_digest: str, pretrained_state: OrderedDict,
                parameter_names: set[str], net) -> Manifest:
    """The manifest of `net` (a TransferModel) built from a pretrained model whose state dict
    (names in order) was `pretrained_state`, with `parameter_names` its parameters."""
    body_keys = {k.removeprefix("body.") for k in net.state_dict() if k.startswith("body.")}
    return Manifest(
        backbone=backbone, weights_sha256=weights_digest,
        entries=[[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
                 for k, v in pretrained_state.items()],
        parameters=[k for k in pretrained_state if k in parameter_names],
        dropped=[k for k in pretrained_state if k not in body_keys],
        width=int(net.width), stages=len(net.stages))


def transfer_recorded(model: nn.Module, backbone: str, weights_file: Path, num_classes: int,
                      root: Path | None = None):
    """TransferModel.from_pretrained(model, num_classes), its manifest saved on the way (a
    cache that cannot be written only costs the next run the build)."""
    import contextlib

    from cnnlab.models.cache import file_digest
    from cnnlab.models.transfer import TransferModel

    state = model.state_dict()
    parameters = {n for n, _ in model.named_parameters()}
    net = TransferModel.from_pretrained(model, num_classes)
    with contextlib.suppress(OSError):
        manifest = manifest_of(backbone, file_digest(weights_file), state, parameters, net)
        save_manifest(manifest, root)
        if not body_path(backbone, manifest.weights_sha256, root).is_file():
            save_body(manifest, net.body.state_dict(), root)
    return net


def body_path(backbone: str, weights_digest: str, root: Path | None = None) -> Path:
    """The safetensors copy of the body's state (TransferModel.body.state_dict(), renamed and
    cast as loaded), beside the manifest and under the same key."""
    manifest = _manifest_path(backbone, weights_digest, root)
    return manifest.with_name(f"{manifest.stem}-body.safetensors")


def save_body(manifest: Manifest, body_state, root: Path | None = None) -> Path:
    """The body's state (torch tensors, `body.` names without the prefix) as safetensors,
    atomically: what a run without torch writes model.safetensors from."""
    from safetensors.torch import save as st_save

    from cnnlab.runs import atomic_write_bytes

    path = body_path(manifest.backbone, manifest.weights_sha256, root)
    atomic_write_bytes(path, st_save({k: v.detach().cpu().contiguous().clone()
                                      for k, v in body_state.items()}))
    return path


def load_body(manifest: Manifest, root: Path | None = None) -> OrderedDict | None:
    """The saved body state as numpy arrays in the body's order, when it is there and holds
    exactly the manifest's kept entries (names, shapes, dtypes); else None."""
    from safetensors.numpy import load_file

    path = body_path(manifest.backbone, manifest.weights_sha256, root)
    try:
        arrays = load_file(str(path))
    except Exception:  # absent, torn or foreign: read from the weights file with torch instead
        return None
    dropped = set(manifest.dropped)
    kept = [(n, shape, dtype) for n, shape, dtype in manifest.entries if n not in dropped]
    if set(arrays) != {n for n, _, _ in kept}:
        return None
    out = OrderedDict()
    for name, shape, dtype in kept:
        a = arrays[name]
        if list(a.shape) != list(shape) or a.dtype.name != dtype:
            return None
        out[name] = a
    return out


def save_manifest(manifest: Manifest, root: Path | None = None) -> Path:
    """Written atomically; a concurrent run writes the same bytes."""
    from cnnlab.runs import atomic_write_text

    path = _manifest_path(manifest.backbone, manifest.weights_sha256, root)
    atomic_write_text(path, json.dumps(asdict(manifest)))
    return path


def load_manifest(backbone: str, weights_digest: str, root: Path | None = None
                  ) -> Manifest | None:
    """The saved manifest, or None (never recorded, unreadable: the net is built instead)."""
    path = _manifest_path(backbone, weights_digest, root)
    try:
        manifest = Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    ok = manifest.backbone == backbone and manifest.weights_sha256 == weights_digest
    return manifest if ok else None


class _Shapes:
    """What a spec's `convert` reads of the model it converts for: its state dict's names and
    shapes in order (meta tensors: no memory)."""

    def __init__(self, manifest: Manifest):
        import torch

        self._state = OrderedDict(
            (name, torch.empty(shape, dtype=getattr(torch, dtype), device="meta"))
            for name, shape, dtype in manifest.entries)

    def state_dict(self) -> OrderedDict:
        return self._state


class ArrayHead:
    """The new Linear head in numpy (float32, as nn.Linear's): weight (C, D), bias (C,), zero
    as TransferModel's head starts; `head(x)` is x @ W.T + b on (N, D) features."""

    def __init__(self, width: int, num_classes: int):
        self.weight = np.zeros((num_classes, width), dtype=np.float32)
        self.bias = np.zeros(num_classes, dtype=np.float32)

    def load(self, weight, bias) -> None:
        """Set from float arrays (rounded to float32 as torch's copy_ rounds)."""
        self.weight = np.asarray(weight).astype(np.float32)
        self.bias = np.asarray(bias).astype(np.float32)

    def __call__(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias


class FrozenTransfer:
    """TransferModel's face for the frozen, fitted-head strategy, the PyTorch net built on
    demand (`built`). `build` makes the TransferModel (the registry's create_pretrained and
    TransferModel.from_pretrained, set to freeze) when it is first needed. The head is an
    ArrayHead (nothing here imports torch until the net is built), and stays the one the fit
    writes: the built net's nn.Linear takes its values whenever the built net is asked for."""

    strategy, bn, unfrozen = "freeze", "frozen", 0

    def __init__(self, backbone: str, weights_file: Path, num_classes: int, manifest: Manifest,
                 build: Callable[[], nn.Module], root: Path | None = None):
        self.backbone, self.weights_file, self.manifest = backbone, Path(weights_file), manifest
        self.width = manifest.width
        self.head = ArrayHead(self.width, num_classes)
        self._build = build
        self._root = root
        self._net: nn.Module | None = None

    @property
    def is_built(self) -> bool:
        return self._net is not None

    def built(self) -> nn.Module:
        """The TransferModel, built now if it was not, with this head's current weights (a
        feature pass may build it before the head is fitted)."""
        import torch

        if self._net is None:
            self._net = self._build()
        with torch.no_grad():
            self._net.head.weight.copy_(torch.from_numpy(self.head.weight))
            self._net.head.bias.copy_(torch.from_numpy(self.head.bias))
        return self._net

    @property
    def body(self) -> nn.Module:
        return self.built().body

    def frozen_body(self) -> Callable[[], nn.Module]:
        """The body for a feature pass: a function that builds it (called only to export the
        graph or to run the pass in PyTorch)."""
        return lambda: self.built().body

    def eval(self) -> FrozenTransfer:
        if self._net is not None:
            self._net.eval()
        return self

    def state_dict(self) -> OrderedDict:
        """TransferModel.state_dict(): the body's from the weights file (renamed as the
        registry's load renames it), then the head's."""
        import torch

        if self._net is not None:
            return self.built().state_dict()
        state = OrderedDict((f"body.{k}", v) for k, v in self._body_state().items())
        state["head.weight"] = torch.from_numpy(self.head.weight)
        state["head.bias"] = torch.from_numpy(self.head.bias)
        return state

    def saved_bytes(self) -> bytes:
        """model.safetensors: the bytes safetensors.torch writes from `state_dict()`. Unbuilt,
        with the body's safetensors copy (`load_body`), written by safetensors.numpy without
        torch; else through torch, the copy saved on the way for the next run."""
        if self._net is None:
            body = load_body(self.manifest, self._root)
            if body is not None:
                from safetensors.numpy import save

                arrays = {f"body.{k}": v for k, v in body.items()}
                arrays["head.weight"] = np.ascontiguousarray(self.head.weight)
                arrays["head.bias"] = np.ascontiguousarray(self.head.bias)
                return save(arrays)
        import contextlib

        from safetensors.torch import save as st_save

        state = self.state_dict()
        if self._net is None:
            with contextlib.suppress(OSError):  # a cache: a later run reads the file again
                save_body(self.manifest, {k.removeprefix("body."): v for k, v in state.items()
                                          if k.startswith("body.")}, self._root)
        return st_save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})

    def _body_state(self) -> OrderedDict:
        import torch

        from cnnlab.models.pretrained import pretrained_spec_of, read_state_dict
        from cnnlab.models.registry import get_spec

        spec = pretrained_spec_of(get_spec(self.backbone))
        state = read_state_dict(self.weights_file)
        if spec.convert is not None:
            state = spec.convert(state, _Shapes(self.manifest))
        out = OrderedDict()
        dropped = set(self.manifest.dropped)
        for name, _shape, dtype in self.manifest.entries:
            if name not in dropped:  # load_state_dict copies into the model's own dtype
                out[name] = state[name].to(getattr(torch, dtype))
        return out

    def describe(self) -> dict[str, Any]:
        """TransferModel.describe() of the frozen net: only the head trains."""
        if self._net is not None:
            return self._net.describe()
        shapes = {name: shape for name, shape, _ in self.manifest.entries}
        dropped = set(self.manifest.dropped)
        n_body = sum(_numel(shapes[n]) for n in self.manifest.parameters if n not in dropped)
        n_head = self.head.weight.size + self.head.bias.size
        return {"feature_width": self.width, "body_parameters": n_body,
                "head_parameters": n_head, "trainable_parameters": n_head,
                "stages": self.manifest.stages, "unfrozen_stages": 0,
                "strategy": self.strategy, "bn": self.bn}


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
