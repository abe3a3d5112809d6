"""`cnnlab train --budget B`: CIFAR-10 test accuracy against the minutes given, beside the lab's
own recipe in the same run (issue: the best CIFAR-10 accuracy for the minutes you have).

    python benchmarks/cifar_budget.py                          # B = 0.5 1 2 lab 5 10, 3 seeds
    python benchmarks/cifar_budget.py --budgets 0.5 1 --seeds 0 --out /tmp/budget.json

First the lab's plain-CNN recipe, transcribed literally (`cifar_time_to_accuracy.run_lab`:
ImageFolder over the extracted JPEGs, batch 32, Adam 1e-3, 5 epochs): its accuracy and its
time (training loop + test pass; imports and extraction not counted, in its favour). "lab" in
--budgets stands for that time in minutes, so one point of the table is "cnnlab in the lab's
time". Then, for each budget and seed, `cnnlab train ZIP --budget B --seed S` as a fresh
process with everything else at its defaults (the calibration picks fast-cifar's width), timed
from the outside: "run s" is what the budget covers (calibration + training + final test, from
results.json), "process s" the whole command (start-up and the decode cache too).

Rows are appended to --out (JSON lines) as they finish, so a long run that is stopped keeps
what it measured. The CPU (lscpu model, bf16/AMX flags), threads and load are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_time_to_accuracy import ZIP, run_lab


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                  if ln.startswith("Model name")), "?")
    flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    return f"{model}; {', '.join(have) or 'no bf16/AMX flags'}"


def one_budget(minutes: float, seed: int, tmp: Path, extra: list[str]) -> dict:
    out = tmp / f"b{minutes:g}-s{seed}"
    cmd = [sys.executable, "-m", "cnnlab", "train", str(ZIP), "--budget", f"{minutes:.4g}",
           "--seed", str(seed), "--no-report", *extra, "--out", str(out), "-q"]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    res = json.loads((out / "results.json").read_text())
    r = res["runs"][0]
    calib = res.get("calibration") or [{}]
    spent = calib[0].get("seconds", 0.0)
    return {"budget_min": minutes, "seed": seed, "acc": r["test_accuracy"],
            "shape": r.get("shape"), "steps": r["steps"], "planned": r["planned_steps"],
            "epochs": r["steps"] * r["batch_size"] / r["n_train"], "tta": r["tta"],
            "calibration_s": spent, "run_s": spent + r["train_seconds"] + r["eval_seconds"],
            "process_s": wall, "stopped": r["stopped"], "load": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", default=["0.5", "1", "2", "lab", "5", "10"],
                   help="minutes; 'lab' = the lab recipe's measured time in this run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--skip-lab", type=float, metavar="SECONDS",
                   help="do not run the lab; take this as its time (and no accuracy)")
    p.add_argument("--train-args", default="", help="extra arguments for cnnlab train")
    p.add_argument("--out", default="budget-rows.jsonl", help="JSON lines, appended")
    args = p.parse_args()
    import torch

    print(f"cpu: {cpu()}; torch threads {torch.get_num_threads()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    out = Path(args.out)

    def keep(row: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)

    if args.skip_lab:
        lab = {"recipe": "lab", "acc": None, "train_s": args.skip_lab, "eval_s": 0.0}
    else:
        lab = run_lab(seed=0)
        keep({"lab": True, **lab, "load": os.getloadavg()[0]})
    lab_s = lab["train_s"] + lab["eval_s"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.budgets:
            minutes = lab_s / 60 if b == "lab" else float(b)
            for seed in args.seeds:
                rows.append(one_budget(minutes, seed, Path(tmp), args.train_args.split()))
                keep(rows[-1])

    lab_acc = lab["acc"]
    print(f"\nlab recipe: {100 * (lab_acc or 0):.2f}% in {lab_s:.1f} s\n")
    print("| budget | shape | epochs | test accuracy | run s (max) | process s (mean) | "
          "vs lab time |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for minutes in dict.fromkeys(r["budget_min"] for r in rows):
        mine = [r for r in rows if r["budget_min"] == minutes]
        accs = [100 * r["acc"] for r in mine]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        shapes = "/".join(sorted({r["shape"] or "-" for r in mine}))
        print(f"| {minutes:.2f} min | {shapes} | "
              f"{statistics.fmean(r['epochs'] for r in mine):.2f} | "
              f"{statistics.fmean(accs):.2f} ± {sd:.2f}% | {max(r['run_s'] for r in mine):.1f} | "
              f"{statistics.fmean(r['process_s'] for r in mine):.1f} | "
              f"1/{lab_s / statistics.fmean(r['process_s'] for r in mine):.1f} |")


if __name__ == "__main__":
    main()
