"""Accuracy against epochs of candidate `--budget` shapes of fast-cifar (issue 25 item 2): the
curves budget.py's calibration predicts from. Each (shape, epochs, seed) trains the `fast`
recipe with the shape's width, batch, learning rate and progressive resizing for E epochs (the
one-cycle schedule fitted to E), evaluated once at the end, flip + translate TTA (the curves'
convention; the no-TTA accuracy is printed too).

    CNNLAB_PRECISION=fp32 python benchmarks/budget_shapes.py --shapes quarter-resize \\
        --epochs 1.0 --seeds 0 1 2 --out rows.jsonl

The accuracy an epoch buys does not depend on the machine's speed, only on the precision it
trains at: each row records the precision and the CPU kind (lscpu model and bf16 flags), the
training seconds (meaningful only on a quiet machine) and the load. Rows are appended to --out
as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_budget import cpu
from cifar_time_to_accuracy import ZIP
from cnnlab import budget
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir
from cnnlab.tasks.train import TrainConfig, load_data, train_one


def shape_of(name: str) -> budget.Shape:
    """A shape of budget.SHAPES (add a candidate there, with a placeholder curve, to measure it:
    the curve is never used for training)."""
    return budget.shape_named(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", required=True)
    p.add_argument("--epochs", nargs="+", type=float, required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="budget-shapes.jsonl")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    where = cpu()
    print(f"cpu: {where}; threads {torch.get_num_threads()}; "
          f"CNNLAB_PRECISION={os.environ.get('CNNLAB_PRECISION')}", flush=True)
    reporter = Reporter(quiet=True)
    data = None
    for name in args.shapes:
        shape = shape_of(name)
        for epochs in args.epochs:
            for seed in args.seeds:
                config = TrainConfig(data=str(ZIP), epochs=epochs, seed=seed, report=False,
                                     eval_every=1000)
                if data is None:
                    data = load_data(config, reporter)
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    r = train_one(config, data, "fast-cifar", seed, RunDir(Path(tmp)),
                                  reporter, torch.device("cpu"), shape=shape)
                    wall = time.perf_counter() - start
                row = {"shape": name, "epochs": epochs, "seed": seed,
                       "acc": r["test_accuracy"], "acc_no_tta": r["test_accuracy_no_tta"],
                       "tta": r["tta"], "steps": r["steps"], "precision": r["precision"],
                       "train_s": r["train_seconds"], "wall_s": wall, "cpu": where,
                       "load": os.getloadavg()[0]}
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(row, flush=True)


if __name__ == "__main__":
    main()
