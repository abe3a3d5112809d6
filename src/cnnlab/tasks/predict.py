"""`cnnlab predict`: the top-k classes of photos, from a fine-tuned run or an ImageNet model.

    predictor = load_predictor("runs/finetune/x")          # or "efficientnet_lite0"
    for record in predict(PredictConfig("runs/finetune/x", ("photos/",)), Reporter()):
        print(record)   # {"file": ..., "top": [{"class": ..., "probability": ...}, ...]}
                        # or {"file": ..., "error": "truncated image (file ends early)"}

The model is loaded by `models/predictor.py` (a fine-tuned run directory, or a registry model
with its ImageNet weights and the 1000 ImageNet classes). Folders are walked as `cnnlab
evaluate` walks them (sorted, hidden files ignored, non-images skipped with a reason) and stream
through a DataLoader: records come out batch by batch, and memory does not grow with the folder.

With `explain` (`cnnlab predict --explain`), each photo's top class also gets its
class-activation map (Grad-CAM, drawn by `analysis/cams.py`'s CamWriter into the run
directory's cams/, the record's "cam"; computed from the graph's CAM-layer activations when the
engine outputs them, analysis/linear_cams.py, else with the PyTorch model, built only then),
and `predict_explained` writes results.json and the
report of `cnnlab explain` (report/explain.py) when the last record is out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:  # the predictor module imports torch: loaded when a command runs, not on import
    from cnnlab.models.predictor import Predictor


@dataclass(frozen=True)
class PredictConfig:
    model: str  # a finetune run directory (or its model.json), or a pretrained model name
    inputs: tuple[str, ...]  # image files and/or folders
    top_k: int | None = None  # None: the run's k (3 or 5), or 5 for ImageNet models
    weights: str | None = None  # explicit ImageNet weights file (pretrained models only)
    batch_size: int = 16
    workers: int = 2
    draft: bool = True
    device: str = "auto"
    explain: bool = False  # a Grad-CAM map of each photo's top class (needs a run directory)
    engine: str = "auto"  # the forward pass's engine: torch, onnxruntime, auto (models/inference)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise CnnlabError("give at least one IMAGE or DIR")
        if self.top_k is not None and self.top_k < 1:
            raise CnnlabError(f"--top-k must be at least 1, not {self.top_k}")
        if self.batch_size < 1:
            raise CnnlabError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers < 0:
            raise CnnlabError(f"--workers must be 0 or more, not {self.workers}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")
        from cnnlab.models.inference import check_engine

        check_engine(self.engine)


def predict(config: PredictConfig, reporter, predictor: Predictor | None = None,
            writer=None) -> Iterator[dict[str, Any]]:
    """One record per input image, in input order (skipped files first), as batches finish.
    With a CamWriter (`predict_explained`), each classified photo's record also names its top
    class's map (`cam`, relative to the writer's run directory) and the seconds it took."""

    from cnnlab.data.batching import ImageDataset, pass_batches
    from cnnlab.data.folders import LabelledImage
    from cnnlab.hardware import choose_device
    from cnnlab.models.inference import prepare_forward
    from cnnlab.models.predictor import expand_inputs, load_predictor
    from cnnlab.models.topk import logits_top_k

    files, skipped = expand_inputs(config.inputs)
    if not files and not skipped:
        raise CnnlabError("no image files among the inputs")
    predictor = predictor or load_predictor(config.model, config.weights)
    yield from skipped
    if not files:
        return
    k = min(config.top_k or predictor.top_k, len(predictor.classes))
    device = choose_device(config.device)
    # predictor.net: a registry model is built only to export its graph or to run PyTorch.
    forward = prepare_forward(predictor.net, config.engine, identity=predictor.identity(),
                              input_size=predictor.preprocess.crop_size, device=device,
                              log=reporter.log, label=config.model, layer=_cam_layer(predictor))
    fast = _ready_writer(writer, forward, predictor)  # maps from the graph's activations
    # ONNX Runtime: numpy from the decoder to the top-k, no torch (issue 27 item 4).
    numpy_pass = forward.numpy is not None
    dataset = ImageDataset([LabelledImage(p, "") for p in files], predictor.preprocess,
                           draft=config.draft, arrays=numpy_pass)
    loader = pass_batches(dataset, numpy_pass, batch_size=config.batch_size,
                          workers=config.workers, device=device)
    n_batches = (len(files) + config.batch_size - 1) // config.batch_size
    for images, indices, bad in reporter.track(loader, total=n_batches, description="predict",
                                               unit="batches"):
        out: dict[int, dict[str, Any]] = {i: {"file": str(files[i]), "error": reason}
                                          for i, reason in bad}
        if len(indices):
            # Inference mode per batch only (inside `forward`): the records are consumed (and
            # the maps drawn, which need gradients) outside it.
            if numpy_pass:
                logits, activations = (forward.numpy_layer(images) if fast
                                       else (forward.numpy(images), None))
            else:
                logits, activations = (forward.run_layer(images) if fast
                                       else (forward(images), None))
            top_p, top_c = logits_top_k(logits, k)
            for row, (i, cs, ps) in enumerate(zip(indices.tolist(), top_c, top_p,
                                                  strict=True)):
                out[i] = {"file": str(files[i]), "top": [
                    {"class": predictor.classes[c], "probability": p, "index": c}
                    for c, p in zip(cs, ps, strict=True)]}
                if writer is not None:
                    raw = None if activations is None else (activations[row], forward.head)
                    out[i].update(_explain_top(writer, files[i], i, cs[0], raw))
        yield from (out[i] for i in sorted(out))


def _cam_layer(predictor: Predictor) -> str | None:
    """A registry net's CAM layer: evaluate asks for the graph with that layer's activations as
    a second output (its maps), so predict asks for the same graph rather than export another."""
    from cnnlab.models.registry import PretrainedNet

    return predictor.net.spec.cam_layer if isinstance(predictor.net, PretrainedNet) else None


def _ready_writer(writer, forward, predictor: Predictor) -> bool:
    """Whether the maps come from the graph's CAM-layer activations (analysis/linear_cams.py:
    ONNX Runtime, a linear head after the layer, Grad-CAM); else the writer gets the PyTorch
    model (built now) and its layer, as `predict_explained` leaves both to this choice."""
    if writer is None:
        return False
    if forward.run_layer is not None and writer.method == "gradcam":
        writer.layer = forward.layer
        return True
    if writer.model is None:
        from cnnlab.analysis.cams import target_layer

        writer.model, writer.layer = predictor.model.eval(), target_layer(predictor)
    return False


def _explain_top(writer, path: Path, i: int, top_class: int, raw=None) -> dict[str, Any]:
    """The map of one photo's top class: {"cam", "seconds"}, or {"cam": None} when the photo
    can no longer be decoded (it was, a moment ago). raw: (the photo's CAM-layer activations,
    the linear head) when the map comes from them, not from the PyTorch model."""
    import time

    from cnnlab.data.decode import BadImage, load_pixels

    before = writer.seconds
    stem = f"cams/{i:05d}-1"
    try:
        if raw is None:
            (name,) = writer.photo(path, [top_class], [stem])
        else:
            from cnnlab.analysis.linear_cams import linear_gradcam

            start = time.perf_counter()
            activations, head = raw
            maps = linear_gradcam(activations, head.weight, [top_class])
            pixels = load_pixels(path, writer.preprocess, writer.draft)
            writer.seconds += time.perf_counter() - start
            writer.layer_shape = writer.layer_shape or (1, *activations.shape)
            (name,) = writer.write_maps(pixels, maps, [stem])
    except BadImage:
        return {"cam": None}
    return {"cam": name, "seconds": round(writer.seconds - before, 4)}


def predict_explained(config: PredictConfig, reporter, run_dir) -> Iterator[dict[str, Any]]:
    """`predict` with each top class's map; once the last record is out, results.json (the
    schema of `cnnlab explain`) and report.md / report.html in `run_dir`."""
    from dataclasses import replace

    from cnnlab.analysis.cams import EXPLAIN_SCHEMA, CamWriter
    from cnnlab.analysis.explanations import METHODS
    from cnnlab.models.predictor import expand_inputs, load_predictor

    config = replace(config, explain=True)
    files, _ = expand_inputs(config.inputs)
    if not files:  # nothing to draw: predict's own errors, before any model loads
        yield from predict(config, reporter)
        return
    predictor = load_predictor(config.model, config.weights)
    # No model yet: `predict` gives it one (and its layer) unless the maps come from the
    # exported graph's activations (a registry net's linear head on ONNX Runtime).
    writer = CamWriter(None, "", predictor.preprocess, run_dir, draft=config.draft)
    photos, skipped = [], []
    for record in predict(config, reporter, predictor, writer):
        yield record
        if "error" in record:
            skipped.append({"file": record["file"], "error": record["error"]})
            continue
        top = [{"rank": r, "class": g["class"], "index": g["index"],
                "probability": g["probability"], "cam": record.get("cam") if r == 1 else None}
               for r, g in enumerate(record["top"], start=1)]
        photos.append({"file": record["file"], "seconds": record.get("seconds", 0.0),
                       "top": top})
    if not photos:
        return
    results = {"schema": EXPLAIN_SCHEMA, "command": "predict", "model": config.model,
               "source": predictor.source, **writer.describe(),
               "method_cost": METHODS[writer.method][2],
               "top_k": len(photos[0]["top"]), "photos": photos, "skipped": skipped,
               "seconds_per_photo": sum(p["seconds"] for p in photos) / len(photos),
               "filters": None, "maps": None}
    run_dir.save_config(config)
    run_dir.save_environment(device=str(next(writer.model.parameters()).device)
                             if writer.model is not None else "cpu")  # ONNX Runtime: the CPU
    run_dir.save_results(results)
    from cnnlab.report.explain import write_report

    write_report(run_dir.path)


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """One photo's record as a row of the summary table (the API's `.table`): its top class
    and probability, or the reason it was skipped."""
    top = record["top"][0] if "top" in record else {}
    return {"file": record["file"], "class": top.get("class"),
            "probability": top.get("probability"), "error": record.get("error")}
