"""What a finetune run leaves for its reader, after the one measurement of the test photos:
the scores (top-1 / top-k error with Wilson intervals, per-class accuracy), predictions.csv,
model.safetensors + model.json for `cnnlab predict`, the Grad-CAM maps of the misclassified
test photos, and the settings the run used (results.json "settings").

Logits and targets are torch tensors, or numpy arrays in the run without a PyTorch net (a
FrozenTransfer on cached ONNX graphs): then the scores, softmax and top-k are numpy's
(models/topk.py: torch's order, ties included) and nothing here imports torch (issue 27)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.runs import RunDir
from cnnlab.tasks.finetune.config import FinetuneConfig, bn_words, top_k_for


def score(logits, targets, classes: tuple[str, ...], k: int) -> dict[str, Any]:
    """Top-1 / top-k error (percent) and per-class accuracy of logits against targets."""
    from cnnlab.analysis.binomial import error_interval

    n = len(targets)
    if isinstance(logits, np.ndarray):
        from cnnlab.models.topk import top_k

        kk = min(k, len(classes))
        top = np.array(top_k(logits, kk)[1], dtype=np.int64).reshape(n, kk)
    else:
        top = logits.topk(min(k, len(classes)), dim=1).indices
    hit1 = top[:, 0] == targets
    hitk = (top == targets[:, None]).any(1)
    per_class = []
    for c, name in enumerate(classes):
        mask = targets == c
        m = int(mask.sum())
        correct = int(hit1[mask].sum())
        per_class.append({"class": name, "n": m, "correct": correct,
                          "accuracy": 100.0 * correct / m if m else None})
    return {
        "n": n,
        "top1_error": 100.0 * (1 - _mean(hit1)) if n else None,
        "top_k": k,
        # top-k of k >= the number of classes is every class: always right, so not reported.
        "topk_error": (100.0 * (1 - _mean(hitk))
                       if n and k < len(classes) else None),
        "per_class": per_class,
        # Wilson 95% intervals: with 24 test photos one photo is 4.17 points.
        "top1_interval": error_interval(n - int(hit1.sum()), n) if n else None,
        "topk_interval": (error_interval(n - int(hitk.sum()), n)
                          if n and k < len(classes) else None),
    }


def _mean(hits) -> float:
    """The fraction of True in a boolean tensor or array (float32 mean, as torch's)."""
    if isinstance(hits, np.ndarray):
        return float(hits.astype(np.float32).mean())
    return float(hits.float().mean())


def predictions_csv(items, root: Path, targets, logits, classes, k: int) -> str:
    if isinstance(logits, np.ndarray):
        from cnnlab.models.topk import softmax_top_k

        top_p, top_c = softmax_top_k(logits, min(k, len(classes)))
    else:
        import torch

        probs = torch.softmax(logits, dim=1)
        top_p, top_c = (t.tolist() for t in probs.topk(min(k, len(classes)), dim=1))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "true_class", "rank", "class", "probability", "correct"])
    for it, t, cs, ps in zip(items, targets.tolist(), top_c, top_p, strict=True):
        rel = _relative(it.path, root)
        for r, (c, p) in enumerate(zip(cs, ps, strict=True), start=1):
            w.writerow([rel, classes[t], r, classes[c], f"{p:.6f}", int(r == 1 and c == t)])
    return buf.getvalue()


EXPLAIN_MAX = 200  # misclassified test photos whose maps are drawn (the report lists as many)


def explain_test_mistakes(net, backbone: str, preprocess, split, logits, targets, draft: bool,
                          run_dir: RunDir, reporter, from_graph=None) -> dict[str, Any]:
    """Grad-CAM maps of the predicted and of the true class of each misclassified test photo
    (the first EXPLAIN_MAX), drawn by the trained network: results.json "explanations".
    `from_graph`: (weights file, the test photos' features) of a frozen body with a fitted
    head on ONNX Runtime: the maps come from the pretrained graph's CAM-layer activations and
    the head (`graph_maps`) where that graph serves; else the PyTorch network draws them
    (a FrozenTransfer's built now)."""
    from cnnlab.analysis.cams import CamWriter, explain_mistakes, layer_of

    predicted = logits.argmax(1).tolist()
    wrong = [i for i, (p, t) in enumerate(zip(predicted, targets.tolist(), strict=True))
             if p != t]
    chosen = wrong[:EXPLAIN_MAX]
    mistakes = [{"path": split.test[i].path, "predicted": predicted[i],
                 "true": int(targets[i]), "stem": f"cams/{i:05d}"} for i in chosen]
    writer = None
    if from_graph is not None:
        weights_file, features = from_graph
        writer = graph_maps(net, backbone, weights_file, preprocess, mistakes,
                            features[chosen], run_dir, draft, reporter.log)
    if writer is None:
        model = net.built() if hasattr(net, "built") else net
        writer = CamWriter(model, layer_of(model, backbone), preprocess, run_dir, draft=draft)
    drawn = explain_mistakes(writer, mistakes, reporter, description="CAMs of the mistakes")
    cams = [{"file": _relative(split.test[i].path, split.root),
             "predicted": {"index": m["predicted"], "class": split.classes[m["predicted"]],
                           "cam": d["predicted"]},
             "true": {"index": m["true"], "class": split.classes[m["true"]], "cam": d["true"]}}
            for i, m, d in zip(chosen, mistakes, drawn, strict=True) if "error" not in d]
    about = writer.describe()
    return {**about, "n_wrong": len(wrong), "limit": EXPLAIN_MAX,
            "seconds_per_photo": round(about["seconds"] / len(cams), 4) if cams else None,
            "cams": cams}


