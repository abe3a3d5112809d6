"""The `cnnlab explain` report (and `cnnlab predict --explain`'s): report.md and a
self-contained report.html.

Reads only the run's artifacts: results.json and the PNGs it names (cams/, filters.png,
maps.png). In report.html every image is a data URI, so the file can be mailed on its own;
report.md links the PNGs beside it. File and class names are the user's (a finetune run's
classes are its folder names): both reports escape them (report/env.py), and no file the run
writes is named after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.report.blocks import data_uri
from cnnlab.report.env import environment, trusted
from cnnlab.runs import RunDir


def _uri(run: RunDir, rel: str | None):
    """A PNG the run wrote, as a data URI (code-built, so trusted), or None when it is missing."""
    if not rel or not run.file(rel).is_file():
        return None
    return trusted(data_uri(run.file(rel)))


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per photo and class explained, numbers unformatted (probability 0..1; cam, the
    map's file in the run directory, None where no map was drawn): what `cnnlab explain`
    prints photo by photo and the API returns as `.table`."""
    return [{"file": p["file"], "rank": g["rank"], "class": g["class"],
             "probability": g["probability"], "cam": g.get("cam")}
            for p in results["photos"] for g in p["top"]]


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    """Render report.md and report.html into the run directory; returns their paths."""
    run = RunDir.open(run_path)
    results: dict[str, Any] = run.read_json("results.json")
    # `cnnlab predict --explain` writes the same results.json, with a map of the top class only
    # (the other guesses' "cam" is null).
    uris = {guess["cam"]: _uri(run, guess["cam"])
            for photo in results["photos"] for guess in photo["top"] if guess.get("cam")}
    for part in ("filters", "maps"):
        if results.get(part):
            uris[results[part]["figure"]] = _uri(run, results[part]["figure"])
    context = {"results": results, "uri": uris, "command": results.get("command", "explain")}
    env = environment()
    md = run.write_text("report.md", env.get_template("explain.md.j2").render(**context))
    html = run.write_text("report.html", env.get_template("explain.html.j2").render(**context))
    return md, html
