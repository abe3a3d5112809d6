"""The `cnnlab experiment` report and plots: per experiment the lab's claim, the design in one
line, a table with 95% intervals over seeds, a figure, and the verdict with its numbers; read
from each experiment's results.json."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from cnnlab.report.blocks import Table, figure
from cnnlab.report.study import Part, write
from cnnlab.runs import RunDir, save_figure

TITLES = {"depth": "Depth: how many conv layers?", "filters": "Filter size: 3x3, 5x5 or 7x7?",
          "pooling": "Pooling: 2x2 or 4x4, max or average?",
          "residual": "Residual connections: plain nets against ResNets"}


def interval(mean: float | None, ci: float | None, digits: int = 1) -> str:
    """'61.2 ± 0.8%' with the 95% interval's half-width; one seed: '61.2%', no ±."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}%" if ci is None else f"{mean:.{digits}f} ± {ci:.{digits}f}%"


def verdict_text(v: dict[str, Any] | str) -> str:
    """'Held: <sentence>' from a saved verdict."""
    if isinstance(v, str):  # a run written before verdicts had a status
        return v
    return f"{v['status'].capitalize()}: {v['sentence']}"


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def _band(ax, xs, runs: list[list[float]], color: str, label: str, style: str = "-") -> None:
    """The mean over seeds as a line, without a band (results from before `curve_band`)."""
    n = min(len(r) for r in runs)
    ax.plot(xs[:n], [statistics.fmean(r[i] for r in runs) for i in range(n)], style,
            color=color, linewidth=1.6, label=label)


def _t_band(ax, band: dict[str, list[float]], color: str, label: str, style: str) -> None:
    """He et al.'s Fig. 6 curve: the mean training error over seeds as a line, the 95% t
    interval of that mean as a band (computed by the task: learning.error_band)."""
    ax.plot(band["steps"], band["mean"], style, color=color, linewidth=1.6, label=label)
    if band["low"] != band["high"]:
        ax.fill_between(band["steps"], band["low"], band["high"], color=color, alpha=0.18,
                        linewidth=0)


