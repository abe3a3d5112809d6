"""Tiny Shakespeare: validation loss ≤ 1.70 nats/char within 10 minutes on 2 CPU cores, and a
sample of what the model writes.

    .venv/bin/python benchmarks/charrnn_shakespeare.py [--data FILE] [--out DIR] [-- FLAGS]

Split: the standard contiguous 90/10 (first 1,003,855 characters train, last 111,539 validate).
Beside the model: the bigram baseline (add-one counts) on the same validation characters and the
uniform predictor ln 65, both computed by the tool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET = 1.70  # nats/char on the validation split
# Sizing (measured on the shared 2-core VM): ~1-1.6 steps/s of 32×128 characters on one thread,
# so 545 s is ~2-3.5 epochs. A cosine planned over 4 epochs keeps the learning rate high while
# the model is still far from converged; a cosine fully decayed over 2 epochs ended worse
# (1.682 vs 1.601 nats/char).
BUDGET_S = 600  # 10 minutes, everything included

FLAGS = [
    "--cell",
    "lstm",
    "--layers",
    "2",
    "--hidden",
    "256",
    "--embedding",
    "64",
    "--batch-size",
    "32",
    "--seq-len",
    "128",
    "--lr",
    "0.003",
    "--schedule",
    "cosine",
    "--epochs",
    "4",
    "--threads",
    "1",
    "--time-limit",
    "545",
    "--log-every",
    "20",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    repo = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(repo.parent / "shared/data/text/tinyshakespeare.txt"))
    ap.add_argument("--out", default=f"runs/bench/shakespeare-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("flags", nargs="*", help="extra/overriding train flags")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    base = [sys.executable, "-m", "cnnlab", "charrnn"]
    cmd = [*base, "train", "--text", args.data, *FLAGS, *args.flags, "--out", args.out]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    print(f"load average after training: {os.getloadavg()}")
    r = json.loads((Path(args.out) / "results.json").read_text())
    print("| model | validation nats/char | bits/char |")
    print("| --- | ---: | ---: |")
    print(
        f"| uniform ln|V| | {r['uniform_loss']:.4f} | {r['uniform_loss'] / math.log(2):.3f} |"
    )
    print(f"| bigram, add-one | {r['bigram_val_loss']:.4f} | {r['bigram_val_bpc']:.3f} |")
    print(f"| cnnlab {r['parameters']:,}-param model | {r['val_loss']:.4f} | {r['val_bpc']:.3f} |")
    print(
        f"{r['steps']} steps, {r['epochs']:.2f} epochs, {r['train_seconds']:.0f} s training, "
        f"{wall:.0f} s wall in all"
    )
    verdict = "meets" if r["val_loss"] <= TARGET and wall <= BUDGET_S else "MISSES"
    print(f"{verdict} the target (≤ {TARGET} nats/char in ≤ {BUDGET_S} s)")
    sample = subprocess.run(
        [
            *base,
            "sample",
            args.out,
            "--prompt",
            "ROMEO:",
            "--length",
            "500",
            "--temperature",
            "0.8",
            "--seed",
            "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print("sample (--prompt 'ROMEO:' --length 500 --temperature 0.8 --seed 0):")
    print(sample)


if __name__ == "__main__":
    main()
