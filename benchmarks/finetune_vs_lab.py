"""The lab's transfer-learning loop against `cnnlab finetune --strategy freeze`, in one run.

    python benchmarks/finetune_vs_lab.py [--data DIR] [--epochs 30]

Both train the same new last layer on the same frozen EfficientNet-Lite0 for 30 epochs on the
same photos (hymenoptera: train/ 245 files, val/ 153), each in a fresh process, timed end to end
(process start to exit: imports, weights, every photo decoded, training, scoring). cnnlab runs
with a cold feature cache (an empty $CNNLAB_CACHE) and `--val-fraction 0`, so that it trains on
all of train/ as the lab does and its held-out set is val/, the lab's validation set: both
numbers are accuracy on the same 153 photos, neither chosen by them (the lab reports its last
epoch; cnnlab without a validation set keeps its last epoch).
Target (issue): >= 10x faster end to end, same or better accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_common import DATA_ROOT, PYTHON, load_average

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its workers, stdout). CPU time is the
    steadier figure on a shared machine: other people's work lengthens wall time, not it."""
    import os
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA_ROOT / "hymenoptera")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    print(f"data {args.data}, model {args.model}, {args.epochs} epochs; {load_average()}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [PYTHON, "-m", "cnnlab", "finetune", str(args.data), "-m", args.model,
               "--strategy", "freeze", "--epochs", str(args.epochs), "--val-fraction", "0",
               "--out", f"{tmp}/run", "-q"]
        ours_s, ours_cpu, _ = timed(cmd, env={"CNNLAB_CACHE": f"{tmp}/cache"})
        ours = json.loads(Path(f"{tmp}/run/results.json").read_text())
        print(f"  cnnlab: {ours_s:.1f} s (CPU {ours_cpu:.1f} s), accuracy on val/ "
              f"{ours['test_accuracy']:.1f}% "
              f"({ours['n_test']} photos), train {ours['train_accuracy']:.1f}%; {load_average()}",
              flush=True)
    lab_s, lab_cpu, out = timed([PYTHON, str(HERE / "finetune_lab.py"), str(args.data), "--model",
                        args.model, "--epochs", str(args.epochs)])
    lab = json.loads(out.strip().splitlines()[-1])
    print(f"  lab:    {lab_s:.1f} s (CPU {lab_cpu:.1f} s), accuracy on val/ "
          f"{lab['val_accuracy']:.1f}% "
          f"({lab['n_val']} photos), train {lab['train_accuracy']:.1f}%; {load_average()}",
          flush=True)
    print(f"end to end: lab {lab_s:.1f} s / cnnlab {ours_s:.1f} s = {lab_s / ours_s:.1f}x "
          f"(CPU time: {lab_cpu:.1f} s / {ours_cpu:.1f} s = {lab_cpu / ours_cpu:.1f}x)")
    print(json.dumps({"lab_s": lab_s, "cnnlab_s": ours_s, "ratio": lab_s / ours_s,
                      "lab_cpu_s": lab_cpu, "cnnlab_cpu_s": ours_cpu,
                      "lab_val_accuracy": lab["val_accuracy"],
                      "cnnlab_val_accuracy": ours["test_accuracy"],
                      "lab_history": lab["history"]}))


if __name__ == "__main__":
    sys.exit(main())
