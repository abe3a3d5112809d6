"""The `cnnlab finetune` report: report.md and a self-contained report.html.

Reads only the run's artifacts: results.json, metrics.jsonl (curves), predictions.csv (the
confusion matrix and the misclassified test photos with their top-k), the photos it names and
the class-activation maps the run drew of each mistake (results.json "explanations", cams/).
Writes curves.png, confusion.png, thumbs/*.jpg (for report.md); report.html embeds the images
as data URIs, so it can be mailed on its own. Every name a user chose (class names, file names)
is escaped by the shared report environment (report/env.py): HTML and Markdown alike.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.report.blocks import data_uri
from cnnlab.report.curves import plot_confusion, plot_epoch_curves
from cnnlab.report.evaluate import CamPair, cam_pairs, thumbnail
from cnnlab.runs import RunDir

MAX_SHOWN_WRONG = 200  # misclassified photos listed in full; the rest are counted


@dataclass
class Guess:
    name: str
    probability: float  # 0..1


@dataclass
class TestPhoto:
    file: str
    true_class: str
    guesses: list[Guess] = field(default_factory=list)
    thumb_md: str | None = None
    thumb_uri: str | None = None
    cam: CamPair | None = None  # the maps of the predicted and the true class

    @property
    def correct(self) -> bool:
        return bool(self.guesses) and self.guesses[0].name == self.true_class


def read_predictions(path: Path) -> list[TestPhoto]:
    photos: dict[str, TestPhoto] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            photo = photos.setdefault(rec["file"], TestPhoto(rec["file"], rec["true_class"]))
            photo.guesses.append(Guess(rec["class"], float(rec["probability"])))
    return list(photos.values())


def confusion(photos: list[TestPhoto], classes: list[str]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for p in photos:
        matrix[index[p.true_class]][index[p.guesses[0].name]] += 1
    return matrix



def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def summary_row(strategy: str, r: dict[str, Any]) -> dict[str, Any]:
    """One strategy's run (its results.json) as a row of the summary table, numbers
    unformatted: what `--compare` stores as results.json "rows"
    (tasks/finetune/pipeline.run_compare)."""
    return {"strategy": strategy, "epochs": r["epochs_run"], "selected_epoch":
            r["selected_epoch"], "train_accuracy": r["train_accuracy"],
            "val_accuracy": r["val_accuracy"], "top1_error": r["top1_error"],
            "top1_interval": r.get("top1_interval"), "head_fit": r["settings"].get("head_fit"),
            "cv_accuracy": (r.get("head_fit") or {}).get("cv_accuracy"),
            "top_k": r["top_k"], "topk_error": r["topk_error"],
            "seconds": r["seconds"]["total"], "n_test": r["n_test"]}


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy (one, or freeze and finetune with --compare): the one table of
    `cnnlab finetune`, which its command line prints, the --compare report and the lab's
    finetune section render, and the API returns as `.table`."""
    return results.get("rows") or [summary_row(results["settings"]["strategy"], results)]


def validation(row: dict[str, Any]) -> str:
    """A row's validation accuracy; for a head fitted on the validation photos (L-BFGS), the
    cross-validated accuracy instead, marked, since its validation accuracy is a training
    score."""
    if row.get("head_fit") == "lbfgs" and row.get("cv_accuracy") is not None:
        return f"{pct(row['cv_accuracy'])} (CV)"
    return pct(row["val_accuracy"])


def interval(v: dict | None) -> str:
    """' (95% CI 9.2-40.5%, 5 of 24 wrong)': the Wilson interval results.json stores."""
    if not v:
        return ""
    return (f" (95% CI {v['low']:.1f}-{v['high']:.1f}%, {v['wrong']} of {v['n']} wrong)")


def _render(name: str, context: dict[str, Any]) -> str:
    from cnnlab.report.env import render, trusted

    return render(name, pct=pct, interval=interval, trusted=trusted, **context)


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    """curves.png, confusion.png, report.md and report.html of one finetune run."""
    run = RunDir.open(run_path)
    results: dict[str, Any] = run.read_json("results.json")
    records = run.read_metrics()
    classes = results["classes"]
    title = f"{results['backbone']}, {results['settings']['strategy']}"
    epochs = [r for r in records if r.get("kind") == "epoch"]
    # A head solved by L-BFGS has no epochs, hence no curves: its cross-validation table
    # (results.json "head_fit") takes their place.
    curves = (plot_epoch_curves(records, run.file("curves.png"), title=title,
                                selected_epoch=results.get("selected_epoch"))
              if epochs else None)
    photos = read_predictions(run.file("predictions.csv"))
    matrix = confusion(photos, classes)
    conf = plot_confusion(matrix, classes, run.file("confusion.png"),
                          title=f"test confusion matrix ({len(photos)} photos)")
    wrong = [p for p in photos if not p.correct]
    root = Path(results["data"])
    pairs = cam_pairs(run, results.get("explanations"))
    for p in wrong:
        p.cam = next(iter(pairs.get(p.file, [])), None)
    for n, p in enumerate(wrong[:MAX_SHOWN_WRONG]):
        data = thumbnail(root / p.file)
        if data is None:
            continue
        run.file("thumbs").mkdir(exist_ok=True)
        name = f"{n:05d}.jpg"
        (run.file("thumbs") / name).write_bytes(data)
        p.thumb_md = f"thumbs/{name}"
        p.thumb_uri = data_uri(data, "image/jpeg")
    context = {
        "r": results,
        "classes": classes,
        "matrix": matrix,
        "wrong": wrong[:MAX_SHOWN_WRONG],
        "n_wrong": len(wrong),
        "epochs": epochs,
        "curves_png": curves.name if curves else None,
        "confusion_png": conf.name,
        "curves_uri": data_uri(curves) if curves else None,
        "confusion_uri": data_uri(conf),
        "explanations": results.get("explanations"),
    }
    md_path = run.write_text("report.md", _render("finetune.md.j2", context))
    html_path = run.write_text("report.html", _render("finetune.html.j2", context))
    return md_path, html_path


def write_compare_report(run_path: str | Path) -> tuple[Path, Path]:
    """report.md / report.html of `--compare`: the side-by-side table and both runs' curves."""
    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    curves = {}
    for strategy, sub in results["runs"].items():
        png = Path(sub) / "curves.png"
        if png.is_file():
            curves[strategy] = {"md": f"{strategy}/curves.png", "uri": data_uri(png)}
    context = {"r": results, "rows": summary_rows(results), "curves": curves,
               "validation": validation}
    md_path = run.write_text("report.md", _render("finetune_compare.md.j2", context))
    html_path = run.write_text("report.html", _render("finetune_compare.html.j2", context))
    return md_path, html_path
