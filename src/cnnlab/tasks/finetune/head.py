"""The frozen head solved instead of trained: logistic regression on the cached features by
full-batch L-BFGS, its L2 strength chosen by stratified k-fold cross-validation on the train +
validation photos, then refitted on all of them (`models/head_fit.py`); and partial's start,
the same fit on the features of its still-pretrained top stages."""

from __future__ import annotations

import time
from typing import Any

from cnnlab.tasks.finetune.config import FinetuneConfig
from cnnlab.tasks.finetune.data import Prepared
from cnnlab.tasks.finetune.strategies import Trainer, threads


def fit_head(config: FinetuneConfig, prepared: Prepared, trainer: Trainer, net,
             reporter, choice_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The frozen head solved on train + validation features (never the test ones): L2 by
    cross-validation, then the refit on all of them, written into `net.head`. `choice_rows`:
    --model auto's table; the chosen backbone's cross-validation, when it was computed on
    exactly these rows, classes and seed (its digest), is taken from it, not run again.
    numpy features (`prepared.arrays`, a FrozenTransfer's ArrayHead): no torch imported."""
    from cnnlab.models.head_fit import problem_digest, select_and_fit

    start = time.perf_counter()
    parts = ("train", "val")
    if prepared.arrays:
        import numpy as np

        x = np.concatenate([prepared.features[p] for p in parts])
        y = np.concatenate([trainer.targets[p] for p in parts])
    else:
        import torch

        x = torch.cat([prepared.features[p] for p in parts])
        y = torch.cat([trainer.targets[p] for p in parts])
    n_classes = len(prepared.split.classes)
    digest = problem_digest(x, y, n_classes, config.seed) if choice_rows else None
    known = next((r["cv"] for r in choice_rows or [] if r.get("cv_digest") == digest), None)
    with threads(1):
        choice = select_and_fit(x, y, n_classes, seed=config.seed, known=known)
    train_accuracy = _load_head(net.head, choice.head, x, y)
    best = choice.best or {}
    reporter.log(f"head: L-BFGS, L2 {choice.l2:.3g} chosen by {choice.folds}-fold "
                 f"cross-validation on {len(y)} train + validation photos (accuracy "
                 f"{best.get('cv_accuracy', float('nan')):.1f}%), refitted on all of them")
    return {"method": "lbfgs", "parts": list(parts), "photos": len(y), "folds": choice.folds,
            "l2": choice.l2, "cv_accuracy": best.get("cv_accuracy"),
            "cv_log_loss": best.get("cv_log_loss"), "objective": choice.head.loss,
            "iterations": choice.head.iterations, "train_accuracy": 100.0 * train_accuracy,
            "cv": choice.table, "cv_reused": known is not None,
            "seconds": round(time.perf_counter() - start, 3)}


def _load_head(head, fitted, x, y) -> float:
    """`fitted` (models/head_fit.LinearHead) written into the net's head (a FrozenTransfer's
    ArrayHead, else an nn.Linear); its accuracy on (x, y) as a fraction."""
    from cnnlab.models.frozen_transfer import ArrayHead

    if isinstance(head, ArrayHead):
        head.load(fitted.weight, fitted.bias)
        return float((fitted.logits(x).argmax(1) == y).mean())
    import torch

    with torch.no_grad():
        head.weight.copy_(fitted.weight.to(head.weight))
        head.bias.copy_(fitted.bias.to(head.bias))
        return float((fitted.logits(x).argmax(1) == y).double().mean())


def partial_head_init(config: FinetuneConfig, prepared: Prepared, trainer: Trainer, net,
                      reporter) -> dict[str, Any]:
    """partial: the head fitted as the frozen default fits it (L-BFGS, L2 by cross-validation
    on train + validation), on the evaluation view's features through the still-pretrained top
    stages; then fine-tuning starts from it (linear probe, then fine-tune: Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features", ICLR: a zero or random head sends large,
    wrong gradients into pretrained layers in the first steps)."""
    import dataclasses

    import torch

    late = prepared.partial_net.late.eval()
    features = {}
    with torch.no_grad():
        for part in ("train", "val"):
            acts = prepared.activations[part]
            features[part] = (torch.cat([late(a[:, 0].to(trainer.device).contiguous(
                memory_format=torch.channels_last)).float().cpu() for a in acts.split(64)])
                if acts is not None else torch.zeros((0, net.width)))
    return fit_head(config, dataclasses.replace(prepared, features=features), trainer, net,
                    reporter)
