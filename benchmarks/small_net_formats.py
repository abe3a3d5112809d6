"""Seconds per training step of the plain-cnn studies' nets (depth, filters, pooling) in
channels-last against contiguous (NCHW) memory, and under torch.compile, fp32 by default.

    nice python benchmarks/small_net_formats.py --threads 1 --repeats 15

Each net as its study trains it (experiment designs: plain-cnn width 16, 16x16 batch 128 for
depth; 4 layers at 32x32 batch 128 for filters/pooling; SGD Nesterov 0.9, wd 5e-4), one
optimiser step (forward, backward, update) per call. The ways are timed interleaved (one step
of each in turn after a warm-up) so that a machine shared with other work slows them alike;
medians of the thread's CPU seconds (time.thread_time: a shared machine's waiting does not
count) and the ratio to channels-last, the way `cnnlab train` builds them today.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from cnnlab.models.registry import create_model

SGD = {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
# name: (plain-cnn options, image pixels); batch 128 for all (designs.PLAIN_RECIPE).
NETS = {
    **{f"depth{d}": ({"depth": d, "width": 16, "kernel": 3, "pool": 2, "pool_kind": "max"}, 16)
       for d in (1, 2, 4, 6, 8)},
    "filters3": ({"depth": 4, "width": 16, "kernel": 3}, 32),
    "filters7": ({"depth": 4, "width": 7, "kernel": 7}, 32),
    "pool4avg": ({"depth": 4, "width": 16, "kernel": 3, "pool": 4, "pool_kind": "avg"}, 32),
}


def stepper(options: dict, size: int, fmt, compiled: bool):
    torch.manual_seed(0)
    model = create_model("plain-cnn", **options).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    net = torch.compile(model) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(net(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (NCHW)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32, CPU ms per step "
          "(median), ratio = channels-last / way")
    for name in args.nets:
        options, size = NETS[name]
        x, y = torch.randn(128, 3, size, size), torch.randint(0, 10, (128,))
        ways = {"channels-last": stepper(options, size, torch.channels_last, False),
                "nchw": stepper(options, size, torch.contiguous_format, False)}
        if args.compile:
            t0 = time.perf_counter()
            ways["compiled-nchw"] = stepper(options, size, torch.contiguous_format, True)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for w, step in ways.items():
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step(x, y)
            if w.startswith("compiled"):
                print(f"  {name}: compile + warm-up {time.perf_counter() - t0:.1f} s")
        for _ in range(args.repeats):
            for w, step in ways.items():
                t0 = time.thread_time()
                step(x, y)
                times[w].append(time.thread_time() - t0)
        med = {w: statistics.median(t) for w, t in times.items()}
        base = med["channels-last"]
        print(f"{name:10s} " + "  ".join(f"{w} {1e3 * s:6.1f} ms ({base / s:.2f}x)"
                                         for w, s in med.items()), flush=True)


if __name__ == "__main__":
    main()
