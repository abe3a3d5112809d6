"""The `cnnlab evaluate` report: report.md and a self-contained report.html.

Reads only the run's artifacts (results.json, predictions.csv) and the photos they name. For
every image that at least one model gets wrong (top-1), the report shows a thumbnail, the true
label (under the prefix rule: every class it accepts) and each model's top-5 with
probabilities, and for each model that got it wrong the class-activation maps (Grad-CAM) of the
class it predicted and of the true class, which the run drew (results.json "explanations",
cams/*.jpg). In report.html the thumbnails and maps are base64 data URIs, so the file can be
mailed or attached on its own; report.md links to thumbs/*.jpg and cams/*.jpg in the run
directory. File names and labels
are the user's: both reports escape them (report/env.py).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.report.blocks import data_uri
from cnnlab.report.env import environment, trusted
from cnnlab.runs import RunDir

THUMB_SIZE = 160  # pixels, longest side: big enough to recognise the object, ~5-10 kB each
TOP_SHOWN = 5  # classes listed per model and image


@dataclass
class Guess:
    class_index: int
    name: str
    probability: float  # 0..1


@dataclass
class CamPair:
    """One model's maps of one photo it got wrong: the class it predicted, and the true one."""

    model: str
    predicted: str  # class names
    true: str
    predicted_md: Any  # relative file (report.md), trusted: cnnlab names these files
    true_md: Any
    predicted_uri: Any  # data URIs (report.html), or None when the file is missing
    true_uri: Any


def cam_pairs(run: RunDir, explanations: dict[str, Any] | None) -> dict[str, list[CamPair]]:
    """results.json "explanations" -> file -> its CamPairs, in the order the models ran (a
    finetune run's records name no model: one network)."""
    out: dict[str, list[CamPair]] = {}
    for c in (explanations or {}).get("cams", []):
        uris = []
        for side in ("predicted", "true"):
            path = run.file(c[side]["cam"])
            uris.append(trusted(data_uri(path)) if path.is_file() else None)
        out.setdefault(c["file"], []).append(CamPair(
            c.get("model", ""), c["predicted"]["class"], c["true"]["class"],
            trusted(c["predicted"]["cam"]), trusted(c["true"]["cam"]), *uris))
    return out


@dataclass(frozen=True)
class Accepted:
    index: int
    name: str


@dataclass
class ImageRow:
    file: str
    true_label: str
    # The classes a right prediction may be: the one true class (synonym rule), or every class
    # whose line starts with the label (the lab's prefix rule).
    accepted: list[Accepted]
    # model name -> its top classes, most probable first
    guesses: dict[str, list[Guess]] = field(default_factory=dict)
    thumb_md: str | None = None  # relative path of the thumbnail file (report.md)
    thumb_uri: str | None = None  # data URI (report.html)
    cams: list[CamPair] = field(default_factory=list)  # one per model that got it wrong

    def accepts(self, class_index: int) -> bool:
        return any(a.index == class_index for a in self.accepted)

    def correct(self, model: str) -> bool:
        g = self.guesses.get(model)
        return bool(g) and self.accepts(g[0].class_index)


def _accepted(rec: dict[str, str]) -> list[Accepted]:
    if rec.get("accepted") is not None:  # prefix rule: "309 92", "bee; bee eater"
        indices = [int(i) for i in rec["accepted"].split()]
        names = rec["accepted_classes"].split("; ")
        return [Accepted(i, n) for i, n in zip(indices, names, strict=True)]
    return [Accepted(int(rec["true_index"]), rec["true_class"])]


def read_predictions(path: Path) -> list[ImageRow]:
    """predictions.csv -> one row per image, in file order."""
    rows: dict[str, ImageRow] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            row = rows.get(rec["file"])
            if row is None:
                row = rows[rec["file"]] = ImageRow(rec["file"], rec["true_label"], _accepted(rec))
            guesses = row.guesses.setdefault(rec["model"], [])
            if len(guesses) < TOP_SHOWN:
                guesses.append(
                    Guess(int(rec["class_index"]), rec["class"], float(rec["probability"]))
                )
    return list(rows.values())


def thumbnail(path: Path, size: int = THUMB_SIZE) -> bytes | None:
    """A small JPEG of the photo, upright; None when it cannot be read (it was scored, but the
    file may have changed since)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
            return buf.getvalue()
    except Exception:  # a report must not fail on one photo; the row says "no thumbnail"
        return None


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, numbers unformatted (errors in percent; images_per_second None when
    nothing was timed): the one table of `cnnlab evaluate`, which its command line prints, its
    report and the lab's evaluate section render, and the API returns as `.table`."""
    return [{"model": m["name"], "params": m["parameters"], "top1_error": m["top1_error"],
             "top5_error": m["top5_error"], "images_per_second": m["images_per_second"],
             "scored": m["n_images"], "unreadable": m["n_skipped"]} for m in results["models"]]


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    """Render report.md and report.html into the run directory; returns their paths."""
    run = RunDir.open(run_path)
    results: dict[str, Any] = run.read_json("results.json")
    images = read_predictions(run.file("predictions.csv"))
    models = [m["name"] for m in results["models"]]
    wrong = [row for row in images if any(not row.correct(m) for m in models if m in row.guesses)]
    root = Path(results["path"])
    pairs = cam_pairs(run, results.get("explanations"))
    for row in wrong:
        row.cams = pairs.get(row.file, [])
    thumbs = run.file("thumbs")
    for n, row in enumerate(wrong):
        data = thumbnail(root / row.file)
        if data is None:
            continue
        thumbs.mkdir(exist_ok=True)
        name = f"{n:05d}.jpg"
        (thumbs / name).write_bytes(data)
        row.thumb_md = f"thumbs/{name}"
        row.thumb_uri = trusted(data_uri(data, "image/jpeg"))
    context = {
        "results": results,
        "rows": summary_rows(results),
        "models": models,
        "wrong": wrong,
        "n_images": len(images),
        "pct": fmt_pct,
        "prefix": results.get("match") == "prefix",
        "explanations": results.get("explanations"),
    }
    env = environment()
    md = run.write_text("report.md", env.get_template("evaluate.md.j2").render(**context))
    html = run.write_text("report.html", env.get_template("evaluate.html.j2").render(**context))
    return md, html
