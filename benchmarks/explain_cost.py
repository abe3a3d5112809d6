"""What class-activation maps cost in `cnnlab evaluate`: with and without, in one process.

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/explain_cost.py [--repeats 3]

On the same input (the 250 photos of ../shared/data/imagenet-samples, EfficientNet-Lite0, one
decoding process: `workers=0`), alternately:
- `evaluate` with `explain=False` (--no-explain): scoring, predictions.csv, the report;
- `evaluate` with `explain=True` (the default): the same, plus the Grad-CAM maps of the
  predicted and of the true class of every photo it gets wrong, embedded in the report;
then, once, the maps alone (analysis/cams.py's CamWriter, as evaluate draws them) of every one
of the 250 photos: a pair (predicted and true class) per photo, and the single top-class map of
`predict --explain` on the first 50. Prints medians over the repeats: seconds per photo, the
extra seconds explanations add, and the ratio with / without. The grad-cam package's import
(about 2 s) is charged to the first run that draws maps, as it is in a real `evaluate`; the
repeats alternate, so load drifts hit both alike.

Since issue 27's fast maps, `evaluate` on ONNX Runtime (the default engine) computes the maps
of Lite0's mistakes from the scoring pass's own CAM-layer activations (analysis/linear_cams.py:
no PyTorch model, no second forward); "the maps alone" below still time CamWriter's general path
(gradcam_batch with the PyTorch model), which predict --explain, explain and the other engines
use.

Two clocks: wall time, and this process's CPU time (`time.process_time`). Pinned to one core
with one thread and no decoding workers, CPU time is the work done, and it stays honest when
other processes share the core (wall time then grows with the load; CPU time barely does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
MODEL = "efficientnet_lite0"


def run_evaluate(folder: Path, out: Path, explain: bool) -> tuple[float, float, dict]:
    """Wall and CPU seconds of one evaluate run (report included), and its results."""
    from cnnlab.progress import Reporter
    from cnnlab.tasks.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(path=str(folder), models=(MODEL,), workers=0, explain=explain)
    start, cpu = time.perf_counter(), time.process_time()
    results = evaluate(config, Reporter(quiet=True), out=out)
    return time.perf_counter() - start, time.process_time() - cpu, results


def cams_alone(folder: Path, out: Path, n_single: int = 50) -> dict[str, list[float]]:
    """Seconds per photo of the maps alone: a pair (class 0 and the photo's top class, as
    evaluate's predicted/true pair) for every photo; a single map for the first `n_single`."""
    import torch

    from cnnlab.analysis.cams import CamWriter, target_layer
    from cnnlab.models.predictor import load_predictor
    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir

    predictor = load_predictor(MODEL)
    run_dir = RunDir.create("bench", out)
    writer = CamWriter(predictor.model, target_layer(predictor), predictor.preprocess, run_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    out_: dict[str, list[float]] = {"pair": [], "pair_cpu": [], "single": [], "single_cpu": []}
    for n, path in enumerate(Reporter(quiet=True).track(files, total=len(files))):
        pixels, x = writer.read(path)
        with torch.no_grad():
            top = int(predictor.model(x).argmax())
        start, cpu = time.perf_counter(), time.process_time()
        writer.write(pixels, x, [top, (top + 1) % 1000], [f"cams/{n:05d}-a", f"cams/{n:05d}-b"])
        out_["pair"].append(time.perf_counter() - start)
        out_["pair_cpu"].append(time.process_time() - cpu)
        if n < n_single:
            start, cpu = time.perf_counter(), time.process_time()
            writer.write(pixels, x, [top], [f"cams/{n:05d}-c"])
            out_["single"].append(time.perf_counter() - start)
            out_["single_cpu"].append(time.process_time() - cpu)
    return out_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=SAMPLES)
    ap.add_argument("--repeats", type=int, default=3,
                    help="evaluate runs with and without maps; 0: only the maps alone")
    args = ap.parse_args()
    import torch

    n = sum(1 for p in args.folder.iterdir() if p.is_file())
    print(f"{n} photos in {args.folder}, {MODEL}, torch threads {torch.get_num_threads()}",
          flush=True)
    if args.repeats == 0:  # the maps alone only
        with tempfile.TemporaryDirectory() as tmp:
            print_alone(cams_alone(args.folder, Path(tmp) / "alone"))
        return
    plain, explained, plain_cpu, explained_cpu, draw = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            s, c, _ = run_evaluate(args.folder, Path(tmp) / f"plain{i}", explain=False)
            plain.append(s)
            plain_cpu.append(c)
            s, c, r = run_evaluate(args.folder, Path(tmp) / f"explained{i}", explain=True)
            explained.append(s)
            explained_cpu.append(c)
            ex = r["explanations"]
            draw.append(ex["seconds"])
            print(f"  #{i + 1}: without {plain[-1]:.1f} s (CPU {plain_cpu[-1]:.1f} s), with "
                  f"{explained[-1]:.1f} s (CPU {explained_cpu[-1]:.1f} s); {len(ex['cams'])} "
                  f"mistakes drawn in {ex['seconds']:.1f} s", flush=True)
        m = r["models"][0]
        n_wrong = len(ex["cams"])
        html = (Path(tmp) / f"explained{args.repeats - 1}" / "report.html").stat().st_size
        html0 = (Path(tmp) / f"plain{args.repeats - 1}" / "report.html").stat().st_size
        alone = cams_alone(args.folder, Path(tmp) / "alone")
    print(f"Lite0: top-1 error {m['top1_error']:.1f}% -> {n_wrong} mistakes, each drawn as a "
          "pair of maps (predicted, true class)")
    for clock, without, with_ in (("wall", plain, explained), ("CPU", plain_cpu, explained_cpu)):
        a, b = statistics.median(without), statistics.median(with_)
        print(f"{clock:>4} (median of {args.repeats}): evaluate without maps {a:6.1f} s "
              f"({a / n:.3f} s/photo), with maps {b:6.1f} s ({b / n:.3f} s/photo); extra "
              f"{b - a:.1f} s ({(b - a) / n_wrong:.2f} s per mistake); ratio {b / a:.2f}x")
    print(f"maps' own wall time inside evaluate: median {statistics.median(draw):.1f} s "
          f"(first run, with the grad-cam import: {draw[0]:.1f} s)")
    print(f"report.html: {html0 / 1e3:.0f} kB without, {html / 1e3:.0f} kB with")
    print_alone(alone)


def print_alone(alone: dict[str, list[float]]) -> None:
    for kind, what in (("pair", "pair per photo (evaluate, finetune)"),
                       ("single", "one map per photo (predict --explain)")):
        wall, cpu = alone[kind], alone[f"{kind}_cpu"]
        print(f"maps alone, {what}, {len(wall)} photos: median {statistics.median(wall):.3f} s "
              f"wall, {statistics.median(cpu):.3f} s CPU; total {sum(wall):.1f} s wall, "
              f"{sum(cpu):.1f} s CPU")


if __name__ == "__main__":
    sys.exit(main())
