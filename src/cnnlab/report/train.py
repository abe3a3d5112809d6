"""The `cnnlab train` report: comparison table and curves, from the run's files only.

Reads results.json (the table) and each `<model>-seed<k>/metrics.jsonl` (the curves): train loss
and test accuracy per epoch, averaged over seeds, one line per model, in one PNG (curves.png),
embedded in report.html and linked from report.md.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from cnnlab.report.blocks import data_uri
from cnnlab.runs import RunDir


def epoch_series(run: RunDir, results: dict[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """model -> [(epoch, train loss, test accuracy %)], each the mean over the model's seeds."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for model in results["models"]:
        per_epoch: dict[int, list[tuple[float, float]]] = {}
        for r in results["runs"]:
            if r["model"] != model["model"]:
                continue
            sub = RunDir(run.path / f"{r['model']}-seed{r['seed']}")
            for rec in sub.read_metrics():
                if rec.get("kind") == "epoch" and rec.get("test_accuracy") is not None:
                    per_epoch.setdefault(rec["epoch"], []).append(
                        (rec["train_loss"], 100 * rec["test_accuracy"]))
        series[model["model"]] = [
            (e, statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts))
            for e, pts in sorted(per_epoch.items())
        ]
    return series


def plot_comparison(series: dict[str, list[tuple[int, float, float]]], path: Path,
                    title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        for name, pts in series.items():
            if not pts:
                continue
            epochs = [p[0] for p in pts]
            label = name.replace("$", r"\$")  # matplotlib reads $...$ as mathtext
            ax_loss.plot(epochs, [p[1] for p in pts], "o-", markersize=3, label=label)
            ax_acc.plot(epochs, [p[2] for p in pts], "o-", markersize=3, label=label)
        for ax, ylabel in ((ax_loss, "train loss (with label smoothing, if any)"),
                           (ax_acc, "test accuracy (%), no TTA")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        if title:
            fig.suptitle(title.replace("$", r"\$"))
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        tmp.replace(path)  # atomic
    finally:
        plt.close(fig)
    return path


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    from cnnlab.report.env import render

    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    png = plot_comparison(epoch_series(run, results), run.file("curves.png"),
                          title=f"{Path(results['data']).name}: {results['n_train']:,} train, "
                                f"{results['n_test']:,} test images")
    context = {"results": results, "curves_uri": data_uri(png), "curves_path": png.name}
    md = run.write_text("report.md", render("train.md.j2", **context))
    html = run.write_text("report.html", render("train.html.j2", **context))
    return md, html
