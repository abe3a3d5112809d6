"""Which engine runs a pretrained net's forward pass fastest here: images/s of PyTorch eager fp32,
PyTorch bf16 autocast and ONNX Runtime fp32 (the graph `--engine onnxruntime` exports), in one run.

    python benchmarks/inference_engines.py [--repeats 7] [--batch 32] [--threads 1 2]
                                           [--models efficientnet_lite0 ...]

For each model (its own input size: Lite0 224, Lite1 240, Lite2 260 px) and each thread count,
the engines take turns on the same fixed batch (`models/inference.check_batch`), one timed
forward pass each per round, after one warm-up pass each: load drifts (other processes on the
machine) hit all engines alike. Prints per engine the median images/s over the rounds (wall
clock), images per CPU-second (this process's CPU time: honest when other processes share the
cores) and the ratios to PyTorch eager fp32 from the same rounds. bf16 only where the CPU has
native bf16 (AMX or avx512_bf16: recipes.cpu_has_bf16).

No decoding and no data loader: the forward pass alone, which is what the engine changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def engines(model, identity: str, size: int, threads: int):
    """name -> a function running one batch, for this thread count."""
    import torch

    from cnnlab.models.inference import onnx_forward
    from cnnlab.recipes import cpu_has_bf16

    net = model.eval().to(memory_format=torch.channels_last)

    def eager(x):
        with torch.inference_mode():
            return net(x.contiguous(memory_format=torch.channels_last))

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    out = {"torch fp32": eager}
    if cpu_has_bf16():
        out["torch bf16"] = bf16
    forward, about, reason = onnx_forward(model, identity, size, threads)
    if forward is None:
        print(f"  onnxruntime refused: {reason}")
    else:
        out["onnxruntime fp32"] = forward
        print(f"  onnxruntime: max |diff| {about['max_abs_diff']:.2g} against PyTorch "
              f"(graph {'exported' if about['exported'] else 'from the cache'})")
    return out


def measure(name: str, batch: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    import torch

    from cnnlab.models.inference import check_batch, weights_identity
    from cnnlab.models.registry import create_pretrained

    torch.set_num_threads(threads)
    model, preprocess, path = create_pretrained(name, None)
    size = preprocess.crop_size
    runs = engines(model, weights_identity(name, path), size, threads)
    x = check_batch(size, batch)
    for f in runs.values():  # warm-up: first-call allocations, oneDNN primitive creation
        f(x)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t, c = time.perf_counter(), time.process_time()
            f(x)
            wall[k].append(batch / (time.perf_counter() - t))
            cpu[k].append(batch / max(time.process_time() - c, 1e-9))
    base = wall["torch fp32"]
    return {k: {"images_per_s": statistics.median(wall[k]),
                "images_per_cpu_s": statistics.median(cpu[k]),
                # per round: this engine's rate over torch fp32's in the same round
                "ratio": statistics.median(w / b for w, b in zip(wall[k], base, strict=True))}
            for k in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import platform

    import torch

    from cnnlab.models.inference import onnxruntime_version
    from cnnlab.recipes import cpu_has_bf16

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime_version()}, "
          f"{platform.processor() or platform.machine()}, bf16 native: "
          f"{cpu_has_bf16()}; batch {args.batch}, median of "
          f"{args.repeats} rounds")
    for name in args.models:
        for threads in args.threads:
            print(f"{name}, {threads} thread(s):")
            for engine, r in measure(name, args.batch, threads, args.repeats).items():
                print(f"  {engine:18s} {r['images_per_s']:7.1f} images/s  "
                      f"{r['images_per_cpu_s']:7.1f} images/CPU-s  x{r['ratio']:.2f} of "
                      "torch fp32")


if __name__ == "__main__":
    main()
