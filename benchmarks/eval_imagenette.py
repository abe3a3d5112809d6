"""Imagenette-sized folders (issue 27): `cnnlab evaluate` end to end against the engine's own
forward throughput, on thousands of photos, in the same run.

    python benchmarks/eval_imagenette.py [--photos 3000] [--sets lite0 lite1 lite2 all]
                                         [--precisions fp32 auto] [--engines auto openvino]
                                         [--keep DIR]

There is no Imagenette here: the folder is made at run time from the 250 full-size JPEG photos of
imagenet-samples, as `--photos` symlinks under a temporary folder in /tmp, each photo repeated
under names with a duplicate counter (`n01440764_tench_2.JPEG`, `..._3.JPEG`, ...), which the
label rule drops (`data/imagenet.strip_counter`), so every file keeps its photo's label. The
page cache holds the 250 files after the first pass: decoding is measured, not disk reads.

For each model set (one model, or `all`: Lite0/1/2 in one run, each photo decoded once) and
each precision (CNNLAB_PRECISION for the whole run; `evaluate` has no bf16 path, so fp32 and
auto differ only in the load of the moment):
(a) the engine's own forward throughput: the forward pass `evaluate` prepares
    (`models/inference.prepare_forward`, same engine, same threads: torch.get_num_threads() of a
    fresh process, the CAM layer's graph) on one batch of real photos already decoded and
    batched at the model's input size, `evaluate`'s batch size (8), timed over --forward-photos
    images, right before and right after (b) (their mean: load drift hits both sides alike);
    for `all`, the three forwards one after another on each batch, as `evaluate` runs them:
    1 / sum(1 / rate);
(b) `cnnlab evaluate FOLDER -m ... --no-explain` in a fresh process: results.json's
    images_per_second (its inference loop: decoding + forward + top-k; for `all`, photos over
    the sum of the models' seconds, which is the loop's time), and the process's wall and CPU
    seconds from start to exit;
and the ratio (b) / (a). Target (issue 27): >= 90%.

Also printed, so the bound can be read off: decode CPU-ms per photo (`SharedDecodeDataset` of
the set's preprocessing, one thread) and forward CPU-ms per photo. On C otherwise idle cores
the loop cannot beat (forward CPU + decode CPU) / C per photo, so (b) / (a) <= forward wall /
that ("quiet" bound); where the forward already keeps every core it gets busy (a loaded
machine), decoding can only run in series: (b) / (a) <= forward CPU / (forward + decode CPU)
("no slack").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CNNLAB_DATA", HERE.parent / "shared" / "data"))
SAMPLES = DATA_ROOT / "imagenet-samples"
SETS = {"lite0": ("efficientnet_lite0",), "lite1": ("efficientnet_lite1",),
        "lite2": ("efficientnet_lite2",),
        "all": ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}
BATCH = 8  # EvaluateConfig.batch_size's default


def make_folder(dst: Path, n: int) -> Path:
    """`n` symlinks to the sample photos, each name `<stem>_<k>.JPEG` (k = 2, 3, ...)."""
    from cnnlab.data.imagenet import strip_counter

    photos = sorted(SAMPLES.glob("*.JPEG"))
    if not photos:
        raise SystemExit(f"no photos in {SAMPLES}")
    dst.mkdir(parents=True)
    for j in range(n):
        p = photos[j % len(photos)]
        name = f"{p.stem}_{j // len(photos) + 2}{p.suffix}"
        assert strip_counter(Path(name).stem) == p.stem, name  # the label survives
        (dst / name).symlink_to(p)
    return dst


def forwards(models: tuple[str, ...], engine: str):
    """[(name, forward, one decoded batch)] as `evaluate` prepares them."""
    from cnnlab.data.batching import SharedDecodeDataset
    from cnnlab.data.folders import LabelledImage
    from cnnlab.models.inference import prepare_forward, weights_identity
    from cnnlab.models.registry import PretrainedNet

    nets = [PretrainedNet(m) for m in models]
    items = [LabelledImage(p, p.stem) for p in sorted(SAMPLES.glob("*.JPEG"))[:BATCH]]
    dataset = SharedDecodeDataset(items, [net.preprocess for net in nets])
    batches = dataset.collate([dataset[i] for i in range(len(items))])[0]
    out = []
    for net, x in zip(nets, batches, strict=True):
        f = prepare_forward(net, engine, identity=weights_identity(net.spec.name,
                                                                     net.fetch_weights()),
                            input_size=net.preprocess.crop_size, layer=net.spec.cam_layer,
                            log=print, label=net.spec.name)
        f(x)  # warm-up: first-run allocations
        out.append((net.spec.name, f, x))
    return out


def forward_rate(prepared, photos: int) -> tuple[float, float]:
    """(images/s, CPU-ms per image) of the forwards alone, one after another per batch."""
    import torch

    from cnnlab.models.inference import one_torch_thread_unless_torch

    n_batches = max(1, photos // BATCH)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode(), one_torch_thread_unless_torch([f for _, f, _ in prepared]):
        for _ in range(n_batches):
            for _, f, x in prepared:
                f(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n_batches * BATCH / wall, 1000 * cpu / (n_batches * BATCH)


def decode_cost(models: tuple[str, ...], photos: int = 200) -> float:
    """CPU-ms per photo of `evaluate`'s decode step for these models, one thread."""
    from cnnlab.data.batching import SharedDecodeDataset
    from cnnlab.data.folders import LabelledImage
    from cnnlab.models.registry import PretrainedNet

    items = [LabelledImage(p, p.stem) for p in sorted(SAMPLES.glob("*.JPEG"))[:photos]]
    dataset = SharedDecodeDataset(items, [PretrainedNet(m).preprocess for m in models])
    cpu = time.process_time()
    for i in range(len(dataset)):
        dataset[i]
    return 1000 * (time.process_time() - cpu) / len(dataset)


