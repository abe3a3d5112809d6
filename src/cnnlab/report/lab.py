"""The `cnnlab lab` report: one section per step, rendered from the steps' run artifacts.

Reads only `lab.json`, each step's `results.json` (and the files it names: plots, completions)
and `lab_figures.yaml`, where the labs' own questions and figures are quoted with their source.
No number here is typed by hand. Every section has the lab's question, the method in a few
sentences, cnnlab's numbers and figures, and the lab's own figure beside them where one exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.analysis.stats import (
    TESTED_FALSE_VERDICT_RATE,
    TESTED_FALSE_VERDICT_RATE_UNEQUAL,
    TESTED_SIMULATIONS,
)
from cnnlab.report.blocks import Figure, Table, environment_rows, figure
from cnnlab.runs import RunDir

FIGURES = Path(__file__).with_name("lab_figures.yaml")


@dataclass
class Answer:
    """One of the labs' questions answered in a line at the top of the report: the answer (a
    verdict or a measured number), the interval it rests on, and the section that shows how."""

    question: str
    answer: str
    interval: str = ""
    section: str = ""  # the step's name: the section's anchor
    minutes: float | None = None  # the step's wall time in this lab


@dataclass
class Section:
    name: str
    title: str
    status: str  # done / skipped / failed / not run
    reason: str = ""
    lab: str = ""
    question: str = ""
    method: str = ""
    command: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    preformatted: list[str] = field(default_factory=list)  # text drawings
    notes: list[str] = field(default_factory=list)
    # Sub-sections, one per question the step answers (the experiments' claims): each with its
    # verdict, sentences, tables and figures (report/study.py's Part).
    parts: list[Any] = field(default_factory=list)
    # Small pictures side by side (the class-activation maps of the evaluate step's mistakes).
    gallery: list[Figure] = field(default_factory=list)
    # The questions this step answers, in a line each (the report opens with them).
    answers: list[Answer] = field(default_factory=list)


def _n(v: int | float | None) -> str:
    """Thousands separators; '-' for none or zero, so layers without weights read as such."""
    return "-" if not v else f"{v:,}"


def _seconds(v: float) -> str:
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _si(n: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3f} {prefix}"
    return f"{n:.0f}"


# ------------------------------------------------------------------------- step sections


def _concepts(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    m = r["models"][0]
    rows = []
    for layer in m.get("sharing", []):
        conv, local, dense = layer["connectivity"]
        shape = "x".join(map(str, layer["input_shape"])) + " -> " + "x".join(
            map(str, layer["output_shape"]))
        rows.append([layer["name"], shape, _n(conv["params"]), _n(local["params"]),
                     _n(dense["params"]), f"{local['params_vs_conv']:,.0f}x",
                     f"{dense['params_vs_conv']:,.0f}x"])
    s.tables.append(Table(
        ["layer", "input -> output", "convolution", "locally-connected", "dense", "local/conv",
         "dense/conv"], rows,
        f"{m['label']}: parameters of each conv layer with and without sharing and locality "
        "(the same MACs for conv and locally-connected)", numeric=(2, 3, 4, 5, 6)))
    s.tables.append(_block_shares(m))
    demo = r.get("shift_demo")
    if demo:
        dy, dx = demo["shift"]
        s.tables.append(Table(
            ["layer", "maps moved by the shift", "after shifting back", "largest difference"],
            [[d["kind"], f"{d['unaligned']:.3g}", f"{d['difference']:.2g}",
              f"{d['max_difference']:.2g}"] for d in demo["layers"]],
            f"the photo shifted {dy} pixels down and {dx} right; mean |difference| of the "
            f"{demo['channels']} maps of a {demo['kernel']}x{demo['kernel']} layer, relative to "
            f"the maps' mean size, at least {demo['margin']} pixels from the borders: only the "
            "convolution's maps come back unchanged (weight sharing)", numeric=(1, 2, 3)))
        fig = figure(lab_dir, f"{step_dir}/{demo['figure']}",
                     "conv, locally-connected and dense maps of a photo and of its shifted copy")
        if fig:
            s.figures.append(fig)
    _features(s, lab_dir, step_dir)


def _features(s: Section, lab_dir: Path, step_dir: str) -> None:
    """The pretrained net's first-layer filters and feature maps per stage (features.json,
    written by the concepts step with `cnnlab explain --filters --maps`)."""
    path = lab_dir / step_dir / "features.json"
    if not path.is_file():
        return
    f = json.loads(path.read_text(encoding="utf-8"))
    if f.get("reason"):
        s.notes.append(f"No filter or feature-map figure: {f['reason']}.")
    filters = f.get("filters")
    if filters:
        n, c, *k = filters["shape"]
        fig = figure(lab_dir, f"{step_dir}/{filters['figure']}",
                     f"{f['model']}: the {n} filters of its first convolution ({filters['layer']}, "
                     f"{c} x {'x'.join(map(str, k))} each), what the first layer looks for")
        if fig:
            s.figures.append(fig)
    maps = f.get("maps")
    if maps:
        s.tables.append(Table(
            ["stage", "channels", "map size", "values per channel"],
            [[st["name"], st["shape"][0], f"{st['shape'][1]} x {st['shape'][2]}",
              _n(st["shape"][1] * st["shape"][2])] for st in maps["stages"]],
            f"{f['model']} on {Path(maps['file']).name}: after each stage, resolution falls and "
            "channels rise (convolutions with stride and pooling shrink the maps)",
            numeric=(1, 3)))
        fig = figure(lab_dir, f"{step_dir}/{maps['figure']}",
                     f"{f['model']}: the most active channels after each stage, each map's size "
                     "written on it")
        if fig:
            s.figures.append(fig)


def _block_shares(m: dict) -> Table:
    """Parameters and MACs per kind of layer: where a CNN's weights and arithmetic live."""
    kinds: dict[str, list[int]] = {}
    for layer in m["layers"]:
        k = kinds.setdefault(layer["type"], [0, 0])
        k[0] += layer["params"]
        k[1] += layer["macs"]
    total_p, total_m = max(m["total_params"], 1), max(m["macs"], 1)
    rows = [[kind, _n(p), f"{100 * p / total_p:.1f}%", _si(macs), f"{100 * macs / total_m:.1f}%"]
            for kind, (p, macs) in sorted(kinds.items(), key=lambda kv: -kv[1][0])
            if p or macs]
    return Table(["layer type", "parameters", "share", "MACs", "share"], rows,
                 f"{m['label']}: the building blocks' shares of parameters and arithmetic",
                 numeric=(1, 2, 3, 4))


