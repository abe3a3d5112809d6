"""A tiny real training job on the engine, run as its own process by tests/test_engine.py
(plain `python` or `torchrun`), so that `kill -9`, resume and DDP are tested for real.

    python tests/engine_job.py OUT --epochs 4 [--resume] [--dropout 0.2] [--lr 0.05]

Data: 96 points in 8 dimensions, 3 classes, fixed by seed 0; model: a 2-layer MLP. Global batch
16, split evenly over the ranks, so 2 ranks see the same batches as 1 process.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from cnnlab import dist
from cnnlab.dist import shard_indices
from cnnlab.engine import FitConfig, fit
from cnnlab.progress import Reporter
from cnnlab.rng import epoch_generator

N, DIM, CLASSES, GLOBAL_BATCH = 96, 8, 3, 16


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, DIM, generator=g) * 2
    y = torch.arange(N) % CLASSES
    x = centres[y] + torch.randn(N, DIM, generator=g)
    return x, y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--early-stopping", type=int, default=0)
    args = ap.parse_args(argv)

    info, _ = dist.init("cpu")
    run_dir = dist.open_run("engine-job", None if args.resume else args.out,
                            resume=args.out if args.resume else None, device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(args.dropout),
                          nn.Linear(32, CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = data()
    per_rank = GLOBAL_BATCH // info.world_size

    def batches(epoch: int):
        idx = shard_indices(N, epoch_generator(0, epoch), info)
        for k in range(0, len(idx) - per_rank + 1, per_rank):
            b = idx[k : k + per_rank]
            yield x[b], y[b]

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = m(x)
        return {"val_loss": float(nn.functional.cross_entropy(logits, y)),
                "val_accuracy": float((logits.argmax(1) == y).float().mean())}

    cfg = FitConfig(epochs=args.epochs, seed=0, log_every=2, early_stopping=args.early_stopping)
    result = fit(model, opt, batches, (N // info.world_size) // per_rank, cfg, run_dir,
                 Reporter(quiet=True), evaluate=evaluate, resume=args.resume)
    if info.is_main:
        print(json.dumps({"epochs": result.epochs_done, "steps": result.steps,
                          "stopped": result.stopped, "val_loss": result.last["val_loss"],
                          "weights": [float(v) for v in model.state_dict()["3.weight"].flatten()]}))
    dist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
