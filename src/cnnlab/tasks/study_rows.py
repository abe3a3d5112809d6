"""The trials of a study (tasks/study.py) as rows and as RUN/trials.csv, for sweep and experiment
reports."""

from __future__ import annotations

import csv
import io
from typing import Any

from cnnlab.runs import RunDir
from cnnlab.tasks.study import Study, retried_numbers


def trial_rows(study: Study) -> list[dict[str, Any]]:
    """One row per trial, in number order: settings, value, seconds, state and why."""
    rows = []
    trials = study.trials()
    retried = retried_numbers(trials)
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name, "params": dict(t.params),
            "value": t.value, "pruned": t.state.name == "PRUNED",
            "epochs": a.get("epochs"), "stopped": a.get("stopped"),
            "seconds": a.get("seconds"), "params_count": a.get("params_count"),
            "run_dir": a.get("run_dir"), "retry_of": a.get("retry_of"),
            "retried": bool(a.get("retried")) or t.number in retried,
            "surplus": bool(a.get("surplus")),
            "error": a.get("error"), "host": a.get("host"), "pid": a.get("pid"),
            "intermediate": {int(k): v for k, v in t.intermediate_values.items()},
            **{k: v for k, v in a.items() if k.startswith("metric_")},
        })
    return rows


def write_trials_csv(run_dir: RunDir, rows: list[dict[str, Any]]) -> None:
    """RUN/trials.csv: one line per trial, a column per setting."""
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", *names, "value", "epochs", "seconds", "pruned", "stopped",
                "retry_of", "note", "run_dir"])
    for r in rows:
        note = ("retried" if r["retried"] else "surplus" if r["surplus"] else r["error"] or "")
        w.writerow([r["number"], r["state"], *[r["params"].get(n, "") for n in names],
                    "" if r["value"] is None else f"{r['value']:.6f}", r["epochs"] or "",
                    r["seconds"] or "", r["pruned"], r["stopped"] or "",
                    "" if r["retry_of"] is None else r["retry_of"], note, r["run_dir"] or ""])
    run_dir.write_text("trials.csv", buf.getvalue())
