"""The summary of a `cnnlab charrnn train` run, from its results: the rows the command line
prints and the API's table show (losses beside their baselines)."""

from __future__ import annotations

from typing import Any


def loss_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Training, validation, bigram and uniform losses in nats and bits per character (None
    where the run has no such number)."""
    rows = []
    if r.get("train_loss") is not None:
        rows.append({"loss": "train (last steps)", "nats/char": r["train_loss"],
                     "bits/char": None})
    if r.get("val_loss") is not None:
        rows.append({"loss": "validation", "nats/char": r["val_loss"], "bits/char": r["val_bpc"]})
    if r.get("bigram_val_loss") is not None:
        rows.append({"loss": "bigram baseline (validation)", "nats/char": r["bigram_val_loss"],
                     "bits/char": r["bigram_val_bpc"]})
    rows.append({"loss": "uniform ln|V|", "nats/char": r["uniform_loss"], "bits/char": None})
    return rows
