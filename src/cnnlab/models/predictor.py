"""Loading a net for inference: a `cnnlab finetune` run or a registry model with its ImageNet
weights, with its preprocessing and class names; and the image files a list of inputs names.

    predictor = load_predictor("runs/finetune/x")          # or "efficientnet_lite0"
    files, skipped = expand_inputs(("photos/", "cat.jpg"))

Shared by the tasks that run a pretrained or fine-tuned net forward (predict, explain): it sits
below them (DESIGN.md's layers) so that no task imports another for it. A fine-tuned model is
read from its run directory (model.json + model.safetensors, written by `cnnlab finetune`):
architecture, weights, class names and preprocessing, with no need for the ImageNet weights
file. Any other name is a registry model with its ImageNet weights and the 1000 ImageNet classes.
Folders are walked as `cnnlab evaluate` walks them (sorted, hidden files ignored, non-images
skipped with a reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

FINETUNED_FORMAT = "cnnlab-finetuned/1"


@dataclass
class Predictor:
    # The nn.Module in eval mode, or for a registry model a models/registry.PretrainedNet that
    # builds it on first use (`model`): scoring on a cached ONNX graph builds none, and imports
    # neither timm nor torchvision (issue 27 item 4).
    net: Any
    preprocess: Any  # data.preprocess.Preprocess
    classes: tuple[str, ...]
    source: str  # "finetuned <run>" or "imagenet <model>"
    top_k: int
    arch: str = ""  # the registry name of the architecture (a finetune run's backbone)
    weights: Path | None = None  # the weights file (names the exported graph: models/inference)

    @property
    def model(self) -> Any:
        """The nn.Module in eval mode (built now if it was not yet)."""
        from cnnlab.models.registry import PretrainedNet

        return self.net() if isinstance(self.net, PretrainedNet) else self.net

    def identity(self) -> str:
        """The net's name and weights digest: the key of its exported ONNX graph."""
        from cnnlab.models.inference import weights_identity

        kind = "finetuned-" if self.source.startswith("finetuned") else ""
        if self.weights is None:
            raise CnnlabError(f"{self.source}: no weights file to name its exported graph")
        return weights_identity(kind + self.arch, self.weights)


def _finetuned_json(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model.json").is_file():
            return path / "model.json"
        subs = sorted(p.name for p in path.iterdir() if (p / "model.json").is_file())
        hint = f" (did you mean {path / subs[0]}?)" if subs else ""
        raise CnnlabError(f"{path} holds no model.json: not a finished finetune run{hint}")
    if path.is_file() and path.name.endswith(".json"):
        return path
    return None


def load_finetuned(meta_path: Path) -> Predictor:
    """A fine-tuned model from model.json and the model.safetensors beside it."""
    import json

    from safetensors.torch import load_file

    from cnnlab.data.preprocess import Preprocess
    from cnnlab.models.transfer import build_transfer

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CnnlabError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FINETUNED_FORMAT:
        raise CnnlabError(f"{meta_path} is not a cnnlab fine-tuned model ({FINETUNED_FORMAT})")
    weights = meta_path.with_name("model.safetensors")
    if not weights.is_file():
        raise CnnlabError(f"{weights} is missing: the run did not finish")
    classes = tuple(meta["classes"])
    net = build_transfer(meta["backbone"], len(classes))
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise CnnlabError(f"{weights} does not fit {meta['backbone']}: {exc}") from None
    pp = meta["preprocess"]
    preprocess = Preprocess(int(pp["resize_size"]), int(pp["crop_size"]), pp["interpolation"],
                            tuple(pp["mean"]), tuple(pp["std"]))
    return Predictor(net.eval(), preprocess, classes, f"finetuned {meta_path.parent}",
                     int(meta.get("top_k", 5)), meta["backbone"], weights)


def load_predictor(model: str, weights: str | None = None) -> Predictor:
    meta = _finetuned_json(model)
    if meta is not None:
        if weights is not None:
            raise CnnlabError("--weights is for ImageNet models; a fine-tuned run has its own")
        return load_finetuned(meta)
    if Path(model).expanduser().exists():
        raise CnnlabError(f"{model} is neither a finetune run directory nor its model.json")
    from cnnlab.data.imagenet import load_imagenet_classes
    from cnnlab.models.registry import PretrainedNet

    net = PretrainedNet(model, weights)
    path = net.fetch_weights()  # a missing file is an error now, before any photo is read
    # arch: the registry's name, not the name as typed (efficientnet-lite0 and
    # efficientnet_lite0 are one net: one exported graph, models/inference.graph_dir).
    return Predictor(net, net.preprocess, tuple(load_imagenet_classes().names),
                     f"imagenet {model}", 5, net.spec.name, path)


def expand_inputs(inputs: tuple[str, ...]) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files in order: each file as given, each folder walked (sorted); what is skipped."""
    from cnnlab.data.folders import IMAGE_EXTENSIONS, discover

    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = discover(path, labels="filename")
            files += [it.path for it in found.items]
            skipped += [{"file": str(path / s.path), "error": s.reason} for s in found.skipped]
        elif not path.exists():
            skipped.append({"file": str(path), "error": "file not found"})
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            kind = f"'{path.suffix}'" if path.suffix else "no extension"
            skipped.append({"file": str(path), "error": f"not an image file ({kind})"})
        else:
            files.append(path)
    return files, skipped
