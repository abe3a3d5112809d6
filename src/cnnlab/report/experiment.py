"""The `cnnlab experiment` report and plots: per experiment the lab's claim, a table, a plot and
the one-sentence verdict; read from each experiment's results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.report.blocks import Table, figure
from cnnlab.report.study import Part, write
from cnnlab.runs import RunDir

TITLES = {"depth": "Depth: how many conv layers?", "filters": "Filter size: 3x3, 5x5 or 7x7?",
          "pooling": "Pooling: 2x2 or 4x4, max or average?",
          "residual": "Residual connections: plain nets against ResNets"}


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}%"


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, format="png", dpi=90)
    tmp.replace(path)


def plot_experiment(results: dict[str, Any], folder: Path) -> str:
    """Draw the experiment's plot into `folder`; returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = results["experiment"]
    rows = [r for r in results["rows"] if r["test_mean"] is not None]
    path = folder / f"{name}.png"
    if name == "residual":
        fig, (ax_err, ax_grad) = plt.subplots(1, 2, figsize=(11, 4.2))
        for i, r in enumerate(rows):
            color = f"C{i}"
            curve = r.get("curve") or []
            steps = [c[0] for c in curve]
            ax_err.plot(steps, [100 * (1 - c[1]) for c in curve], "--", color=color,
                        linewidth=1, label=f"{r['label']} train")
            if any(c[2] is not None for c in curve):
                ax_err.plot([c[0] for c in curve if c[2] is not None],
                            [100 * (1 - c[2]) for c in curve if c[2] is not None], "o-",
                            color=color, linewidth=2, markersize=3, label=f"{r['label']} test")
            for key, style in (("grad_init", "-"), ("grad_epoch1", ":")):
                g = r.get(key)
                when = "init" if key == "grad_init" else "epoch 1"
                if g:
                    ax_grad.plot(range(1, len(g) + 1), g, style, color=color,
                                 label=f"{r['label']} {when}")
        ax_err.set_xlabel("iterations")
        ax_err.set_ylabel("error (%)")
        ax_err.set_title("training error (dashed), test error (solid)")
        ax_grad.set_xlabel("conv layer (input side → output side)")
        ax_grad.set_ylabel("gradient L2 norm")
        ax_grad.set_yscale("log")
        ax_grad.set_title("per-layer gradient norm, one fixed batch")
        for ax in (ax_err, ax_grad):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [r["label"] for r in rows]
        xs = list(range(len(rows)))
        ax.errorbar(xs, [r["test_mean"] for r in rows], yerr=[r["test_std"] for r in rows],
                    fmt="o-" if name == "depth" else "o", capsize=4, label="test")
        if all(r["train_mean"] is not None for r in rows):
            ax.plot(xs, [r["train_mean"] for r in rows], "s--" if name == "depth" else "s",
                    alpha=0.6, label="train (last epoch, with augmentation)")
        ax.set_xticks(xs, labels, rotation=20 if name != "depth" else 0)
        ax.set_ylabel("accuracy (%), mean ± std over seeds")
        ax.set_title(TITLES[name])
        ax.grid(alpha=0.3)
        ax.legend()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path.name


def experiment_part(res: dict[str, Any], root: Path, prefix: str) -> Part:
    """One experiment as a report part; `prefix` is its folder relative to `root`."""
    name = res["experiment"]
    part = Part(TITLES[name], verdict=res["verdict"])
    part.paragraphs.append(f"The lab's claim: \u201c{res['claim']}\u201d")
    budget = (f"; at most {res['time_limit_per_trial']:.0f} s of training per trial "
              f"(--budget {res['budget_minutes']:g} min over {res['trials']} trials)"
              if res.get("time_limit_per_trial") else "")
    subset = (f"{_n(res['n_train'])} training and {_n(res['n_test'])} test images "
              f"({res['limit_per_class']} per class)" if res.get("n_train") else "a subset")
    part.paragraphs.append(
        f"Setup: {res['note']}. {subset} of {Path(res['data']).name}; {res['epochs']:g} "
        f"epoch{'s' if res['epochs'] != 1 else ''}, {res['seeds']} seed"
        f"{'s' if res['seeds'] != 1 else ''} per setting{budget}. Each trial is tested once "
        "after its last epoch; nothing is selected on the test set.")
    cut = [r["label"] for r in res["rows"] if "time-limit" in r["stopped"]]
    if cut:
        part.paragraphs.append(f"Stopped by the time limit before their epochs: "
                               f"{', '.join(cut)}.")
    rows = [[r["label"], _pm(r["test_mean"], r["test_std"]), _pm(r["train_mean"], r["train_std"]),
             r["seeds"], _n(r["params"]), "-" if r["macs"] is None else f"{r['macs'] / 1e6:.1f} M",
             ", ".join(map(str, sorted(set(r["steps"])))) or "-",
             "-" if r["seconds"] is None else f"{r['seconds']:.0f}"] for r in res["rows"]]
    part.tables.append(Table(
        ["setting", "test accuracy", "train accuracy", "seeds", "parameters", "MACs",
         "iterations", "train s"], rows,
        "mean ± sample std over seeds; train accuracy: the last epoch's, on augmented batches",
        numeric=(1, 2, 3, 4, 5, 6, 7)))
    if name == "residual":
        grad_rows = []
        for r in res["rows"]:
            for key, when in (("grad_init", "initialisation"), ("grad_epoch1", "after epoch 1")):
                g = r.get(key)
                if g:
                    grad_rows.append([r["label"], when, f"{g[0]:.3g}", f"{g[len(g) // 2]:.3g}",
                                      f"{g[-1]:.3g}", f"{g[0] / g[-1]:.3g}"])
        part.tables.append(Table(
            ["net", "when", "first conv", "middle conv", "last conv", "first / last"], grad_rows,
            f"gradient L2 norm of conv weights on one fixed batch of {res.get('grad_batch', 128)} "
            "training images (the same for every net)",
            numeric=(2, 3, 4, 5)))
    fig = figure(root, f"{prefix}{res.get('plot', '')}", TITLES[name])
    if fig:
        part.figures.append(fig)
    return part


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    env = run.read_json("environment.json") if run.file("environment.json").is_file() else {}
    parts = [experiment_part(res, run.path, f"{name}/")
             for name, res in results["experiments"].items()]
    intro = ["Lab B's claims about choosing a CNN's parameters and about ResNet, each checked "
             "by a small grid of cnnlab train runs (cnnlab experiment)."]
    return write(run.path, "cnnlab experiment", intro, parts, env)