RESIDUAL_BLOCK = """\
x ─┬─► conv 3x3 ─► BN ─► ReLU ─► conv 3x3 ─► BN ─► F(x) ─► (+) ─► ReLU ─► H(x) = F(x) + x
   └──────────────────────── identity shortcut: x ────────────┘
The gradient of H with respect to x is F'(x) + 1: the shortcut carries it back unattenuated."""


def _alexnet(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    paper = r["models"][0]
    s.tables.append(Table(
        ["layer", "type", "output", "weights", "biases", "params", "MACs"],
        [[la["name"], la["type"], "x".join(map(str, la["output_shape"])), _n(la["weights"]),
          _n(la["biases"]), _n(la["params"]), _n(la["macs"])]
         for la in paper["layers"] if la["params"] or la["type"].endswith("Pool2d")],
        f"{paper['label']} (input {'x'.join(map(str, paper['input_shape']))}): layers with "
        f"parameters; total {paper['total_params']:,}", numeric=(3, 4, 5, 6)))
    s.tables.append(Table(
        ["model", "depth", "block", "blocks per stage", "parameters", "MACs"],
        [[m["label"], m["summary"]["depth"], m["summary"]["block"],
          "-".join(map(str, m["summary"]["stages"])) or "-", _n(m["total_params"]),
          _si(m["macs"])] for m in r["models"]],
        "AlexNet as published, torchvision's AlexNet, and the ResNet family (depth counts the "
        "weighted layers on the main path, He et al. 2015)", numeric=(1, 4, 5)))
    s.preformatted.append(RESIDUAL_BLOCK)
    s.notes.append(f"cnnlab: AlexNet (groups=1) has {paper['total_params']:,} parameters.")


def _alexnet_groups(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    m = r["models"][0]
    s.tables.append(Table(
        ["layer", "output", "params", "MACs"],
        [[la["name"], "x".join(map(str, la["output_shape"])), _n(la["params"]), _n(la["macs"])]
         for la in m["layers"] if la["params"]],
        f"{m['label']}: total {m['total_params']:,} parameters", numeric=(2, 3)))


def _evaluate(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    from cnnlab.report.evaluate import summary_rows

    s.tables.append(Table(
        ["model", "parameters", "top-1 error", "top-5 error", "images/s", "scored"],
        [[m["model"], _n(m["params"]), _pct(m["top1_error"]), _pct(m["top5_error"]),
          "-" if m["images_per_second"] is None else f"{m['images_per_second']:.1f}",
          m["scored"]] for m in summary_rows(r)],
        f"{r['n_labelled']} labelled photos; one photo is {100 / max(r['n_labelled'], 1):.1f} "
        "points of error", numeric=(1, 2, 3, 4, 5)))
    s.notes.append(f"Per-image predictions and the photos some model gets wrong: "
                   f"{step_dir}/report.html")
    _mistake_maps(s, r, lab_dir, step_dir)
    scored = [m for m in summary_rows(r) if m["top1_error"] is not None]
    if scored:
        from cnnlab.analysis.binomial import wilson

        best = min(scored, key=lambda m: m["top1_error"])
        n = best["scored"]
        low, high = wilson(round(best["top1_error"] * n / 100), n)
        s.answers.append(Answer(
            "How often do pretrained ImageNet CNNs get a photo wrong?",
            f"{best['model']}: {_pct(best['top1_error'])} top-1 error, "
            f"{_pct(best['top5_error'])} top-5, the best of {len(scored)} on {n} photos",
            f"top-1 Wilson 95% CI {100 * low:.1f}% to {100 * high:.1f}%"))


LAB_CAMS_SHOWN = 6  # mistakes whose maps the lab report shows; the step's report has the rest


def _mistake_maps(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    """A handful of the photos the nets got wrong: each model's map of the class it predicted
    beside its map of the true class (Grad-CAM, drawn by the evaluate step)."""
    ex = r.get("explanations")
    if not ex or not ex.get("cams"):
        return
    shown = ex["cams"][:LAB_CAMS_SHOWN]
    for c in shown:
        name = Path(c["file"]).name
        for side, word in (("predicted", "predicted"), ("true", "true class")):
            fig = figure(lab_dir, f"{step_dir}/{c[side]['cam']}",
                         f"{name}, {c['model']}: {word} {c[side]['class']}")
            if fig:
                s.gallery.append(fig)
    limit = ex.get("limit")
    s.notes.append(
        f"Where the nets looked when they were wrong: {ex['method_name']} maps of the class "
        f"each model predicted and of the true class, for {len(shown)} of its mistakes"
        + (f" (the step drew each model's first {limit})" if limit is not None else "")
        + "; red where the evidence for the class lies. All of them: "
        f"{step_dir}/report.html")


def _charrnn(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    comp_file = lab_dir / step_dir / "completions.json"
    if comp_file.is_file():
        comps = json.loads(comp_file.read_text(encoding="utf-8"))
        s.tables.append(Table(
            ["prefix", "completion", "probability"],
            [[c["prefix"], c["completion"], f"{c['probability']:.4f}"] for c in comps],
            f"greedy completions after {r['steps']} steps ({r['parameters']:,} parameters, "
            f"{r['train_seconds']:.1f} s)", numeric=(2,)))
        s.notes.append("cnnlab's completions of h g s e t: "
                       + " ".join(c["completion"] for c in comps))
    fig = figure(lab_dir, f"{step_dir}/loss_curve.png", "training loss")
    if fig:
        s.figures.append(fig)


def _finetune(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    from cnnlab.report.finetune import interval, summary_rows, validation

    rows = summary_rows(r)
    s.tables.append(Table(
        ["strategy", "epochs", "train accuracy", "validation accuracy", "test top-1 error",
         "test top-k error", "seconds"],
        [[row["strategy"], "L-BFGS" if row.get("head_fit") == "lbfgs" else row["epochs"],
          _pct(row["train_accuracy"]), validation(row),
          _pct(row["top1_error"]) + interval(row.get("top1_interval")),
          "-" if row["topk_error"] is None else f"{_pct(row['topk_error'])} (k={row['top_k']})",
          _seconds(row["seconds"])] for row in rows],
        f"{r['backbone']} on {Path(r['data']).name}: both strategies on the same split; "
        f"{rows[0]['n_test']} test photos (one is {100 / max(rows[0]['n_test'], 1):.1f} "
        "points; the top-1 error's Wilson 95% interval in brackets)",
        numeric=(1, 2, 3, 4, 5, 6)))
    for row in rows:
        # A strategy's own results.json says whether its backbone features came from the cache
        # (then its seconds leave out the backbone's pass over every photo).
        sub = lab_dir / step_dir / row["strategy"] / "results.json"
        cache = (json.loads(sub.read_text(encoding="utf-8")).get("feature_cache") or {}
                 if sub.is_file() else {})
        if cache.get("from_cache"):
            s.notes.append(f"{row['strategy']}: the backbone's features of {cache['from_cache']} "
                           "photos came from the feature cache of an earlier run, so its "
                           "seconds are the head's training only.")
    errors = "; ".join(f"{row['strategy']} {_pct(row['top1_error'])}" for row in rows
                       if row["top1_error"] is not None)
    if errors:
        s.answers.append(Answer(
            "Transfer learning: freeze the pretrained body, or fine-tune all of it?",
            f"top-1 test error on {rows[0]['n_test']} held-out photos: {errors}",
            "; ".join(f"{row['strategy']}{interval(row.get('top1_interval'))}" for row in rows
                      if row.get("top1_interval"))))
    for row in rows:
        fig = figure(lab_dir, f"{step_dir}/{row['strategy']}/curves.png",
                     f"{row['strategy']}: loss and accuracy per epoch, train vs validation")
        if fig:
            s.figures.append(fig)


CHANCE_FACTOR = 2.0  # below twice chance, a run has not started to learn
# The lab's own recipe, recorded (not run by the lab's train step): its loop transcribed
# (benchmarks/cifar_time_to_accuracy.py), simple-cnn with Adam 1e-3, batch 32, 5 epochs,
# fp32, one seed, on the 2-core AMD EPYC, 2026-11-27: 72.26% in 193.6 s (BENCHMARKS.md, "Time
# to accuracy"). Its ResNet-18 (Adam 0.01, batch 16, 5 epochs: 15,625 steps) was not measured.
LAB_RECIPE_REFERENCE = (
    "The lab's own recipe as cnnlab ran it, for reference (recorded in BENCHMARKS.md, not run "
    "by this step): the plain CNN with Adam 1e-3, batch 32, 5 epochs reached 72.26% test "
    "accuracy (one seed, 193.6 s on a 2-core AMD EPYC, the lab's loop transcribed); the lab's "
    "ResNet-18 recipe (Adam 0.01, batch 16, 5 epochs, 15,625 steps) has not been measured. "
    "The labs compared the nets at 5 epochs each (their own figures: the table above); this "
    "step compares them at equal minutes.")
RESNET_CLAIM_PART = "ResNet-18 minus the plain CNN"


def _train(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    from cnnlab.report.train import PM, accuracy_text

    budget = r["models"][0].get("budget_seconds")
    s.tables.append(Table(
        ["model", "recipe", "batch", "lr", "test accuracy (± 95% CI)", "seeds", "parameters",
         "MACs", "steps (mean)", "epochs trained", "train s", "images/s"],
        [[m["model"] + (f" ({m['shape']} width)" if m.get("shape") else ""), m["recipe"],
          m.get("batch_size") or "-",
          "-" if m.get("lr") is None else f"{m['lr']:.3g}",
          accuracy_text(r, m), m["seeds"],
          _n(m["params"]), _si(m["macs"] or 0),
          "-" if m.get("steps") is None else f"{m['steps']:.0f}",
          f"{m.get('epochs_trained', m['epochs']):.2f}", f"{m['train_seconds']:.0f}",
          f"{m['images_per_second']:.0f}"] for m in r["models"]],
        f"{r['n_train']:,} training and {r['n_test']:,} test images; the same recipe for every "
        "model, its learning rate set by the kind of network (recipes.py) and, under a "
        "budget, batch and learning rate by the steps the minutes buy (budget.py); "
        + (f"the same budget for every model and seed: {budget:.0f} s of training and test, "
           "the steps fitted to it by timing a few on this machine; " if budget else "")
        + f"test accuracy: {PM}",
        numeric=(2, 3, 4, 5, 6, 7, 8, 9, 10, 11)))
    fig = figure(lab_dir, f"{step_dir}/curves.png", "train loss and test accuracy per epoch")
    if fig:
        s.figures.append(fig)
    from cnnlab.report.train import budget_lines

    s.notes.extend(budget_lines(r))  # the budget, the calibrated shape, what more would buy
    best = max(r["models"], key=lambda m: m["test_accuracy_mean"])
    s.notes.append(f"cnnlab: best here {best['model']}, {best['test_accuracy_mean']:.1f}% test "
                   f"accuracy in {best['train_seconds']:.0f} s of training.")
    _train_verdict(s, r, budget)
    s.notes.append(LAB_RECIPE_REFERENCE)


def too_short(runs: list[dict[str, Any]], chance: float) -> list[dict[str, Any]]:
    """The runs too short to say anything of their network: still near chance (below
    CHANCE_FACTOR x chance, in %) after fewer optimiser steps than a budget's batch rule
    guarantees (budget.MIN_BUDGET_STEPS). A run near chance after that many steps did not learn
    in its minutes: that is a result about the network, not about the run's length."""
    from cnnlab.budget import MIN_BUDGET_STEPS

    return [run for run in runs if 100 * run["test_accuracy"] < CHANCE_FACTOR * chance
            and (run.get("steps") or 0) < MIN_BUDGET_STEPS]


def _short_text(short: list[dict[str, Any]], chance: float) -> str:
    """'resnet18 is still near chance (10.0% in seed 1; chance 10%) after 9 optimizer steps'
    per model, from the short runs."""
    parts = []
    for model in dict.fromkeys(run["model"] for run in short):
        mine = [run for run in short if run["model"] == model]
        accs = ", ".join(f"{100 * run['test_accuracy']:.1f}%"
                         + (f" in seed {run['seed']}" if "seed" in run else "") for run in mine)
        steps = "/".join(dict.fromkeys(f"{run.get('steps') or 0:.0f}" for run in mine))
        parts.append(f"{model} is still near chance ({accs}; chance {chance:.0f}%) after "
                     f"{steps} optimizer steps")
    return "; ".join(parts)


def _train_verdict(s: Section, r: dict, budget: float | None) -> None:
    """Lab B's question (3), "does ResNet-18 beat the plain CNN?", by the one rule
    (stats.decide: one directional comparison, Welch over seeds, held / did not hold at
    one-sided 2.5% each), "too short to decide" only when some run really was (`too_short`)."""
    from cnnlab.analysis import stats

    # Each run's steps (results.json's runs have them; else the model's mean steps).
    mean_steps = {m["model"]: m.get("steps") for m in r["models"]}
    runs = [{**run, "steps": run.get("steps", mean_steps.get(run["model"]))}
            for run in r.get("runs", []) if run["model"] in ("resnet18", "simple-cnn")]
    acc: dict[str, list[float]] = {}
    for run in runs:
        acc.setdefault(run["model"], []).append(100 * run["test_accuracy"])
    if set(acc) != {"resnet18", "simple-cnn"}:
        return
    per_seed = "; ".join(
        f"{m}: " + ", ".join(f"{100 * run['test_accuracy']:.2f}%"
                            + (f" ({run['steps']} steps at batch {run['batch_size']})"
                               if run.get("steps") is not None and run.get("batch_size")
                               else "")
                            for run in runs if run["model"] == m)
        for m in ("resnet18", "simple-cnn"))
    s.notes.append(f"Per seed: {per_seed}.")
    chance = 100 / max(1, len(r.get("classes") or []) or 10)
    question = "Does ResNet-18 beat the plain CNN on CIFAR-10 (the same minutes each)?"
    short = too_short(runs, chance)
    if short:
        names = list(dict.fromkeys(run["model"] for run in short))
        s.answers.append(Answer(question, "too short to decide: " + ", ".join(names)
                                + " still near chance"))
        s.notes.append(
            "ResNet-18 against the plain CNN: too short to decide. " + _short_text(short, chance)
            + (f" in {budget:.0f} s" if budget else "")
            + ": it had not started to learn, so the gap measures the run's length, not the "
              "architecture. More minutes (cnnlab lab --budget) would answer it.")
        return
    claim = stats.Claim("resnet18 beats simple-cnn", (stats.Comparison.diff(
        RESNET_CLAIM_PART, "resnet18", "simple-cnn", stats.GREATER),))
    verdict = stats.decide(claim, acc)
    gap = verdict.intervals.get(RESNET_CLAIM_PART)
    word = {stats.HELD: "ResNet-18 is better", stats.NOT_HELD: "the plain CNN is better",
            stats.UNDECIDED: "undecided: the interval holds zero",
            stats.NO_VERDICT: ("no verdict: one seed each" if gap is None else
                               "no verdict: every seed gave the same accuracy")}[verdict.status]
    if gap is None:
        s.notes.append("ResNet-18 against the plain CNN: one seed each, no interval.")
        s.answers.append(Answer(question, word))
        return
    s.answers.append(Answer(question, word, f"{RESNET_CLAIM_PART} {gap.text()}"))
    s.notes.append(f"{RESNET_CLAIM_PART}: {gap.text()} over "
                   f"{' and '.join(map(str, gap.n))} seeds: {word}"
                   + (f", at an equal budget of {budget:.0f} s" if budget else "")
                   + f" ({verdict.rule}).")


def _experiments(s: Section, r: dict, lab_dir: Path, step_dir: str) -> None:
    from cnnlab.report.experiment import experiment_part

    for name, res in r["experiments"].items():
        s.parts.append(experiment_part(res, lab_dir, f"{step_dir}/{name}/"))
        for key, what in (("verdict", res["claim"]), ("gradients", GRADIENT_QUESTION)):
            v = res.get(key)
            if v:
                s.answers.append(Answer(f"Lab B: \u201c{what}\u201d", v["status"],
                                        _first_interval(v)))
    s.notes.append(f"Per-trial runs and the full report: {step_dir}/report.html")


# The verdicts' rule and its tested error rate, cited beside the answers (analysis/stats.py).
RULE_NOTE = (f"analysis/stats.py: each claim's comparisons named in advance, several adjusted "
             f"by Holm or required together, no verdict at zero spread; tested to at most "
             f"{100 * TESTED_FALSE_VERDICT_RATE:.0f}% false verdicts with no true effect "
             f"({100 * TESTED_FALSE_VERDICT_RATE_UNEQUAL:.0f}% where the settings' spreads "
             f"differ up to 3x) over {TESTED_SIMULATIONS:,} simulated experiments per claim "
             "shape")
GRADIENT_QUESTION = ("residual connections counter the derivative going to zero (the smallest "
                     "layer gradient of a deep net)")


def _first_interval(v: dict[str, Any]) -> str:
    """The first interval a verdict rests on, as '+3.2 (95% CI +1.1 to +5.3)'."""
    for name, iv in (v.get("intervals") or {}).items():
        if iv.get("low") is not None:
            pct = f"{100 * iv.get('level', 0.95):.3g}%"
            return (f"{name.replace('_', ' ')}: {iv['estimate']:+.2f} ({pct} CI "
                    f"{iv['low']:+.2f} to {iv['high']:+.2f})")
    return ""


def answers(sections: list[Section], state: dict[str, Any]) -> list[Answer]:
    """Every section's answers, in the report's order, with the minutes its step took."""
    out = []
    for sec in sections:
        seconds = state["steps"].get(sec.name, {}).get("seconds")
        for a in sec.answers:
            a.section = sec.name
            a.minutes = None if seconds is None else seconds / 60
            out.append(a)
    return out


SECTION_BUILDERS: dict[str, Callable[[Section, dict, Path, str], None]] = {
    "concepts": _concepts,
    "alexnet": _alexnet,
    "alexnet-groups": _alexnet_groups,
    "evaluate": _evaluate,
    "finetune": _finetune,
    "train": _train,
    "charrnn": _charrnn,
    "experiments": _experiments,
}


def step_precisions(lab_dir: Path, state: dict[str, Any]) -> str:
    """Each step's precision and why, from the environment.json files of its runs (a train
    step holds one per model and seed): "train: bf16 (auto: ...); finetune: fp32 (...)"."""
    parts = []
    for name, rec in state["steps"].items():
        seen: dict[str, None] = {}
        for path in sorted((lab_dir / rec.get("run_dir", name)).glob("**/environment.json")):
            env = json.loads(path.read_text(encoding="utf-8"))
            if env.get("precision"):
                seen[f"{env['precision']} ({env.get('precision_reason', '?')})"] = None
        if seen:
            parts.append(f"{name}: {', '.join(seen)}")
    return "; ".join(parts) or "-"


def build_sections(lab_dir: Path) -> tuple[list[Section], dict[str, Any]]:
    lab = RunDir.open(lab_dir)
    state = lab.read_json("lab.json")
    quoted = yaml.safe_load(FIGURES.read_text(encoding="utf-8"))
    sections = []
    for name, rec in state["steps"].items():
        q = quoted["steps"].get(name, {})
        s = Section(name=name, title=rec.get("title", name), status=rec.get("status", "?"),
                    reason=rec.get("reason", ""), lab=q.get("lab", ""),
                    question=q.get("question", ""), method=q.get("method", ""),
                    command=rec.get("command", ""))
        s.lab_figures = q.get("figures", [])  # type: ignore[attr-defined]
        results = lab_dir / rec.get("run_dir", name) / "results.json"
        if s.status == "done" and results.is_file() and name in SECTION_BUILDERS:
            r = RunDir(results.parent).read_json(results.name)  # damaged: one line
            SECTION_BUILDERS[name](s, r, lab_dir, rec.get("run_dir", name))
        sections.append(s)
    env = {}
    if lab.file("environment.json").is_file():
        env = lab.read_json("environment.json")
    env = environment_rows({**env, "precision": step_precisions(lab_dir, state)})
    return sections, {"environment": env, "source": quoted.get("source", ""),
                      "answers": answers(sections, state), "rule_note": RULE_NOTE,
                      "config": lab.read_json("config.json") if lab.file("config.json").is_file()
                      else {}}


def write_report(lab_dir: str | Path) -> tuple[Path, Path]:
    from cnnlab.report.env import render

    lab_dir = Path(lab_dir)
    sections, extra = build_sections(lab_dir)
    from cnnlab.report.env import trusted

    context = {"sections": sections, "trusted": trusted, **extra}
    run = RunDir(lab_dir)
    md = run.write_text("report.md", render("lab.md.j2", **context))
    html = run.write_text("report.html", render("lab.html.j2", **context))
    return md, html
