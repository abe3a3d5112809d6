"""Microseconds per evaluation image of the experiments' plain nets: batches of 500 (before)
against 250, each with and without BatchNorm folded into the conv (`measure.fold_batchnorm`),
fp32, in the way `tasks/train/measure.accuracy` runs a pass (uint8 images normalised per batch,
channels-last, no_grad).

    nice python benchmarks/eval_fold.py --threads 1

Each net is trained 5 steps first (BatchNorm statistics away from their init), then the four
ways are timed interleaved on the same 2,000 random images (medians of `--repeats` passes of
the thread's CPU seconds: a shared machine slows them alike); the largest logit difference
between folded and not is printed as the check that they compute the same function.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cnnlab.data.tensor_batches import normalize
from cnnlab.models.registry import create_model
from cnnlab.tasks.train.measure import fold_batchnorm

NETS = {  # plain-cnn options, image pixels (the depth, filters and pooling designs)
    "depth8@16": ({"depth": 8, "width": 16}, 16),
    "filters3@32": ({"depth": 4, "width": 16, "kernel": 3}, 32),
    "pool4avg@32": ({"depth": 4, "width": 16, "pool": 4, "pool_kind": "avg"}, 32),
}


def _trained(options: dict, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("plain-cnn", **options).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        x, y = torch.randn(64, 3, size, size), torch.randint(0, 10, (64,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _logits(model: nn.Module, x8: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(normalize(x8[s : s + batch], (0.5,) * 3, (0.25,) * 3))
                      for s in range(0, len(x8), batch)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name, (options, size) in NETS.items():
        model = _trained(options, size)
        folded = fold_batchnorm(model)
        x8 = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8)
        diff = float((_logits(model, x8, 500) - _logits(folded, x8, 500)).abs().max())
        ways = {"500": (model, 500), "250": (model, 250), "folded 500": (folded, 500),
                "folded 250": (folded, 250)}
        times: dict[str, list[float]] = {w: [] for w in ways}
        for m, b in ways.values():
            _logits(m, x8, b)  # kernels chosen
        for _ in range(args.repeats):
            for w, (m, b) in ways.items():
                t0 = time.thread_time()
                _logits(m, x8, b)
                times[w].append(time.thread_time() - t0)
        med = {w: statistics.median(t) / args.images * 1e6 for w, t in times.items()}
        print(f"{name:12s} max |logit diff| {diff:.1e}  " + "  ".join(
            f"{w} {us:.0f} us ({med['500'] / us:.2f}x)" for w, us in med.items()), flush=True)


if __name__ == "__main__":
    main()
