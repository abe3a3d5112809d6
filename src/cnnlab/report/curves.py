"""Loss curves as PNG, drawn from a run's metrics.jsonl (never from training code).

Each record with `train_loss` is a point of the training curve, each with `val_loss` a point of
the validation curve; the x axis is the optimisation step. A resumed run appends to the same
file, so its curve simply continues.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        tmp.replace(path)  # atomic: a crash never leaves half a PNG
    finally:
        plt.close(fig)
    return path