def run_evaluate(folder: Path, models: tuple[str, ...], out: Path, precision: str,
                 engine: str) -> dict[str, float]:
    """`cnnlab evaluate --no-explain` in a fresh process: its loop's images/s, wall, CPU."""
    cmd = [sys.executable, "-m", "cnnlab", "evaluate", str(folder), "--no-explain", "-q",
           "--engine", engine, "--out", str(out)]
    for m in models:
        cmd += ["-m", m]
    env = {**os.environ, "CNNLAB_PRECISION": precision}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    rows = results["models"]
    n = rows[0]["n_images"]
    loop = sum(r["seconds"] for r in rows)  # each model's own forward + its share of waiting
    return {"images_per_second": n / loop, "n": n, "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "engines": ",".join(r["engine"]["engine"] for r in rows),
            "top1": ",".join(f"{r['top1_error']:.1f}" for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=3000)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["fp32", "auto"])
    ap.add_argument("--engines", nargs="+", default=["auto"],
                    help="each in turn, per model set (e.g. onnxruntime openvino)")
    ap.add_argument("--forward-photos", type=int, default=400,
                    help="images timed for (a), before and after each evaluate run")
    ap.add_argument("--keep", type=Path, help="make the folder here and keep it (else /tmp)")
    args = ap.parse_args()
    import platform

    import torch

    cores = os.cpu_count() or 1
    print(f"{platform.processor() or platform.machine()}, {cores} CPUs, torch threads "
          f"{torch.get_num_threads()}, batch {BATCH}, engines {args.engines}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="imagenette-") as tmp:
        folder = make_folder(args.keep or Path(tmp) / "photos", args.photos)
        print(f"folder: {folder} ({args.photos} symlinks to {SAMPLES})", flush=True)
        rows = []
        for set_name, engine in [(s, e) for s in args.sets for e in args.engines]:
            models = SETS[set_name]
            prepared = forwards(models, engine)
            decode_ms = decode_cost(models)
            for precision in args.precisions:
                os.environ["CNNLAB_PRECISION"] = precision  # the same for (a) as for (b)
                before = forward_rate(prepared, args.forward_photos)
                e2e = run_evaluate(folder, models,
                                   Path(tmp) / f"run-{set_name}-{engine}-{precision}",
                                   precision, engine)
                after = forward_rate(prepared, args.forward_photos)
                fwd = statistics.mean([before[0], after[0]])
                fwd_cpu = statistics.mean([before[1], after[1]])
                # Quiet machine: the loop needs (forward + decode) CPU / cores per photo at
                # least. No slack (the forward alone keeps the cores it gets busy, as under
                # load): decode adds its CPU in series, forward / (forward + decode).
                bound = min(1.0, (1000 / fwd) / ((fwd_cpu + decode_ms) / cores))
                serial = fwd_cpu / (fwd_cpu + decode_ms)
                row = {"set": set_name, "precision": precision, "forward": fwd,
                       "forward_before_after": [round(before[0], 1), round(after[0], 1)],
                       "forward_cpu_ms": fwd_cpu, "decode_cpu_ms": decode_ms,
                       "ratio": e2e["images_per_second"] / fwd, "cpu_bound": bound,
                       "no_slack_bound": serial, **e2e,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)
    print("\nset    engine       prec  forward img/s  e2e img/s  e2e/forward  bounds: quiet  "
          "no slack  fwd CPU-ms  decode CPU-ms  wall s  CPU s")
    for r in rows:
        print(f"{r['set']:6s} {r['engines'].split(',')[0]:12s} {r['precision']:5s} "
              f"{r['forward']:12.1f} "
              f"{r['images_per_second']:10.1f} {r['ratio']:11.0%} {r['cpu_bound']:13.0%} "
              f"{r['no_slack_bound']:9.0%} "
              f"{r['forward_cpu_ms']:11.2f} {r['decode_cpu_ms']:14.2f} {r['wall_s']:7.1f} "
              f"{r['cpu_s']:6.1f}")
    print(f"after: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
