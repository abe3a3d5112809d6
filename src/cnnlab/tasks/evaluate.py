"""`cnnlab evaluate`: pretrained ImageNet CNNs on a labelled photo folder, side by side.

    config = EvaluateConfig(path="photos/", models=("efficientnet_lite0", "resnet18"))
    results = run(config, RunDir.create("evaluate"), Reporter())   # the task signature
    results = evaluate(config, Reporter(), out="runs/x")           # the same, for library use

Steps, each of which fails early and in one line where the user can fix something:

1. discover the labelled images (`data/folders.py`: class sub-folders, CSV or file names) and
   resolve every distinct label to the ImageNet classes it accepts (`data/imagenet.py`: one class
   by synonym, or every class whose line starts with it under the lab's prefix rule); all
   unresolved labels are reported together before any model runs, unless `skip_unknown`;
2. find every model's weights before running any model (a missing file is one line that says
   which file to put where);
3. stream the images once for all the models (decoding threads when every model runs on ONNX
   Runtime, data/threaded.py; else a `DataLoader`'s worker processes decode each photo once for
   all the models -- Pillow's draft mode decodes large JPEGs at reduced size --, then resize
   and crop it by each model's own preprocessing:
   data/batching.py's SharedDecodeDataset), batched inference of every model under
   `torch.inference_mode()`; keep only the top-k classes and probabilities of each image, so
   memory does not grow with the batch count beyond those few numbers;
4. under `torchrun` each rank scores every world_size-th image and rank 0 gathers the
   predictions; results do not depend on the number of ranks or workers;
5. the class-activation maps (Grad-CAM, `analysis/cams.py`) of the class each model predicted
   and of the true class for every photo it got wrong (cams/*.jpg; `explain=False` /
   --no-explain leaves them out, `explain_limit` keeps the first N mistakes of each model).
   On ONNX Runtime, when only global average pooling and a Linear layer follow the CAM layer
   (EfficientNet-Lite's bn2: models/linear_head.py), the graph also outputs that layer's
   activations and each rank computes the maps of its mistakes in the scoring pass itself
   (analysis/linear_cams.py: no PyTorch model, no second forward, no backward); otherwise
   rank 0 draws them after the pass with the PyTorch model, in batches of mistakes, one
   forward pass each and the backward pass through the head only;
6. rank 0 writes results.json, predictions.csv, metrics.jsonl and the report.

A file that cannot be read is skipped with its reason (results.json, report); the run fails only
when no image could be scored.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir

DEFAULT_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LABEL_SOURCES = ("auto", "folders", "csv", "filename")
MATCH_RULES = ("synonym", "prefix")


@dataclass(frozen=True)
class EvaluateConfig:
    path: str  # folder of labelled photos (or the CSV's folder)
    models: tuple[str, ...] = DEFAULT_MODELS
    # model name -> explicit weights file; a model not listed uses the hub cache / package / URL.
    weights: dict[str, str] = field(default_factory=dict)
    top_k: int = 5  # classes kept per image in predictions.csv and the report
    # Images per forward pass. 8: on ONNX Runtime (the default engine) the same CPU time as 16
    # and ~200 MB less peak memory (Lite0's widest activations scale with the batch; measured
    # with benchmarks/eval_vs_lab.py, BENCHMARKS.md); 16 was the fastest of 8/16/32/64 for
    # PyTorch eager on 2 cores.
    batch_size: int = 8
    # Decoders: DataLoader worker processes, or threads of this process when every model runs
    # on ONNX Runtime (data/threaded.py); 0 decodes in the main thread.
    workers: int = 2
    labels: str = "auto"  # where labels come from: auto, folders, csv, filename
    csv: str | None = None  # CSV file with columns file,label (labels="csv"/"auto")
    # label -> class rule: synonym (default: one exact class) or prefix (the lab's rule: every
    # class whose line starts with the label is accepted)
    match: str = "synonym"
    skip_unknown: bool = False  # score the images whose labels resolve, skip the others
    limit: int | None = None  # only the first N images (sorted by path), for quick looks
    draft: bool = True  # let Pillow decode large JPEGs at a reduced size (much faster)
    channels_last: bool = True  # NHWC memory format: 20-50% faster convolutions on CPU
    report: bool = True  # write report.md / report.html
    device: str = "auto"  # auto, cpu or cuda
    # CAMs of the predicted and the true class of every photo a model gets wrong (report).
    # Costs one forward pass per mistake and model, 4 mistakes per pass, and a backward pass
    # through the head (analysis/explanations.gradcam_batch; BENCHMARKS.md, "CAMs: cost").
    explain: bool = True
    explain_limit: int | None = None  # only each model's first N mistakes (by path)
    # The forward passes' engine: torch, onnxruntime (the same weights exported to ONNX, checked
    # against PyTorch at export; models/inference.py) or auto (onnxruntime on the CPU: faster,
    # BENCHMARKS.md "Inference engines"). The maps of the mistakes stay in PyTorch.
    engine: str = "auto"

    def __post_init__(self) -> None:
        from cnnlab.models.inference import check_engine

        check_engine(self.engine)
        if not self.models:
            raise CnnlabError("no model given; pass -m MODEL (or none for the default trio)")
        if len(set(self.models)) != len(self.models):
            raise CnnlabError("a model is given twice; each -m names a different model")
        unknown_weights = set(self.weights) - set(self.models)
        if unknown_weights:
            raise CnnlabError(
                f"--weights for {', '.join(sorted(unknown_weights))}, which is not among the "
                f"models ({', '.join(self.models)})"
            )
        if not 1 <= self.top_k <= 1000:
            raise CnnlabError(f"--top-k must be between 1 and 1000, not {self.top_k}")
        if self.batch_size < 1:
            raise CnnlabError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers < 0:
            raise CnnlabError(f"--workers must be 0 or more, not {self.workers}")
        if self.labels not in LABEL_SOURCES:
            raise CnnlabError(f"--labels must be one of {', '.join(LABEL_SOURCES)}")
        if self.match not in MATCH_RULES:
            raise CnnlabError(f"--match must be one of {', '.join(MATCH_RULES)}")
        if self.limit is not None and self.limit < 1:
            raise CnnlabError(f"--limit must be at least 1, not {self.limit}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CnnlabError(f"--device must be auto, cpu or cuda, not {self.device}")
        if self.explain_limit is not None and self.explain_limit < 0:
            raise CnnlabError(f"--explain-limit must be 0 or more, not {self.explain_limit}")


@dataclass
class ModelPass:
    """One model's predictions on this rank's images: plain lists, cheap to gather."""

    name: str
    indices: list[int]  # global image indices
    top_classes: list[list[int]]  # per image: top-k class indices, most probable first
    top_probs: list[list[float]]  # per image: their softmax probabilities
    bad: list[tuple[int, str]]  # (global index, reason) of images that could not be decoded
    seconds: float  # wall time of the pass on this rank (decoding + inference)
    # The maps of each mistake (global index -> (2, h, w): predicted and true class, Grad-CAM
    # before scaling) computed in the pass from the CAM layer's activations, when the engine
    # outputs them and the head is linear (analysis/linear_cams.py); None: drawn after the pass
    # with the PyTorch model (gradcam_batch).
    raw_maps: dict[int, Any] | None = None
    layer_shape: tuple[int, ...] = ()  # the CAM layer's (C, h, w) when raw_maps is set
    map_seconds: float = 0.0  # time spent computing raw_maps


def _prepare_items(
    config: EvaluateConfig, classes
) -> tuple[list, list[tuple[int, ...]], list[dict]]:
    """Discovered images with resolvable labels, the classes each accepts, and what was skipped."""
    from cnnlab.data.folders import discover
    from cnnlab.data.imagenet import describe_problems, resolve_labels

    root = Path(config.path)
    if not root.exists():
        raise CnnlabError(f"folder not found: {root}")
    found = discover(root, labels=config.labels, csv_path=config.csv)
    skipped = [{"file": str(s.path), "reason": s.reason} for s in found.skipped]
    items = sorted(found.items, key=lambda it: str(it.path))
    if config.limit is not None:
        items = items[: config.limit]
    if not items:
        raise CnnlabError(
            f"no labelled images found in {root}"
            + (f" ({len(skipped)} file(s) skipped, e.g. {skipped[0]['reason']})" if skipped else "")
        )
    resolved, problems = resolve_labels([it.label for it in items], classes, config.match)
    if problems and not config.skip_unknown:
        raise CnnlabError(describe_problems(problems, classes))
    problem_of = {p.label: p for p in problems}
    kept, accepted = [], []
    for it in items:
        if it.label in resolved:
            kept.append(it)
            accepted.append(resolved[it.label])
        else:
            p = problem_of[it.label]
            why = "is ambiguous" if p.ambiguous else "matches no ImageNet class"
            skipped.append({"file": str(it.path), "reason": f"label {it.label!r} {why}"})
    if not kept:
        raise CnnlabError(f"no image in {root} has a label that matches an ImageNet class")
    return kept, accepted, skipped


def _run_models(
    forwards: list,
    preprocesses: list,
    items: list,
    global_indices: list[int],
    config: EvaluateConfig,
    device,
    reporter,
    names: list[str],
    accepted: list[tuple[int, ...]],
) -> list[ModelPass]:
    """Stream this rank's images through every model's forward pass (models/inference.Forward,
    on its engine), each photo read and decoded once for all of them (data/batching.py's
    SharedDecodeDataset); keep only the top-k of each.

    A model's `seconds` is its own forward time plus an equal share of the time spent waiting
    for decoded batches (the decoding is shared, so it is split evenly between the models)."""
    import torch

    from cnnlab.data.batching import SharedDecodeDataset
    from cnnlab.data.loaders import photo_loader
    from cnnlab.models.inference import one_torch_thread_unless_torch

    k = max(config.top_k, 5)  # top-5 error is always reported
    fast = [config.explain and f.run_layer is not None for f in forwards]  # maps in the pass
    dataset = SharedDecodeDataset(items, preprocesses, draft=config.draft)
    if all(f.engine in ("onnxruntime", "openvino") for f in forwards) and config.workers > 0:
        from cnnlab.data.threaded import thread_batches

        # Decoding threads, not processes: ONNX Runtime and the decoder release the GIL
        # (data/threaded.py: no forked copy of torch, less CPU).
        loader = thread_batches(dataset, batch_size=config.batch_size, collate=dataset.collate,
                                threads=config.workers)
    else:
        loader = photo_loader(dataset, workers=config.workers, device=device,
                              batch_size=config.batch_size, collate=dataset.collate)
    outs = [ModelPass(name, [], [], [], [], 0.0, {} if f else None)
            for name, f in zip(names, fast, strict=True)]
    n_batches = (len(items) + config.batch_size - 1) // config.batch_size
    forward_seconds = [0.0] * len(names)
    start = time.perf_counter()
    with torch.inference_mode(), one_torch_thread_unless_torch(forwards):
        for batches, indices, bad in reporter.track(
            loader, total=n_batches, description=" + ".join(names), unit="batches"
        ):
            bad_global = [(global_indices[i], reason) for i, reason in bad]
            good_global = [global_indices[i] for i in indices.tolist()]
            for m, (out, images) in enumerate(zip(outs, batches, strict=True)):
                out.bad.extend(bad_global)
                if len(indices) == 0:
                    continue
                began = time.perf_counter()
                if fast[m]:
                    logits, activations = forwards[m].run_layer(images)
                else:
                    logits = forwards[m](images)
                probs = logits.float().softmax(dim=1)
                top_p, top_c = probs.topk(min(k, probs.shape[1]), dim=1)
                tops = top_c.cpu().tolist()
                out.indices.extend(good_global)
                out.top_classes.extend(tops)
                out.top_probs.extend(top_p.cpu().tolist())
                scored = time.perf_counter()
                forward_seconds[m] += scored - began
                if fast[m]:
                    _keep_maps(out, activations, good_global, tops, accepted, forwards[m].head)
                    out.map_seconds += time.perf_counter() - scored
    waiting = (time.perf_counter() - start - sum(forward_seconds)
               - sum(out.map_seconds for out in outs))
    for out, own in zip(outs, forward_seconds, strict=True):
        out.seconds = own + waiting / len(outs)
    return outs


def _keep_maps(out: ModelPass, activations, indices: list[int], tops: list[list[int]],
               accepted: list[tuple[int, ...]], head) -> None:
    """The raw Grad-CAM maps of the batch's mistakes (predicted class, true class) from the CAM
    layer's activations (N, C, h, w): kept in `out.raw_maps`, a few hundred bytes per mistake
    (the activations themselves, ~250 kB a photo for Lite0, are dropped with the batch)."""
    from cnnlab.analysis.linear_cams import linear_gradcam

    out.layer_shape = tuple(activations.shape[1:])
    for row, (i, top) in enumerate(zip(indices, tops, strict=True)):
        if top[0] not in accepted[i]:
            out.raw_maps[i] = linear_gradcam(activations[row], head.weight,
                                             [top[0], _true_class(accepted[i], top)])


def _merge(passes: list[ModelPass]) -> ModelPass:
    """Rank passes of one model -> one, in global image order (independent of world size)."""
    order = sorted(
        (i, c, p) for part in passes for i, c, p in zip(
            part.indices, part.top_classes, part.top_probs, strict=True
        )
    )
    return ModelPass(
        passes[0].name,
        [i for i, _, _ in order],
        [c for _, c, _ in order],
        [p for _, _, p in order],
        sorted(b for part in passes for b in part.bad),
        max(part.seconds for part in passes),
        None if passes[0].raw_maps is None else {
            i: m for part in passes for i, m in (part.raw_maps or {}).items()},
        next((p.layer_shape for p in passes if p.layer_shape), ()),
        max(part.map_seconds for part in passes),
    )


def _summarise(merged: ModelPass, accepted: list[tuple[int, ...]], n_params: int, weights: Path,
               preprocess, engine: dict[str, Any]) -> dict[str, Any]:
    """Top-1 right when the top class is accepted, top-5 when any of the top 5 is (the lab's
    loop; with the synonym rule each image accepts exactly one class)."""
    n = len(merged.indices)
    pairs = list(zip(merged.indices, merged.top_classes, strict=True))
    top1_wrong = sum(c[0] not in accepted[i] for i, c in pairs)
    top5_wrong = sum(not any(k in accepted[i] for k in c[:5]) for i, c in pairs)
    return {
        "name": merged.name,
        "parameters": n_params,
        "weights": str(weights),
        "preprocess": preprocess,
        "n_images": n,
        "n_skipped": len(merged.bad),
        # Percentages; None when no image could be scored.
        "top1_error": 100.0 * top1_wrong / n if n else None,
        "top5_error": 100.0 * top5_wrong / n if n else None,
        "seconds": merged.seconds,
        "images_per_second": n / merged.seconds if merged.seconds > 0 else None,
        # The engine that ran the pass, and for ONNX Runtime its check against PyTorch
        # (max_abs_diff of the logits on the check batch, the bound) or why it was refused.
        "engine": engine,
    }


def _predictions_csv(
    items: list, root: Path, accepted: list[tuple[int, ...]], passes: list[ModelPass], classes,
    top_k: int, prefix: bool,
) -> str:
    """One row per image, model and rank. Under the prefix rule two more columns list the
    classes each image accepts (`accepted`: indices separated by spaces; `accepted_classes`:
    their names separated by '; '), and true_index / true_class are empty unless it is one."""
    names = classes.names  # a property that builds the 1000-name tuple on each access
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "true_label", "true_index", "true_class", "model", "rank", "class_index",
                "class", "probability"] + (["accepted", "accepted_classes"] if prefix else []))
    for mp in passes:
        for i, cls, probs in zip(mp.indices, mp.top_classes, mp.top_probs, strict=True):
            rel = _relative(items[i].path, root)
            one = accepted[i][0] if len(accepted[i]) == 1 else None
            true = ["", ""] if one is None else [one, names[one]]
            extra = [" ".join(map(str, accepted[i])),
                     "; ".join(names[a] for a in accepted[i])] if prefix else []
            for r, (c, p) in enumerate(zip(cls[:top_k], probs[:top_k], strict=True), start=1):
                w.writerow([rel, items[i].label, *true, mp.name, r, c, names[c],
                            f"{p:.6f}", *extra])
    return buf.getvalue()


def _true_class(accepted: tuple[int, ...], top: list[int]) -> int:
    """The true class whose map is drawn: the one class (synonym rule), or under the prefix rule
    the accepted class the model ranked highest (else the first one)."""
    return next((c for c in top if c in accepted), accepted[0])


def _explain_model(net, spec, preprocess, merged: ModelPass, number: int, items: list,
                   accepted: list[tuple[int, ...]], root: Path, classes, config: EvaluateConfig,
                   run_dir: RunDir, reporter) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The CAMs of one model's mistakes: its predicted class and the true class, side by side.
    `net` (models/registry.PretrainedNet) builds the model: only when there is a map to draw."""
    from cnnlab.analysis.cams import CamWriter, explain_mistakes, layer_of
    from cnnlab.analysis.explanations import METHODS

    wrong = [(i, top) for i, top in zip(merged.indices, merged.top_classes, strict=True)
             if top[0] not in accepted[i]]
    chosen = wrong if config.explain_limit is None else wrong[: config.explain_limit]
    if not chosen:  # no model built: the layer as the registry names it, no map, no time
        return {"method": "gradcam", "method_name": METHODS["gradcam"][1],
                "layer": spec.cam_layer, "layer_shape": [], "seconds": 0.0,
                "model": merged.name, "n_wrong": len(wrong), "n_explained": 0}, []
    mistakes = [{"path": items[i].path, "predicted": top[0],
                 "true": _true_class(accepted[i], top), "stem": f"cams/{number}-{i:05d}"}
                for i, top in chosen]
    if merged.raw_maps is not None:  # computed in the pass: no model built (linear_cams.py)
        writer = CamWriter(None, spec.cam_layer, preprocess, run_dir, draft=config.draft)
        writer.layer_shape, writer.seconds = (1, *merged.layer_shape), merged.map_seconds
        for (i, _), m in zip(chosen, mistakes, strict=True):
            m["raw"] = merged.raw_maps[i]
    else:
        model = net()
        writer = CamWriter(model, layer_of(model, spec.name), preprocess, run_dir,
                           draft=config.draft)
    drawn = explain_mistakes(writer, mistakes, reporter, description=f"{spec.name} CAMs")
    records = []
    for (i, _), m, d in zip(chosen, mistakes, drawn, strict=True):
        if "error" in d:
            continue
        records.append({
            "file": _relative(items[i].path, root), "model": merged.name,
            "predicted": {"index": m["predicted"], "class": classes.names[m["predicted"]],
                          "cam": d["predicted"]},
            "true": {"index": m["true"], "class": classes.names[m["true"]], "cam": d["true"]},
        })
    summary = {**writer.describe(), "model": merged.name, "n_wrong": len(wrong),
               "n_explained": len(records)}
    return summary, records


