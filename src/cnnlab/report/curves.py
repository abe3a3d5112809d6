"""Loss curves as PNG, drawn from a run's metrics.jsonl (never from training code).

Each record with `train_loss` is a point of the training curve, each with `val_loss` a point of
the validation curve; the x axis is the optimisation step. A resumed run appends to the same
file, so its curve simply continues.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cnnlab.runs import save_figure


def plot_loss_curves(
    records: Iterable[dict[str, Any]], path: str | Path, title: str = "", unit: str = "nats/char"
) -> Path:
    """Write train/validation loss against step to `path` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (CI, ssh, headless servers)
    import matplotlib.pyplot as plt

    records = list(records)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"loss ({unit})")
        if title:
            ax.set_title(title)
        if train or val:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return save_figure(fig, path, format="png")
    finally:
        plt.close(fig)


def plot_epoch_curves(records: Iterable[dict[str, Any]], path: str | Path, title: str = "",
                      selected_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs validation, side by side in one PNG (as the lab's
    figures); `records` are metrics.jsonl's epoch records (`kind == "epoch"`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        for ax, key, label in ((ax_loss, "loss", "loss (training objective)"),
                               (ax_acc, "accuracy", "accuracy (%)")):
            scale = 100.0 if key == "accuracy" else 1.0
            for split, style in (("train", "-"), ("val", "o-")):
                pts = [(r["epoch"], scale * r[f"{split}_{key}"]) for r in recs
                       if r.get(f"{split}_{key}") is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, markersize=3,
                            label="train" if split == "train" else "validation")
            if selected_epoch is not None:
                ax.axvline(selected_epoch, color="grey", linestyle=":", linewidth=1,
                           label=f"kept (epoch {selected_epoch})")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return save_figure(fig, path, format="png")
    finally:
        plt.close(fig)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path,
                   title: str = "") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    try:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), [_short(c) for c in classes], rotation=60, ha="right")
        ax.set_yticks(range(n), [_short(c) for c in classes])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 30:
            top = max((max(row) for row in matrix), default=0) or 1
            for i, row in enumerate(matrix):
                for j, v in enumerate(row):
                    if v:
                        ax.text(j, i, str(v), ha="center", va="center",
                                color="white" if v > top / 2 else "black", fontsize=8)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return save_figure(fig, path, format="png")
    finally:
        plt.close(fig)


def _short(name: str, limit: int = 24) -> str:
    """A class name as a tick label: shortened, and `$` escaped (matplotlib would read
    `$...$` as mathtext, and fail on an unbalanced `$`)."""
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return name.replace("$", r"\$")
