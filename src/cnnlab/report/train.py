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
from cnnlab.runs import RunDir, save_figure


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
        save_figure(fig, path, format="png")
    finally:
        plt.close(fig)
    return path


# The summary table's columns (the CLI's table, the API's DataFrame): results.json's per-model
# summary (tasks/train.summarise), with accuracy in percent and MACs per image.
SUMMARY_COLUMNS = ("model", "recipe", "lr", "test_accuracy_mean", "test_accuracy_ci95",
                   "test_accuracy_std", "seeds", "params", "macs", "epochs_trained",
                   "train_seconds", "images_per_second", "precision")
# What "±" means in every table cnnlab prints (train, experiment, the lab): the half-width of
# the 95% confidence interval of the mean over seeds (t distribution), never a standard
# deviation. The header of every such column says so.
PM = "mean ± 95% CI half-width over seeds"


def ci95(results: dict[str, Any], model: str) -> float | None:
    """Half-width (points) of the 95% interval of `model`'s mean test accuracy over its seeds
    (analysis/stats.mean_interval); None with fewer than two seeds."""
    from cnnlab.analysis import stats

    values = [100 * r["test_accuracy"] for r in results.get("runs", [])
              if r.get("model") == model and r.get("test_accuracy") is not None]
    iv = stats.mean_interval(values)
    return None if iv is None else iv.high - iv.estimate


def accuracy_text(results: dict[str, Any], m: dict[str, Any]) -> str:
    """'61.20% ± 1.30' (± the 95% CI half-width), '61.20%' for one seed, '-' untested."""
    if m.get("test_accuracy_mean") is None:
        return "-"
    half = ci95(results, m["model"])
    return f"{m['test_accuracy_mean']:.2f}%" + ("" if half is None else f" ± {half:.2f}")


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, numbers unformatted: what `cnnlab train` prints and the API's table."""
    return [{k: ci95(results, m["model"]) if k == "test_accuracy_ci95" else m.get(k)
             for k in SUMMARY_COLUMNS} for m in results["models"]]


def budget_lines(results: dict[str, Any]) -> list[str]:
    """Plain sentences on what a `--budget` run was given and bought, and what more minutes
    would buy (from the calibration's plan at twice the share); [] without a budget. Shared by
    this report and the lab's train section."""
    minutes = results.get("budget_minutes")
    if not minutes:
        return []
    runs = results["runs"]
    share = runs[0].get("budget_seconds") if runs else None
    spent = sum(c["seconds"] for c in results.get("calibration", []))
    lines = [f"Budget: {minutes:g} minutes for {len(runs)} run(s) (every model and seed), "
             + (f"{spent:.0f} s of it spent choosing the network's shape, " if spent else "")
             + (f"{share:.0f} s for each run's training and final test" if share else "")
             + "; loading the data is not counted."]
    for c in results.get("calibration", []):
        chosen = next(x for x in c["candidates"] if x["shape"] == c["chosen"])
        m = next(m for m in results["models"] if m["model"] == c["model"])
        got = ("" if m["test_accuracy_mean"] is None else
               f", and measured {accuracy_text(results, m)} ({PM})")
        lines.append(
            f"{c['model']}: the {c['chosen']} shape trained {m['steps']:.0f} steps "
            f"({m['epochs_trained']:.2f} epochs); the calibration expected about "
            f"{chosen['expected_accuracy']:.1f}% from the shapes' measured accuracy curves{got}.")
        if c.get("curve_note"):  # the curve came from the other kind of CPU (budget.py)
            lines.append(f"Note: {c['curve_note']}.")
        best2 = max(c["twice_the_budget"], key=lambda x: x["expected_accuracy"])
        lines.append(f"Twice the minutes would buy about {best2['expected_accuracy']:.1f}% "
                     f"({best2['shape']} shape, {best2['epochs']:.2f} epochs).")
    return lines


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    from cnnlab.report.env import render

    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    png = plot_comparison(epoch_series(run, results), run.file("curves.png"),
                          title=f"{Path(results['data']).name}: {results['n_train']:,} train, "
                                f"{results['n_test']:,} test images")
    context = {"results": results, "curves_uri": data_uri(png), "curves_path": png.name,
               "budget_lines": budget_lines(results), "pm": PM,
               "accuracy": {m["model"]: accuracy_text(results, m) for m in results["models"]}}
    md = run.write_text("report.md", render("train.md.j2", **context))
    html = run.write_text("report.html", render("train.html.j2", **context))
    return md, html