def _relative(path, root: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def run(config: EvaluateConfig, run_dir: RunDir, reporter) -> dict[str, Any] | None:
    """Run the evaluation into `run`; returns the results on rank 0 (None on the other ranks,
    which share the directory's path but never write to it)."""
    from cnnlab import dist
    from cnnlab.data.imagenet import load_imagenet_classes
    from cnnlab.models.inference import onnxruntime_version, prepare_forward, weights_identity
    from cnnlab.models.registry import PretrainedNet, get_spec

    # Joins the process group under torchrun: a no-op after the CLI's open_run, needed when a
    # library caller hands `run` a directory of its own.
    info, device = dist.init(config.device)
    specs = [get_spec(name) for name in config.models]  # a misspelt model name first
    classes = load_imagenet_classes()
    # Rank 0 lists the folder and every rank shards its list: ranks listing on their own could
    # disagree (a file added meanwhile) and score images under another image's label. A user
    # error found here stops every rank at once, printed once.
    items, accepted, skipped = dist.broadcast_from_main(
        lambda: _prepare_items(config, classes), info
    )

    weight_files = _weight_files(config, specs, info)
    if not info.is_main:  # one progress display: rank 0's
        from cnnlab.progress import Reporter

        reporter = Reporter(quiet=True)
    if info.is_main:
        run_dir.save_config(config)
        run_dir.save_environment(device=str(device), engine=config.engine,
                                 onnxruntime=onnxruntime_version())
    my_indices = dist.shard(list(range(len(items))), info)
    my_items = [items[i] for i in my_indices]
    reporter.log(
        f"evaluate: {len(items)} images ({len(skipped)} skipped before decoding), "
        f"{len(specs)} model(s)"
        + (f", rank {info.rank}/{info.world_size}: {len(my_items)} images"
           if info.enabled else "")
    )
    summaries, merged_passes = [], []
    explained: list[dict[str, Any]] = []  # per model: method, layer, time, counts
    cams: list[dict[str, Any]] = []  # per mistake and model: the two maps
    root = Path(config.path)
    # One pass over the photos decodes each once for every model; a model is built (timm or
    # torchvision, PyTorch weights) only for the torch engine, an export or a mistake's maps.
    loaded = []  # (spec, weights file, net, preprocess, forward)
    for spec, wfile in zip(specs, weight_files, strict=True):
        net = PretrainedNet(spec.name, wfile)
        preprocess = net.preprocess
        forward = prepare_forward(net, config.engine, identity=weights_identity(spec.name, wfile),
                                  input_size=preprocess.crop_size, device=device,
                                  channels_last=config.channels_last, log=reporter.log,
                                  label=spec.name, layer=spec.cam_layer)
        loaded.append((spec, wfile, net, preprocess, forward))
    parts = _run_models([f for *_, f in loaded], [pp for *_, pp, _ in loaded], my_items, my_indices,
                        config, device, reporter, [s.name for s, *_ in loaded], accepted)
    for number, ((spec, wfile, net, preprocess, forward), part) in enumerate(
            zip(loaded, parts, strict=True)):
        loaded[number] = None  # each model is freed once its maps are drawn
        gathered = dist.gather_objects(part, info)
        if gathered is None:
            del net, forward
            continue
        merged = _merge(gathered)
        merged_passes.append(merged)
        summary = _summarise(merged, accepted, net.parameter_count(), wfile, preprocess,
                             forward.about)
        summaries.append(summary)
        run_dir.append_metrics({k: v for k, v in summary.items() if k != "preprocess"})
        if config.explain:  # rank 0, while this model is loaded (the others go on meanwhile)
            about, records = _explain_model(net, spec, preprocess, merged, number, items,
                                            accepted, root, classes, config, run_dir, reporter)
            explained.append(about)
            cams += records
        del net, forward
    if not info.is_main:
        return None
    # environment.json: which engine each model's pass ran on, with its check against PyTorch.
    env = run_dir.read_json("environment.json")
    env["engines"] = {s["name"]: s["engine"] for s in summaries}
    run_dir.write_json("environment.json", env)

    bad_reasons = _undecodable(merged_passes)
    skipped += [{"file": str(items[i].path), "reason": r} for i, r in sorted(bad_reasons.items())]
    results = {
        "path": str(root.resolve()),
        "n_labelled": len(items),  # images whose labels resolved (decodable or not)
        "n_skipped": len(skipped),
        "top_k": config.top_k,
        "match": config.match,
        "world_size": info.world_size,
        "device": str(device),
        "models": summaries,
        "skipped": [{**s, "file": _relative(s["file"], root)} for s in skipped],
        "explanations": _explanations(explained, cams, config) if config.explain else None,
    }
    if config.match == "prefix":
        # No single true class per image: each image's accepted classes, as the lab's rule
        # counted them (class index and its line in the lab's class file).
        results["images"] = [
            {"file": _relative(it.path, root), "label": it.label,
             "accepted": [{"index": a, "line": classes.lines[a]} for a in acc]}
            for it, acc in zip(items, accepted, strict=True)
        ]
    run_dir.save_results(results)
    run_dir.write_text(
        "predictions.csv",
        _predictions_csv(items, root, accepted, merged_passes, classes, config.top_k,
                         prefix=config.match == "prefix"),
    )
    if all(s["n_images"] == 0 for s in summaries):
        example = next(iter(bad_reasons.values()), "no reason given")
        raise CnnlabError(
            f"no image could be scored ({len(bad_reasons)} unreadable, e.g. {example}); "
            f"details in {run_dir.file('results.json')}"
        )
    if config.report:
        from cnnlab.report.evaluate import write_report

        write_report(run_dir.path)
    results["run_dir"] = str(run_dir.path)
    return results


def _weight_files(config: EvaluateConfig, specs, info) -> list[Path]:
    """Every model's weights file, found before any model runs (a missing file costs no
    time): rank 0 finds or downloads them while the others wait, then all use its files."""
    from cnnlab import dist
    from cnnlab.models.pretrained import fetch, pretrained_spec_of

    def fetch_all() -> list[Path]:
        return [
            fetch(pretrained_spec_of(s), s.name, config.weights.get(name))
            for s, name in zip(specs, config.models, strict=True)
        ]

    weight_files = dist.broadcast_from_main(fetch_all, info)
    if any(not p.is_file() for p in weight_files):  # another machine, no shared file system
        weight_files = fetch_all()  # the hub cache there; downloads are atomic (temp + rename)
    return weight_files


def _undecodable(merged_passes) -> dict[int, str]:
    """{item index: reason} of the files no model could decode: each is skipped once, with
    the reason its (first) decoder gave."""
    bad_reasons: dict[int, str] = {}
    for mp in merged_passes:
        for i, reason in mp.bad:
            bad_reasons.setdefault(i, reason)
    return bad_reasons


def _explanations(explained: list[dict[str, Any]], cams: list[dict[str, Any]],
                  config: EvaluateConfig) -> dict[str, Any]:
    """results.json "explanations": how the maps were drawn and what they cost, and the maps."""
    from cnnlab.analysis.explanations import METHODS

    seconds = sum(m["seconds"] for m in explained)
    return {"method": "gradcam", "method_name": METHODS["gradcam"][1],
            "limit": config.explain_limit, "models": explained,
            "seconds": round(seconds, 3),
            "seconds_per_photo": round(seconds / len(cams), 4) if cams else None,
            "cams": cams}


def evaluate(
    config: EvaluateConfig, reporter, out: str | Path | None = None
) -> dict[str, Any] | None:
    """`run` into a new run directory (`out`, or runs/evaluate/<timestamp>): for library use."""
    from cnnlab.dist import open_run
    from cnnlab.tasks import run_task

    return run_task(run, config, open_run("evaluate", out, device=config.device), reporter)
