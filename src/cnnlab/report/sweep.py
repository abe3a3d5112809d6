"""The `cnnlab sweep` report: the protocol, the best trial and its one test, every trial, the
plots; read from results.json and the PNGs in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.report.blocks import Table, figure
from cnnlab.report.study import Part, pct, write
from cnnlab.runs import RunDir


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def parts(results: dict[str, Any], root: Path, prefix: str = "") -> list[Part]:
    """The report's parts; `prefix` is the run directory's path relative to `root` (the lab
    report embeds a sweep from a sub-directory)."""
    counts = results["counts"]
    n_done = counts["COMPLETE"] + counts["PRUNED"]
    summary = Part("Protocol and result")
    summary.paragraphs.append(
        f"{n_done} trials ({counts['COMPLETE']} finished, {counts['PRUNED']} pruned"
        + (f", {counts['FAIL']} failed or retried" if counts["FAIL"] else "")
        + f") of Optuna's TPE sampler. Each trial trained on the training set less a "
        f"validation split of {100 * results['val_fraction']:.0f}% (stratified, seeded) and was "
        "scored on that split after every epoch; it never saw the test set.")
    final = results.get("final")
    if final:
        settings = ", ".join(f"{k} = {_fmt(v)}" for k, v in final["params"].items())
        summary.verdict = (
            f"Best: trial {final['trial']} ({settings}), validation accuracy "
            f"{pct(final['val_accuracy'])}. Re-trained on all {final['n_train']:,} training "
            f"images (train + validation) and tested once: {pct(final['test_accuracy'])} on "
            f"{final['n_test']:,} test images.")
        summary.paragraphs.append(f"The re-training run: {prefix}{final['run_dir']}/.")
    elif results.get("best"):
        summary.verdict = (f"Best: trial {results['best']['number']}, validation accuracy "
                           f"{pct(results['best']['value'])} (not re-trained or tested).")
    names = [p["name"] for p in results["space"]]
    space = Part("Search space")
    space.tables.append(Table(["setting", "values"], [
        [p["name"], ", ".join(map(_fmt, p["choices"])) if p["kind"] == "categorical" else
         f"{p['kind']} {_fmt(p['low'])} .. {_fmt(p['high'])}" + (" (log)" if p["log"] else "")]
        for p in results["space"]]))
    trials = Part("Every trial")
    rows = []
    for r in results["trials"]:
        note = ("retried as a new trial" if r["retried"] else "surplus" if r["surplus"]
                else r["error"] or (f"retry of {r['retry_of']}" if r["retry_of"] is not None
                                    else r["stopped"] or ""))
        rows.append([r["number"], r["state"].lower(), *[_fmt(r["params"].get(n)) for n in names],
                     pct(r["value"]), _fmt(r["epochs"]), _fmt(r["seconds"]), note])
    trials.tables.append(Table(["trial", "state", *names, "val accuracy", "epochs", "seconds",
                                "note"], rows, "val accuracy: on the validation split, after "
                               "the trial's last epoch (a pruned trial: its last reported)",
                               numeric=(0, len(names) + 2, len(names) + 3, len(names) + 4)))
    plots = Part("Plots")
    captions = {"history": "optimisation history (validation accuracy per trial, best so far)",
                "importances": "parameter importances (Optuna's PED-ANOVA)",
                "parallel": "parallel coordinates: each line a trial, coloured by accuracy"}
    for name, file in results.get("plots", {}).items():
        fig = figure(root, f"{prefix}{file}", captions.get(name, name))
        if fig:
            plots.figures.append(fig)
    if results.get("importances"):
        plots.tables.append(Table(["setting", "importance"], [
            [k, f"{v:.3f}"] for k, v in results["importances"].items()], numeric=(1,)))
    return [summary, space, trials, plots]


def write_report(run_path: str | Path) -> tuple[Path, Path]:
    run = RunDir.open(run_path)
    results = run.read_json("results.json")
    env = run.read_json("environment.json") if run.file("environment.json").is_file() else {}
    intro = [f"Study {results['study']} on {results['data']}; storage {results['storage']}."]
    return write(run.path, "cnnlab sweep", intro, parts(results, run.path), env)


def trial_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial, numbers unformatted (val_accuracy a fraction): what `cnnlab sweep`
    prints and the API's table; the searched settings are columns of their own."""
    names = [p["name"] for p in results["space"]]
    return [{"trial": r["number"], "state": r["state"].lower(), "retried": r["retried"],
             **{n: r["params"].get(n) for n in names}, "val_accuracy": r["value"],
             "epochs": r["epochs"], "seconds": r["seconds"]} for r in results["trials"]]
