"""Seconds per training step of k small nets: one net at a time vs one batched model.

    nice python benchmarks/batched_training.py                      # the default grid
    nice python benchmarks/batched_training.py --nets plain56 --ks 6 --threads 1 --compile

For each net (the experiments' shapes: plain-56 and ResNet-56 at 8-16-32 channels on 16x16
images, batch 64, He et al.'s recipe; a 4-layer plain-cnn of width 16 on 32x32, batch 128, the
plain studies' recipe), each k, precision (fp32; bf16 autocast where the CPU has native bf16)
and thread count, it times one training step of all k nets (SGD with momentum and weight
decay, forward + backward + update) in each way:

    loop      k separate nets, one step each (as the experiments train them today; channels-last
              as train._build makes them)
    loop-nchw the same, contiguous (NCHW) memory format
    grouped   cnnlab.batched, grouped convs, channels-last input
    grouped-nchw   the same, NCHW
    vmap      cnnlab.batched, torch.func.functional_call under vmap
    compiled  grouped under torch.compile (--compile; its compile time is printed)

The ways are timed interleaved (one step of each in turn, `--repeats` rounds after `--warmup`)
so that a machine shared with other work slows them alike; medians, and ratios to `loop` from
the same run, are what to read.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.batched import BatchedNets
from cnnlab.models.registry import create_model

# name: (model, options, image pixels, batch, SGD settings): experiment.RESIDUAL_RECIPE /
# PLAIN_RECIPE (lr is irrelevant to speed; momentum and weight decay cost an update pass).
NETS = {
    "plain56": ("plain56", {"width": 8}, 16, 64, {"momentum": 0.9, "weight_decay": 1e-4}),
    "resnet56": ("resnet56", {"width": 8}, 16, 64, {"momentum": 0.9, "weight_decay": 1e-4}),
    "plaincnn4": ("plain-cnn", {"depth": 4, "width": 16}, 32, 128,
                  {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    # The depth study's nets: plain-cnn of 1..8 layers, width 16 doubling every second layer,
    # on 16x16 images, batch 128 (experiment designs "depth").
    **{f"depth{d}": ("plain-cnn", {"depth": d, "width": 16}, 16, 128,
                     {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})
       for d in (1, 2, 4, 6, 8)},
}
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    have = [f for f in SPEED_FLAGS if f in flags]
    return (f"{fields.get('Model name', '?').strip()}; CPUs {fields.get('CPU(s)', '?').strip()}; "
            f"flags: {' '.join(have) or 'none of ' + ' '.join(SPEED_FLAGS)}")


def has_native_bf16() -> bool:
    return "avx512_bf16" in cpu_line() or "amx_bf16" in cpu_line()


def make_nets(spec, k: int) -> list[nn.Module]:
    model, options, *_ = spec
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(create_model(model, **options))
    return out


def loop_stepper(spec, k: int, precision: str, channels_last: bool):
    """k nets, each its own SGD, stepped one after another on its own batch."""
    *_, sgd = spec
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    nets = [m.to(memory_format=fmt).train() for m in make_nets(spec, k)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, **sgd) for m in nets]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for j, (m, opt) in enumerate(zip(nets, opts, strict=True)):
            xj = x[j].contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(m(xj).float(), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def batched_stepper(spec, k: int, precision: str, method: str, channels_last: bool,
                    compiled: bool = False):
    *_, sgd = spec
    b = BatchedNets.from_models(make_nets(spec, k),
                                lambda m: torch.optim.SGD(m.parameters(), lr=0.01, **sgd),
                                method=method, channels_last=channels_last, precision=precision)
    if compiled:
        b.net = torch.compile(b.net)
    return b.step


def ways(spec, k: int, precision: str, compiled: bool, only: list[str] | None = None
         ) -> dict:
    out = {
        "loop": loop_stepper(spec, k, precision, True),
        "loop-nchw": loop_stepper(spec, k, precision, False),
        "grouped": batched_stepper(spec, k, precision, "grouped", True),
        "grouped-nchw": batched_stepper(spec, k, precision, "grouped", False),
        "vmap": batched_stepper(spec, k, precision, "vmap", False),
    }
    if compiled:
        out["compiled"] = batched_stepper(spec, k, precision, "grouped", True, compiled=True)
    return {w: f for w, f in out.items() if not only or w in only or w == "loop"}


def time_ways(steppers: dict, x, y, warmup: int, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for name, step in steppers.items():
        start = time.perf_counter()
        for _ in range(warmup):  # oneDNN picks kernels on first calls; compile compiles
            step(x, y)
        if name == "compiled":
            print(f"    compile + {warmup} warm-up steps: {time.perf_counter() - start:.1f} s",
                  flush=True)
    for _ in range(repeats):  # interleaved: a load spike slows every way alike
        for name, step in steppers.items():
            start = time.perf_counter()
            step(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--ks", nargs="+", type=int, default=[3, 6])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile(grouped)")
    p.add_argument("--ways", nargs="+", help="time only these ways (and loop), e.g. grouped")
    args = p.parse_args()

    print(f"cpu: {cpu_line()}")
    print(f"torch {torch.__version__}; one step of all k nets (fwd + bwd + SGD), median of "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up steps; x: "
          "speed-up over `loop` in the same run")
    precisions = [pr for pr in args.precisions if pr == "fp32" or has_native_bf16()]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.nets:
            spec = NETS[name]
            _, _, size, batch, _ = spec
            for precision in precisions:
                for k in args.ks:
                    g = torch.Generator().manual_seed(0)
                    x = torch.randn(k, batch, 3, size, size, generator=g)
                    y = torch.randint(0, 10, (k, batch), generator=g)
                    med = time_ways(ways(spec, k, precision, args.compile, args.ways), x, y,
                                    args.warmup, args.repeats)
                    base = med["loop"]
                    cells = "  ".join(f"{w} {1e3 * s:7.1f} ms ({base / s:.2f}x)"
                                      for w, s in med.items())
                    print(f"{name:9s} {size}px b{batch} {precision} threads {threads} k {k}: "
                          f"{cells}", flush=True)


if __name__ == "__main__":
    main()
