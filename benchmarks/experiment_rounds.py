"""Seconds per seed round of `cnnlab experiment` studies: one net at a time vs a setting's seeds
trained together (tasks/experiment/together.py), fp32 and bf16 (where the CPU has it), in one
run.

    nice python benchmarks/experiment_rounds.py                         # residual, 2 epochs
    nice python benchmarks/experiment_rounds.py --studies residual depth --epochs 10

Each (study, precision, way) is one `cnnlab experiment STUDY --seeds S --threads 1 --epochs E`
process (CNNLAB_PRECISION=fp32 forces fp32, =auto gives bf16 where the CPU has it;
`--one-at-a-time` for the loop), run in turn, the ways interleaved. Printed per run: wall
seconds per seed round (the study's `seconds` / seeds: training and evaluation of every
setting), and the process's CPU seconds per round
(user + system of the child: with one thread, the work done, which other jobs on the machine
change far less than the wall time). Ratios are alone / together from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batched_training import cpu_line, has_native_bf16


def one_run(study: str, precision: str, together: bool, args, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "cnnlab", "experiment", study, "--seeds", str(args.seeds),
           "--threads", "1", "--out", str(out), "-q", "--no-report"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.data:
        cmd += ["--data", args.data]
    if not together:
        cmd.append("--one-at-a-time")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    # CNNLAB_PRECISION forces fp32 only; "auto" is bf16 on a CPU with native bf16 (the
    # designs' recipes ask for auto).
    forced = "fp32" if precision == "fp32" else "auto"
    subprocess.run(cmd, check=True, env={**os.environ, "CNNLAB_PRECISION": forced},
                   stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res = json.loads((out / "results.json").read_text())["experiments"][study]
    return {"round": res["seconds"] / args.seeds, "cpu_round": cpu / args.seeds, "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", nargs="+", default=["residual"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=float, default=2.0, help="0: each design's own")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--data", help="a CIFAR-10 zip (default: the experiment's)")
    args = p.parse_args()
    print(f"cpu: {cpu_line()}")
    print(f"one thread, {args.seeds} seeds, epochs {args.epochs or 'of each design'}; per seed "
          "round: wall s (the study's own clock) and the process's CPU s")
    precisions = [pr for pr in args.precisions if pr == "fp32" or has_native_bf16()]
    with tempfile.TemporaryDirectory() as tmp:
        for study in args.studies:
            for precision in precisions:
                got = {}
                for together in (False, True):
                    way = "together" if together else "alone"
                    got[way] = one_run(study, precision, together, args,
                                       Path(tmp) / f"{study}-{precision}-{way}")
                a, t = got["alone"], got["together"]
                print(f"{study:9s} {precision}: alone {a['round']:6.1f} s ({a['cpu_round']:6.1f}"
                      f" CPU s), together {t['round']:6.1f} s ({t['cpu_round']:6.1f} CPU s): "
                      f"{a['round'] / t['round']:.2f}x wall, "
                      f"{a['cpu_round'] / t['cpu_round']:.2f}x CPU", flush=True)


if __name__ == "__main__":
    main()
