"""`cnnlab explain`: what a CNN looks at, as pictures.

    config = ExplainConfig(inputs=("photos/",), model="efficientnet_lite0", method="gradcam")
    results = run(config, RunDir.create("explain"), Reporter())

For each photo: the model's top-k classes, each with a class-activation map over the photo as the
model saw it (resized and cropped), one PNG per class under cams/. The model is a registry model
with its ImageNet weights or a `cnnlab finetune` run (its own classes), loaded as `cnnlab predict`
loads it. Optionally the first convolution's filters (`filters`) and the feature maps after each
stage for one photo (`maps`). results.json (schema below) holds every number and file name;
report.md / report.html are rendered from it (report/explain.py).

    {"schema": "cnnlab.explain/1", "model", "source", "method", "method_name", "layer",
     "layer_shape", "top_k", "photos": [{"file", "seconds", "top": [{"rank", "class", "index",
     "probability", "cam"}]}], "skipped": [{"file", "error"}], "seconds_per_photo",
     "filters": {"model", "layer", "shape", "figure"} | null,
     "maps": {"file", "stages": [{"name", "shape"}], "figure"} | null}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.analysis.cams import EXPLAIN_SCHEMA, CamWriter, backbone_of, read_photo, target_layer
from cnnlab.errors import CnnlabError

SCHEMA = EXPLAIN_SCHEMA
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ExplainConfig:
    inputs: tuple[str, ...] = ()  # photos and/or folders whose CAMs are drawn
    model: str = "efficientnet_lite0"  # a registry model (ImageNet weights) or a finetune run
    method: str = "gradcam"  # one of analysis.explanations.METHODS
    top_k: int = 3  # classes explained per photo
    layer: str | None = None  # module path whose maps the CAM weighs; None: the registry's
    weights: str | None = None  # explicit ImageNet weights file (registry models only)
    filters: str | None = None  # a model (or run) whose first convolution's filters are drawn
    maps: str | None = None  # a photo whose feature maps after each stage are drawn (`model`)
    limit: int | None = None  # only the first N photos (in input order)
    device: str = "auto"
    draft: bool = True  # JPEG draft decoding, as evaluate and predict
    report: bool = True

    def __post_init__(self) -> None:
        from cnnlab.analysis.explanations import METHODS

        if not self.inputs and self.filters is None and self.maps is None:
            raise CnnlabError("give IMAGE|DIR to explain, --filters MODEL or --maps IMAGE")
        if self.method not in METHODS:
            raise CnnlabError(f"--method must be one of {', '.join(METHODS)}, not "
                              f"{self.method!r}")
        if self.top_k < 1:
            raise CnnlabError(f"--top-k must be at least 1, not {self.top_k}")
        if self.limit is not None and self.limit < 1:
            raise CnnlabError(f"--limit must be at least 1, not {self.limit}")
        if self.device not in DEVICES:
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")


def _device(name: str):
    from cnnlab.hardware import choose_device

    return choose_device(name)


def _nothing_explained(skipped: list[dict[str, str]]) -> CnnlabError:
    reasons = "; ".join(f"{s['file']}: {s['error']}" for s in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return CnnlabError(f"no photo could be explained ({len(skipped)} skipped: {reasons}{more})")


def explain_photos(config: ExplainConfig, run_dir, reporter) -> dict[str, Any]:
    """CAMs of each photo's top-k classes: PNGs under cams/, and their records."""
    import pytorch_grad_cam  # noqa: F401  (imported here: its ~2 s are not the first photo's)
    import torch

    from cnnlab.analysis.explanations import METHODS
    from cnnlab.data.decode import BadImage
    from cnnlab.models.predictor import expand_inputs, load_predictor

    files, skipped = expand_inputs(config.inputs)
    if not files and not skipped:
        raise CnnlabError("no image files among the inputs")
    if not files:  # before loading any model
        raise _nothing_explained(skipped)
    predictor = load_predictor(config.model, config.weights)
    layer = target_layer(predictor, config.layer)
    device = _device(config.device)
    model = predictor.model.to(device).eval()
    writer = CamWriter(model, layer, predictor.preprocess, run_dir, config.method,
                       config.draft, fmt="png")
    if config.limit is not None:
        files = files[: config.limit]
    k = min(config.top_k, len(predictor.classes))
    photos: list[dict[str, Any]] = []
    for n, path in enumerate(reporter.track(files, total=len(files), description="explain",
                                            unit="photos")):
        start = time.perf_counter()
        try:
            pixels, x = writer.read(path)
        except BadImage as exc:
            skipped.append({"file": str(path), "error": str(exc)})
            continue
        x = x.to(device)
        writer.check_layer(x)  # before the forward pass: a wrong --layer fails first
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1)[0].cpu()
        top_p, top_c = probs.topk(k)
        # numbered: a user's file name never names a file
        names = writer.write(pixels, x, top_c.tolist(),
                             [f"cams/{n:04d}-{rank}" for rank in range(1, k + 1)])
        top = [{"rank": rank, "class": predictor.classes[c], "index": c, "probability": p,
                "cam": name}
               for rank, (c, p, name) in enumerate(zip(top_c.tolist(), top_p.tolist(), names,
                                                       strict=True), start=1)]
        photos.append({"file": str(path), "seconds": time.perf_counter() - start, "top": top})
    if not photos:
        raise _nothing_explained(skipped)
    return {
        "model": config.model,
        "source": predictor.source,
        "method": config.method,
        "method_name": METHODS[config.method][1],
        "method_cost": METHODS[config.method][2],
        "layer": layer,
        "layer_shape": list(writer.layer_shape[1:]),
        "top_k": k,
        "photos": photos,
        "skipped": skipped,
        "seconds_per_photo": sum(p["seconds"] for p in photos) / len(photos),
    }