def _log10(norm: float, results: dict[str, Any]) -> float:
    """log10 of a gradient norm, a norm of exactly 0 (the vanishing case) read as the floor the
    task recorded (`grad_floor`: float32's smallest positive value; see the task's
    learning.GRAD_FLOOR). Results from before it was recorded hold no zero norms: any positive
    floor reads them the same."""
    return math.log10(max(norm, results.get("grad_floor") or math.ulp(0.0)))


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
            style = "--" if r["setting"]["model"].startswith("plain") else "-"
            curves = [c for c in r.get("curves") or [] if c]
            if r.get("curve_band"):
                _t_band(ax_err, r["curve_band"], color, r["label"], style)
            elif curves:
                steps = [p[0] for p in curves[0]]
                _band(ax_err, steps, [[100 * (1 - p[1]) for p in c if p[1] is not None]
                                      for c in curves], color, r["label"], style)
            for key, marker in (("grad_init", "o"), ("grad_epoch1", "s")):
                norms = [g for g in r.get(key) or [] if g]
                if norms:
                    n = min(map(len, norms))
                    logs = [[_log10(g[j], results) for g in norms] for j in range(n)]
                    ax_grad.plot(range(1, n + 1), [10 ** statistics.fmean(v) for v in logs],
                                 style, color=color, marker=marker, markersize=2.5,
                                 linewidth=1, alpha=1 if key == "grad_epoch1" else 0.45,
                                 label=f"{r['label']} "
                                       f"{'init' if key == 'grad_init' else 'epoch 1'}")
        ax_err.set_xlabel("iterations")
        ax_err.set_ylabel("training error (%)")
        ax_err.set_title("training error: mean over seeds, band = its 95% t interval\n"
                         "dashed: plain, solid: ResNet", fontsize=10)
        ax_grad.set_xlabel("conv layer (input side → output side)")
        ax_grad.set_ylabel("gradient L2 norm (geometric mean over seeds)")
        ax_grad.set_yscale("log")
        ax_grad.set_title("per-layer gradient norm, one fixed batch\nfaint: at initialisation, "
                          "dark: after epoch 1", fontsize=10)
        for ax in (ax_err, ax_grad):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [r["label"] for r in rows]
        xs = list(range(len(rows)))
        ax.errorbar(xs, [r["test_mean"] for r in rows], yerr=[r["test_ci"] or 0 for r in rows],
                    fmt="o-" if name == "depth" else "o", capsize=4, label="test")
        for i, r in enumerate(rows):  # every seed, so that the spread is visible
            ax.plot([i] * len(r["test"]), r["test"], ".", color="C0", alpha=0.35)
        if all(r["train_mean"] is not None for r in rows):
            ax.plot(xs, [r["train_mean"] for r in rows], "s--" if name == "depth" else "s",
                    alpha=0.6, label="train (fixed sample, no augmentation)")
        ax.set_xticks(xs, labels, rotation=20 if name != "depth" else 0)
        ax.set_ylabel("accuracy (%), mean and 95% CI over seeds")
        ax.set_title(TITLES[name])
        ax.grid(alpha=0.3)
        ax.legend()
    try:
        fig.tight_layout()
        save_figure(fig, path, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path.name


def design_line(res: dict[str, Any]) -> str:
    """The design in one line: nets, data, length, seeds, budget."""
    if res.get("limit_per_class"):
        data = (f"the first {res['limit_per_class']} images per class of train and test "
                f"({_n(res.get('n_train'))} and {_n(res.get('n_test'))})")
    else:
        data = (f"{_n(res.get('n_train'))} training images ({res.get('train_per_class')} per "
                f"class, a fixed random sample) and all {_n(res.get('n_test'))} test images")
    if (res.get("classes") or 10) < 10:
        data += f" of the first {res['classes']} classes only"
    size = res.get("image_size") or 32
    budget = (f"; --budget {res['budget_minutes']:g} min buys seeds beyond "
              f"{res.get('min_seeds', 3)}" if res.get("budget_minutes") else "")
    schedule = _schedule(res.get("recipe") or {})
    return (f"Design: {res['note']}; {data} of {Path(res['data']).name} at {size}x{size}; "
            f"{res['epochs']:g} epoch{'s' if res['epochs'] != 1 else ''} at batch "
            f"{res.get('batch_size', '-')}, {schedule}; {res['seeds']} seed"
            f"{'s' if res['seeds'] != 1 else ''} per setting{budget}. Each trial is tested once "
            "after its last step; nothing is selected on the test set.")


def _schedule(recipe: dict[str, Any]) -> str:
    """The recipe's learning-rate schedule in words (recipes.Schedule, kind "linear")."""
    sched = recipe.get("schedule") or {}
    if sched.get("kind") == "linear" and sched.get("end", 0.0) == 1.0:
        return (f"a learning rate warmed up over the first {sched.get('warmup', 0):.0%} of the "
                "steps, then constant")
    return "one-cycle learning rate"


def _learning(r: dict[str, Any]) -> str:
    if r.get("plateau"):  # the residual study: the doubling test over the seeds
        return r["plateau"]["text"]
    shares = [s for s in r.get("plateau_share") or [] if s is not None]
    mark = f"{r['still_learning']} of {r['seeds']}" if r.get("still_learning") else "no"
    if not shares:
        return mark
    return f"{mark} ({statistics.median(shares):.2f})"


def experiment_part(res: dict[str, Any], root: Path, prefix: str) -> Part:
    """One experiment as a report part; `prefix` is its folder relative to `root`."""
    name = res["experiment"]
    part = Part(TITLES[name], verdict=verdict_text(res["verdict"]))
    part.paragraphs.append(f"The lab's claim: \u201c{res['claim']}\u201d")
    part.paragraphs.append(design_line(res))
    if res.get("scaled"):
        part.paragraphs.append(f"Scaled down: {res['scaled']}.")
    if name == "residual" and res.get("gradients"):
        part.paragraphs.append(f"The gradient part: {verdict_text(res['gradients'])}")
    excluded = res.get("excluded") or []
    if excluded:
        part.paragraphs.append(f"Left out of the comparison (cut short by the budget): "
                               f"{'; '.join(excluded)}.")
    rule = res.get("plateau_rule") or {}
    doubling = any(r.get("plateau") for r in res["rows"])
    rows = [[r["label"], interval(r["test_mean"], r.get("test_ci")),
             interval(r["train_mean"], r.get("train_ci")), r["seeds"], _learning(r),
             _n(r["params"]), "-" if r["macs"] is None else f"{r['macs'] / 1e6:.1f} M",
             ", ".join(map(str, r["steps"])) or "-",
             "-" if r["seconds"] is None else f"{r['seconds']:.0f}"] for r in res["rows"]]
    part.tables.append(Table(
        ["setting", "test accuracy", "train accuracy", "seeds", "still learning", "parameters",
         "MACs", "iterations", "train s"], rows,
        "mean ± half-width of the 95% confidence interval over seeds (t distribution; no ± for "
        f"one seed); train accuracy: on {res.get('train_eval', 1000):,} training images without "
        "augmentation, after the last step; still learning: trials whose training loss fell by "
        f"more than {rule.get('share', 0.15):.0%} of its total drop in the last quarter of the "
        "steps, or whose train accuracy was within "
        f"{100 * rule.get('chance_margin', 0.1):.0f} points of chance (the median share in "
        "brackets)" if not doubling else "mean ± half-width of the 95% confidence interval "
        "over seeds (t distribution; no ± for one seed); train accuracy: on "
        f"{res.get('train_eval', 1000):,} training images without augmentation, after the "
        "last step; still learning: the doubling test over the seeds, the training error at "
        "the last step against at half the steps (the change and its 95% paired t "
        "interval); plateaued when the change reaches zero, at chance within "
        f"{100 * rule.get('chance_margin', 0.1):.0f} points of it",
        numeric=(1, 2, 3, 5, 6, 7, 8)))
    if name == "depth":
        part.tables.append(_depth_gains(res))
    if name == "residual":
        part.tables.append(_gradient_table(res))
    fig = figure(root, f"{prefix}{res.get('plot', '')}", TITLES[name])
    if fig:
        part.figures.append(fig)
    return part


def _depth_gains(res: dict[str, Any]) -> Table:
    rows = [[f"{g['from']} → {g['to']}"] + (["-", "-", "-"] if "per_layer" not in g else [
        f"{g['per_layer']:+.2f}", f"{g['low']:+.2f} to {g['high']:+.2f}",
        {1: "gain", -1: "loss", 0: "within the noise"}[g["sign"]]])
        for g in res.get("gains") or []]
    return Table(["layers", "test accuracy gain per added layer (points)", "95% CI", "reading"],
                 rows, "Welch intervals over seeds of the difference between neighbouring "
                 "depths, divided by the layers added", numeric=(1, 2))


def _gradient_table(res: dict[str, Any]) -> Table:
    rows = []
    for r in res["rows"]:
        for key, when in (("grad_init", "initialisation"), ("grad_epoch1", "after epoch 1")):
            norms = [g for g in r.get(key) or [] if g]
            if not norms:
                continue

            def stat(values: list[float]) -> str:
                gm = 10 ** statistics.fmean(_log10(v, res) for v in values)
                return (f"{gm:.3g}" if len(values) < 2
                        else f"{gm:.3g} ({min(values):.3g}–{max(values):.3g})")

            rows.append([r["label"], when, stat([g[0] for g in norms]),
                         stat([g[len(g) // 2] for g in norms]), stat([g[-1] for g in norms]),
                         stat([min(g) for g in norms]), len(norms)])
    return Table(["net", "when", "first conv", "middle conv", "last conv", "smallest layer",
                  "seeds"], rows,
                 f"gradient L2 norm of conv weights on one fixed batch of "
                 f"{res.get('grad_batch', 128)} training images (the same for every net): "
                 "geometric mean over seeds, their range in brackets", numeric=(2, 3, 4, 5, 6))


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    env = run.read_json("environment.json") if run.file("environment.json").is_file() else {}
    parts = [experiment_part(res, run.path, f"{name}/")
             for name, res in results["experiments"].items()]
    intro = ["Lab B's claims about choosing a CNN's parameters and about ResNet, each checked "
             "by a grid of cnnlab train runs over several seeds (cnnlab experiment). A verdict "
             "says \u201cheld\u201d or \u201cdid not hold\u201d only when the 95% interval of "
             "the difference it rests on excludes zero; otherwise \u201cundecided\u201d."]
    return write(run.path, "cnnlab experiment", intro, parts, env)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every experiment's settings, one row each, numbers unformatted: what `cnnlab experiment`
    prints per experiment and the API's table (column "experiment" tells them apart)."""
    return [{"experiment": name, "setting": r["label"], "test_mean": r["test_mean"],
             "test_ci": r.get("test_ci"), "train_mean": r["train_mean"],
             "train_ci": r.get("train_ci"), "seeds": r["seeds"],
             "still_learning": r.get("still_learning"), "params": r["params"],
             # the residual study: the doubling test's status over the seeds
             "plateau": (r.get("plateau") or {}).get("status")}
            for name, res in results["experiments"].items() for r in res["rows"]]
