"""Which engine runs a pretrained net's forward pass fastest here: images/s of PyTorch eager fp32,
PyTorch bf16 autocast, ONNX Runtime fp32 (the graph `--engine onnxruntime` exports) and, when it
is installed, OpenVINO's CPU plugin on the same graph (fp32 forced, and its default precision,
bf16 on AMX CPUs, for reference), in one run.

    python benchmarks/inference_engines.py [--repeats 7] [--batch 32] [--threads 1 2]
                                           [--models efficientnet_lite0 ...] [--agreement]

For each model (its own input size: Lite0 224, Lite1 240, Lite2 260 px) and each thread count,
the engines take turns on the same fixed batch (`models/inference.check_batch`), one timed
forward pass each per round, after one warm-up pass each: load drifts (other processes on the
machine) hit all engines alike. Prints per engine the median images/s over the rounds (wall
clock), images per CPU-second (this process's CPU time: honest when other processes share the
cores) and the ratios to PyTorch eager fp32 from the same rounds. bf16 only where the CPU has
native bf16 (AMX or avx512_bf16: cpu_has_bf16 below).

No decoding and no data loader: the forward pass alone, which is what the engine changes.

--agreement: then every engine on all 250 imagenet-samples photos (each model's own
preprocessing, batches of --batch, the last thread count): max |logit - PyTorch fp32 logit| and
the photos whose top-5 (in order) and top-1 equal PyTorch fp32's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
HERE = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("CNNLAB_DATA", HERE.parent / "shared" / "data")) / "imagenet-samples"


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX-BF16: cnnlab.hardware)."""
    from cnnlab.hardware import BF16_FLAGS, cpu_flags

    return any(f in cpu_flags() for f in BF16_FLAGS)


def openvino_engines(graph: str, threads: int) -> dict:
    """OpenVINO on the exported graph: fp32 forced (models/openvino_engine.py, what `--engine
    openvino` runs) and the plugin's default precision (bf16 where the CPU has AMX)."""
    import torch

    from cnnlab.models.openvino_engine import compile_graph, openvino_version, output_runner

    if openvino_version() is None:
        print("  openvino not installed: skipped")
        return {}
    out = {}
    fp32 = output_runner(compile_graph(Path(graph), threads), ["y"])
    out["openvino fp32"] = lambda x: torch.from_numpy(fp32(x.numpy())[0])
    if cpu_has_bf16():
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(graph), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        print(f"  openvino default precision here: "
              f"{compiled.get_property('INFERENCE_PRECISION_HINT')}")
        default = output_runner(compiled, ["y"])
        out["openvino default"] = lambda x: torch.from_numpy(default(x.numpy())[0])
    return out


def engines(model, identity: str, size: int, threads: int):
    """name -> a function running one batch, for this thread count."""
    import torch

    from cnnlab.models.inference import onnx_forward

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
        out.update(openvino_engines(about["graph"], threads))
    return out


def agreement(runs: dict, preprocess, batch: int) -> dict[str, dict[str, float]]:
    """Per engine, on all the sample photos: max |logit diff| against PyTorch fp32 and how many
    photos have its top-5 (same order) and top-1."""
    import torch

    from cnnlab.data.decode import load_image

    photos = sorted(SAMPLES.glob("*.JPEG"))
    logits: dict[str, list] = {k: [] for k in runs}
    for start in range(0, len(photos), batch):
        x = torch.stack([load_image(p, preprocess) for p in photos[start:start + batch]])
        for k, f in runs.items():
            logits[k].append(f(x).float())
    ref = torch.cat(logits["torch fp32"])
    top5 = ref.topk(5, dim=1).indices
    out = {}
    for k, parts in logits.items():
        y = torch.cat(parts)
        mine = y.topk(5, dim=1).indices
        out[k] = {"photos": len(photos), "max_abs_diff": float((y - ref).abs().max()),
                  "top5_same": int((mine == top5).all(dim=1).sum()),
                  "top1_same": int((mine[:, 0] == top5[:, 0]).sum())}
    return out


def measure(name: str, batch: int, threads: int, repeats: int, check: bool = False
            ) -> dict[str, dict[str, float]]:
    import torch

    from cnnlab.models.inference import check_batch, weights_identity
    from cnnlab.models.registry import create_pretrained

    torch.set_num_threads(threads)
    model, preprocess, path = create_pretrained(name, None)
    size = preprocess.crop_size
    runs = engines(model, weights_identity(name, path), size, threads)
    if check:
        for k, r in agreement(runs, preprocess, batch).items():
            print(f"  {k:18s} max |logit diff| {r['max_abs_diff']:.2g}, top-5 same on "
                  f"{r['top5_same']}/{r['photos']}, top-1 on {r['top1_same']}/{r['photos']}")
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
    ort = wall.get("onnxruntime fp32", base)
    return {k: {"images_per_s": statistics.median(wall[k]),
                "images_per_cpu_s": statistics.median(cpu[k]),
                # per round: this engine's rate over torch fp32's in the same round
                "ratio": statistics.median(w / b for w, b in zip(wall[k], base, strict=True)),
                # and over ONNX Runtime's (the default engine)
                "ratio_ort": statistics.median(w / b for w, b in zip(wall[k], ort, strict=True))}
            for k in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--agreement", action="store_true",
                        help="also compare every engine's logits on the 250 sample photos")
    args = parser.parse_args()
    import platform

    import torch

    from cnnlab.hardware import cpu_model
    from cnnlab.models.inference import onnxruntime_version
    from cnnlab.models.openvino_engine import openvino_version

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime_version()}, openvino "
          f"{openvino_version()}, {cpu_model() or platform.machine()}, bf16 native: "
          f"{cpu_has_bf16()}; batch {args.batch}, median of "
          f"{args.repeats} rounds; load average {os.getloadavg()[0]:.2f}")
    for name in args.models:
        for threads in args.threads:
            print(f"{name}, {threads} thread(s):", flush=True)
            check = args.agreement and threads == args.threads[-1]
            for engine, r in measure(name, args.batch, threads, args.repeats, check).items():
                print(f"  {engine:18s} {r['images_per_s']:7.1f} images/s  "
                      f"{r['images_per_cpu_s']:7.1f} images/CPU-s  x{r['ratio']:.2f} of "
                      f"torch fp32, x{r['ratio_ort']:.2f} of onnxruntime", flush=True)
    print(f"after: load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