def graph_maps(net, backbone: str, weights_file: Path, preprocess,
               mistakes: list[dict[str, Any]], features, run_dir: RunDir, draft: bool, log):
    """The raw Grad-CAM maps of `mistakes` (each gets "raw") by `net`'s fitted head (a
    TransferModel or FrozenTransfer of `backbone`, frozen) from the pretrained net's ONNX
    graph with its CAM layer's activations as a second output (evaluate's graph,
    models/inference.py), and a CamWriter without a model to save them; None when that graph
    cannot serve (refused, no linear head after the layer, a photo unreadable now, or
    activations that do not pool to the run's features): the PyTorch maps then.

    Exact, not an approximation: the frozen body's features are the layer's spatial mean
    (checked here on these photos, within inference.MAX_ABS_DIFF, as the graphs are checked
    against PyTorch), and the fitted head is linear on them, so Grad-CAM's channel weights are
    W[c] / (h * w) (analysis/linear_cams.py)."""
    import time

    from cnnlab.analysis.cams import CamWriter
    from cnnlab.analysis.linear_cams import linear_gradcam
    from cnnlab.data.decode import BadImage, load_arrays
    from cnnlab.hardware import choose_device
    from cnnlab.models.inference import (
        MAX_ABS_DIFF,
        prepare_forward,
        weights_identity,
    )
    from cnnlab.models.registry import PretrainedNet

    start = time.perf_counter()
    pretrained = PretrainedNet(backbone, weights_file)
    layer = pretrained.spec.cam_layer
    if layer is None:
        return None
    writer = CamWriter(None, f"body.{layer}", preprocess, run_dir, draft=draft)
    if not mistakes:
        return writer
    forward = prepare_forward(pretrained, "onnxruntime",
                              identity=weights_identity(backbone, weights_file),
                              input_size=preprocess.crop_size, device=choose_device("cpu"),
                              log=log, label=backbone, layer=layer)
    if forward.numpy_layer is None or forward.head is None:
        return None
    activations = []
    for at in range(0, len(mistakes), 8):  # features.ORT_BATCH photos per call
        try:  # numpy in and out: the same bytes as run_layer's tensors, no torch needed
            x = np.stack([load_arrays(m["path"], [preprocess], draft)[0]
                          for m in mistakes[at:at + 8]])
        except BadImage:
            return None
        activations.append(forward.numpy_layer(x)[1])
    a = np.concatenate(activations) if activations else np.zeros((0, net.width, 1, 1))
    pooled = a.mean(axis=(2, 3))
    if len(a) and float(np.abs(pooled - _array(features)).max()) > MAX_ABS_DIFF:
        return None
    weight = _array(net.head.weight).astype(np.float32)
    for m, act in zip(mistakes, a, strict=True):
        m["raw"] = linear_gradcam(act, weight, [m["predicted"], m["true"]])
    writer.layer_shape = (1, *a.shape[1:])
    writer.seconds = time.perf_counter() - start
    return writer


def _array(x) -> np.ndarray:
    """A numpy array, or a torch tensor's values as one."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def export_model(run_dir: RunDir, net, config: FinetuneConfig, classes, preprocess,
                 weights_file: Path, selected: str) -> Path:
    """model.safetensors (the whole network: body + head) + model.json: what `cnnlab predict`
    loads, self-contained (no ImageNet weights file needed to predict). A FrozenTransfer writes
    the same bytes itself (`saved_bytes`: without torch once its body's copy is cached)."""
    from cnnlab.models.frozen_transfer import FrozenTransfer
    from cnnlab.runs import atomic_write_bytes

    if isinstance(net, FrozenTransfer):
        data = net.saved_bytes()
    else:
        from safetensors.torch import save as st_save

        data = st_save({k: v.detach().cpu().contiguous().clone()
                        for k, v in net.state_dict().items()})
    atomic_write_bytes(run_dir.file("model.safetensors"), data)
    run_dir.write_json("model.json", {
        "format": "cnnlab-finetuned/1",
        "backbone": config.backbone,
        "classes": list(classes),
        "preprocess": preprocess,
        "strategy": config.strategy,
        "top_k": top_k_for(len(classes), config.top_k),
        "imagenet_weights": str(weights_file),
        "checkpoint": selected,
    })
    return run_dir.file("model.safetensors")


def settings(config: FinetuneConfig, net, precision: tuple[str, str]) -> dict[str, Any]:
    """The values the run used (results.json "settings"); `precision`: (fp32 | bf16, why), the
    resolved --precision. A setting that a fitted head does not use is None."""
    body_lr = config.lr_ * config.body_lr_ratio if config.strategy != "freeze" else None
    epoch_only = None if config.fitted else True  # settings that a fitted head does not use
    return {
        "strategy": config.strategy, "head_fit": config.head_fit,
        "epochs": epoch_only and config.epochs_,
        "optimizer": "lbfgs" if config.fitted else config.optimizer,
        "lr_head": epoch_only and config.lr_, "lr_body": body_lr,
        "batch_size": epoch_only and config.batch_size,
        "weight_decay": config.weight_decay, "label_smoothing": config.label_smoothing,
        "warmup_epochs": config.warmup_epochs, "augment": config.augment_,
        "early_stopping": config.early_stopping, "seed": config.seed,
        "feature_cache": config.cached and config.cache,
        "train_stages": config.train_stages if config.partial else None,
        "views": config.views if config.partial else None,
        "batchnorm": bn_words(config),
        # the precision of training (a fitted head trains no epochs: None)
        "precision": epoch_only and precision[0],
        "precision_reason": epoch_only and precision[1],
        "model": net.describe(),
    }