def draw_filters(model_name: str, weights: str | None, run_dir) -> dict[str, Any]:
    from cnnlab.analysis.explanations import first_conv, plot_filters
    from cnnlab.models.predictor import load_predictor

    predictor = load_predictor(model_name, weights)
    name, weight = first_conv(predictor.model)
    plot_filters(name, weight, run_dir.file("filters.png"))
    return {"model": model_name, "layer": name, "shape": list(weight.shape),
            "figure": "filters.png"}


def draw_maps(config: ExplainConfig, run_dir) -> dict[str, Any]:
    from cnnlab.analysis.explanations import plot_stage_maps, stage_outputs
    from cnnlab.data.decode import BadImage
    from cnnlab.models.predictor import load_predictor

    assert config.maps is not None
    predictor = load_predictor(config.model, config.weights)
    try:
        pixels, x = read_photo(Path(config.maps).expanduser(), predictor.preprocess, config.draft)
    except BadImage as exc:
        raise CnnlabError(f"--maps {config.maps}: {exc}") from None
    base, _ = backbone_of(predictor.model.cpu().eval())
    stages = stage_outputs(base, x)
    plot_stage_maps(stages, pixels, run_dir.file("maps.png"))
    return {"file": config.maps, "model": config.model, "figure": "maps.png",
            "stages": [{"name": s.name, "shape": list(s.maps.shape)} for s in stages]}


def run(config: ExplainConfig, run_dir, reporter=None) -> dict[str, Any]:
    """The task signature: draw what was asked for, save config, environment and results."""
    from cnnlab.progress import Reporter

    reporter = reporter or Reporter(quiet=True)
    results: dict[str, Any] = {"schema": SCHEMA, "photos": [], "skipped": [], "filters": None,
                               "maps": None}
    if config.inputs:
        results.update(explain_photos(config, run_dir, reporter))
    if config.filters is not None:
        results["filters"] = draw_filters(config.filters, None, run_dir)
    if config.maps is not None:
        results["maps"] = draw_maps(config, run_dir)
    run_dir.save_config(config)
    run_dir.save_environment(device=str(_device(config.device)))
    run_dir.save_results(results)
    if config.report:
        from cnnlab.report.explain import write_report

        write_report(run_dir.path)
    return results
