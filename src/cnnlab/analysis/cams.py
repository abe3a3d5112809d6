"""Class-activation maps drawn into a run directory: the one place where cnnlab's commands turn a
photo and class indices into CAM image files, and the CAM layer of a registry net or of a
finetune run's net.

    writer = CamWriter(model, layer_of(model, "efficientnet_lite0"), preprocess, run_dir)
    files = writer.photo(path, [predicted, true], ["cams/00007-pred", "cams/00007-true"])
    drawn = explain_mistakes(writer, mistakes, reporter)   # both maps of each mistake

Used by explain, predict --explain, evaluate and finetune (the maps of their mistakes): it sits
below the tasks (DESIGN.md's layers) so that no task imports another for it. The maps
themselves are analysis/explanations.py's (the grad-cam package's methods).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

# results.json of `cnnlab explain` and of `cnnlab predict --explain` (the schema is in
# tasks/explain.py's docstring; report/explain.py renders both).
EXPLAIN_SCHEMA = "cnnlab.explain/1"


def backbone_of(model):
    """The module the registry's layer names refer to, and its path in `model`: a finetune run's
    network wraps its backbone as `.body`."""
    from cnnlab.models.transfer import TransferModel

    return (model.body, "body.") if isinstance(model, TransferModel) else (model, "")


def layer_of(model, arch: str = "", override: str | None = None) -> str:
    """The CAM layer of `model` (a registry network, or a finetune run's TransferModel whose body
    is the registry network `arch`), as a dotted path in `model`."""
    from cnnlab.analysis.explanations import cam_layer_name
    from cnnlab.models.registry import get_spec

    base, prefix = backbone_of(model)
    registered = get_spec(arch).cam_layer if arch else None
    return prefix + cam_layer_name(base, registered, override)


def target_layer(predictor, override: str | None = None) -> str:
    """The CAM layer of a loaded predictor (a registry model or a finetune run), as a dotted path
    in `predictor.model`."""
    return layer_of(predictor.model, predictor.arch, override)


def read_photo(path: Path, preprocess, draft: bool):
    """Pixels (HWC uint8, the model's crop) and the normalised input (1, 3, H, W)."""
    from cnnlab.data.decode import load_pixels, to_tensor

    pixels = load_pixels(path, preprocess, draft)
    return pixels, to_tensor(pixels, preprocess)[None]


# JPEG for the CAMs embedded in evaluate / finetune / predict reports: a 224 px overlay is about
# 10 kB as JPEG (quality 85) against 75 kB as PNG (measured on the 250 sample photos' first 8),
# and those reports embed one pair per mistake. `cnnlab explain` keeps PNG (few photos, exact).
REPORT_CAM_FORMAT = "jpg"


class CamWriter:
    """Draws class-activation maps over photos and saves them into a run directory: the one
    place where cnnlab's commands turn a photo and class indices into CAM image files.

        writer = CamWriter(model, layer_of(model, "efficientnet_lite0"), preprocess, run_dir)
        files = writer.photo(path, [predicted, true], ["cams/00007-pred", "cams/00007-true"])

    `model` stays where it is (CPU or GPU, any memory format); its parameters stop requiring
    gradients (grad-cam needs gradients of the activations only). `seconds` adds up the time
    spent in `write` and `photo`: decoding, the CAMs and the encoding of the files."""

    def __init__(self, model, layer: str, preprocess, run_dir, method: str = "gradcam",
                 draft: bool = True, fmt: str = REPORT_CAM_FORMAT):
        # model None: a writer of maps computed elsewhere (write_maps: analysis/linear_cams.py)
        self.model = model.eval() if model is not None else None
        self.layer, self.preprocess = layer, preprocess
        self.run_dir, self.method, self.draft, self.fmt = run_dir, method, draft, fmt
        self.layer_shape: tuple[int, ...] = ()
        self.seconds = 0.0

    def read(self, path: Path):
        """Pixels and input of one photo (BadImage when it cannot be decoded)."""
        return read_photo(Path(path), self.preprocess, self.draft)

    def check_layer(self, x) -> tuple[int, ...]:
        """The layer's output shape for `x`, checked once: a layer that outputs no (N, C, H, W)
        map has nothing for a CAM to weigh."""
        from cnnlab.analysis.explanations import layer_output_shape

        if not self.layer_shape:
            shape = layer_output_shape(self.model, self.layer, x)
            if len(shape) != 4:
                raise CnnlabError(
                    f"layer {self.layer!r} outputs shape {tuple(shape)}, not a (N, C, H, W) "
                    "map; choose a convolutional layer with --layer"
                )
            self.layer_shape = shape
        return self.layer_shape

    def write(self, pixels, x, classes: list[int], stems: list[str]) -> list[str]:
        """One CAM per class over `pixels`, saved as run_dir/<stem>.<fmt>; the relative names.
        Stems are cnnlab's own (numbered): a user's file name never names a file."""
        return self.write_batch([pixels], x, [list(classes)], [list(stems)])[0]

    def write_batch(self, pixels: list, x, classes: list[list[int]],
                    stems: list[list[str]]) -> list[list[str]]:
        """`write` for N photos at once: x (N, 3, H, W), per photo its classes and stems (the
        same number each). Grad-CAM runs the N photos and all their classes as one forward
        pass (explanations.gradcam_batch); the other methods go photo by photo."""
        from cnnlab.analysis.explanations import class_activation_maps, gradcam_batch

        start = time.perf_counter()
        device = next(self.model.parameters()).device
        x = x.to(device)
        if self.method == "gradcam":
            maps, shape = gradcam_batch(self.model, self.layer, x, classes)
            self.layer_shape = self.layer_shape or (1, *shape[1:])
        else:
            self.check_layer(x[:1])
            maps = [class_activation_maps(self.model, self.layer, x[i:i + 1], list(c),
                                          self.method) for i, c in enumerate(classes)]
        names = [[self._save(p, cam, stem) for stem, cam in zip(s, m, strict=True)]
                 for p, m, s in zip(pixels, maps, stems, strict=True)]
        self.seconds += time.perf_counter() - start
        return names

    def write_maps(self, pixels, raw, stems: list[str]) -> list[str]:
        """Save maps computed without the model (`raw`: (K, h, w) Grad-CAM before scaling,
        analysis/linear_cams.py) over `pixels`, scaled and resized as gradcam_batch does."""
        from cnnlab.analysis.explanations import finish_maps

        start = time.perf_counter()
        maps = finish_maps(raw, (pixels.shape[1], pixels.shape[0]))
        names = [self._save(pixels, cam, stem) for stem, cam in zip(stems, maps, strict=True)]
        self.seconds += time.perf_counter() - start
        return names

    def _save(self, pixels, cam, stem: str) -> str:
        """The map over the photo as run_dir/<stem>.<fmt>; its relative name."""
        from PIL import Image

        from cnnlab.analysis.explanations import overlay

        name = f"{stem}.{self.fmt}"
        target = self.run_dir.file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(overlay(pixels, cam))
        if self.fmt == "jpg":
            image.save(target, "JPEG", quality=85)
        else:
            image.save(target, "PNG")
        return name

    def photo(self, path: Path, classes: list[int], stems: list[str]) -> list[str]:
        """Read the photo and `write` its CAMs (BadImage when it cannot be decoded)."""
        start = time.perf_counter()
        pixels, x = self.read(path)
        self.seconds += time.perf_counter() - start
        return self.write(pixels, x, classes, stems)

    def describe(self) -> dict[str, Any]:
        """What results.json records about the maps: method, layer, its map size, the time."""
        from cnnlab.analysis.explanations import METHODS

        return {"method": self.method, "method_name": METHODS[self.method][1],
                "layer": self.layer, "layer_shape": list(self.layer_shape[1:]),
                "seconds": round(self.seconds, 3)}


# Mistakes whose maps are drawn in one forward pass. The saving is in the backward pass, which
# now runs through the head only (explanations.gradcam_batch), not in the batch: CPU-s per photo
# (2 maps, fp32, one thread, AMX Xeon under load ~17, 32 photos) at 1/4/16/32 per pass were
# Lite0 0.052/0.049/0.063/0.072 and Lite2 0.095/0.084/0.112/0.168; 4 was the cheapest, and keeps
# the memory of a pass small.
MAP_BATCH = 4


def explain_mistakes(writer: CamWriter, mistakes: list[dict[str, Any]], reporter,
                     description: str = "CAMs", batch: int = MAP_BATCH) -> list[dict[str, Any]]:
    """The CAMs of the predicted and of the true class of each misclassified photo, `batch`
    photos per forward pass.

    `mistakes`: {"path", "predicted", "true", "stem"} each (class indices; the stem numbers the
    files: <stem>-pred and <stem>-true), and "raw" when the two maps were computed already
    (analysis/linear_cams.py: then only the photo is read, and the maps saved over it). Returns,
    in the same order, {"predicted": file, "true": file}, or {"error": reason} for a photo that
    can no longer be decoded."""
    from cnnlab.data.decode import BadImage

    if mistakes and all("raw" in m for m in mistakes):
        return _write_computed(writer, mistakes, reporter, description)
    import torch

    out: list[dict[str, Any]] = [{} for _ in mistakes]
    chunks = [list(range(i, min(i + batch, len(mistakes))))
              for i in range(0, len(mistakes), batch)]
    for chunk in reporter.track(chunks, total=len(chunks), description=description,
                                unit="batches"):
        start = time.perf_counter()
        read = []
        for i in chunk:
            try:
                read.append((i, *writer.read(mistakes[i]["path"])))
            except BadImage as exc:
                out[i] = {"error": str(exc)}
        writer.seconds += time.perf_counter() - start
        if not read:
            continue
        names = writer.write_batch(
            [pixels for _, pixels, _ in read], torch.cat([x for _, _, x in read]),
            [[mistakes[i]["predicted"], mistakes[i]["true"]] for i, _, _ in read],
            [[f"{mistakes[i]['stem']}-pred", f"{mistakes[i]['stem']}-true"] for i, _, _ in read])
        for (i, _, _), (pred, true) in zip(read, names, strict=True):
            out[i] = {"predicted": pred, "true": true}
    return out


def _write_computed(writer: CamWriter, mistakes: list[dict[str, Any]], reporter,
                    description: str) -> list[dict[str, Any]]:
    """explain_mistakes for maps computed already: read each photo's pixels, save its maps."""
    from cnnlab.data.decode import BadImage, load_pixels

    out: list[dict[str, Any]] = []
    for m in reporter.track(mistakes, total=len(mistakes), description=description,
                            unit="photos"):
        start = time.perf_counter()
        try:
            pixels = load_pixels(Path(m["path"]), writer.preprocess, writer.draft)
        except BadImage as exc:
            out.append({"error": str(exc)})
            continue
        finally:
            writer.seconds += time.perf_counter() - start
        pred, true = writer.write_maps(pixels, m["raw"], [f"{m['stem']}-pred",
                                                           f"{m['stem']}-true"])
        out.append({"predicted": pred, "true": true})
    return out
